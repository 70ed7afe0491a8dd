"""The pieces every script-free rendering of a view is made of (:mod:`.static_view`, :mod:`.static_circuit`,
:mod:`.graph_comparison`): the frame with its saved-copy note, escaped text, token runs with heat, and the mixin
that puts the rendering in a widget's mime bundle.

The HTML has no script, no external resource and no event handler; every text from the model, the tokenizer
or files goes through :func:`escape`; colours are inline ``background-color`` values legible under light and
dark text alike. The kernel makes a rendering once, when the cell displays the widget (saving the notebook does
not ask it again), so every frame says it is that copy (:data:`SAVED_NOTE`), and one made while the view's work
was still under way (a generation) says so first (:func:`in_progress_html`).
"""


from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

from .payload import format_value
from .token_text import EMPTY_MARK

MAX_TOKENS = 256  # tokens drawn per text; the rest is counted
_HEAT_RGB = (244, 81, 30)  # the heatmap's heat colour (light theme) of js/lib/theme.css
_HEAT_MAX_ALPHA = 0.6  # keeps both dark and light text at 4.5:1 or more on the strongest shade
BOX_STYLE = "border:1px solid rgba(128,128,128,.45);border-radius:4px;padding:6px;margin:4px 0"
NOTE_STYLE = "opacity:.8;font-size:.9em"


def escape(text: Any) -> str:
    """``text`` as HTML text (quotes too)."""
    return html.escape(str(text), quote=True)


def heat_style(t: float) -> str:
    """Inline style shading a token or cell by a normalised activation ``t`` in [0, 1]; "" for none."""
    if not t > 0:
        return ""
    alpha = 0.08 + (_HEAT_MAX_ALPHA - 0.08) * min(1.0, float(t))
    r, g, b = _HEAT_RGB
    return f"background-color:rgba({r},{g},{b},{alpha:.3f})"


def running_token_text(token: str) -> str:
    """A token in running text (``js/lib/tokens.ts`` ``renderToken``): spaces kept, newlines and tabs marked (and
    kept), an empty token as ∅. A token named on its own (a label, a table cell) is :func:`.token_text.visible_text`."""
    if token == "":
        return EMPTY_MARK
    return token.replace("\n", "↵\n").replace("\t", "→\t")


def tokens_html(
    tokens: Sequence[str],
    values: Sequence[float] | np.ndarray | None = None,
    scale: float = 0.0,
    *,
    special: Sequence[bool] | None = None,
    mark: int = -1,
    max_tokens: int = MAX_TOKENS,
) -> str:
    """Tokens as escaped spans in a pre-wrapped line, shaded by ``values / scale``; token ``mark`` underlined."""
    spans = []
    for i, token in enumerate(tokens[:max_tokens]):
        styles = ["border-radius:3px", "box-shadow:inset 0 0 0 1px rgba(128,128,128,.35)", "margin:0 1px"]
        title = ""
        if values is not None and i < len(values):
            v = float(values[i])
            title = f' title="{escape(format_value(v))}"'
            if scale > 0:
                styles.append(heat_style(v / scale))
        if special is not None and i < len(special) and special[i]:
            styles.append("font-style:italic;opacity:.8")
        if i == mark:
            styles.append("text-decoration:underline 2px;font-weight:bold")
        style = ";".join(s for s in styles if s)
        spans.append(f'<span style="{style}"{title}>{escape(running_token_text(token))}</span>')
    more = len(tokens) - max_tokens
    tail = f' <span style="{NOTE_STYLE}">… {more} more tokens</span>' if more > 0 else ""
    return f'<div style="white-space:pre-wrap;font-family:monospace;line-height:1.9">{"".join(spans)}{tail}</div>'


SAVED_NOTE = (
    "saved copy of the view as the cell first displayed it; later changes in the live view are not in this copy. "
    "Run the cell with a live kernel for the interactive widget"
)
"""What every static rendering says of itself: it is made once, when the cell displays the widget (the kernel
answers the display with the whole mime bundle and is not asked again when the notebook is saved)."""
IN_PROGRESS = "still running when this copy was made: what follows is partial, not the result"
"""The line a rendering made while the view's work (a generation) was under way starts with."""


def in_progress_html(what: str) -> str:
    """The plain line saying the rendering caught ``what`` (plain text, escaped) mid-way."""
    return f'<div style="font-weight:bold">{escape(what)} {escape(IN_PROGRESS)}</div>'


def joined(parts: Sequence[Any], sep: str = " · ") -> str:
    """The non-empty ``parts`` (as text) joined by ``sep``: an unknown field leaves no empty slot between
    separators. Plain text: escape the result for HTML."""
    return sep.join(text for text in (str(p).strip() for p in parts if p is not None) if text)


def frame(title: str, body: str) -> str:
    """A view's rendering: its bold ``title`` (plain text) and the saved-copy note above ``body`` (HTML)."""
    return (
        f'<div class="gs-static" style="{BOX_STYLE}"><div><b>{escape(title)}</b> '
        f'<span style="{NOTE_STYLE}">({escape(SAVED_NOTE)})</span></div>{body}</div>'
    )


# --- heatmap -----------------------------------------------------------------------------------------


class StaticFallback:
    """Mixin for an anywidget class: adds ``text/html`` from :meth:`static_html` to the widget's mime bundle."""

    def static_html(self) -> str:  # pragma: no cover - each widget defines it
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        if data is None:
            return bundle
        data = dict(data)
        try:
            data["text/html"] = self.static_html()
        except Exception as exc:  # a fallback must never stop the live widget from displaying
            data["text/html"] = f"<div>(no static view: {escape(type(exc).__name__)})</div>"
        return data, metadata
