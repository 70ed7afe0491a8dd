"""GraphComparisonView: two prompts' attribution graphs compared (``compare_graphs(a, b).widget()``).

A relay: the comparison is computed in the backend (:mod:`gemscope_widgets.backend.circuits.comparison`); this
module encodes it as one JSON trait (``_comparison``) for ``js/graph_comparison.ts``, which highlights what only one
graph keeps and draws the largest changes in influence as signed bars, and renders the same as script-free HTML
for a saved notebook. Labels and prompts are text, never HTML.
"""

from __future__ import annotations

from typing import Any, ClassVar

import traitlets

from gemscope_widgets.backend.circuits.comparison import key_label

from .base import ViewWidget
from .bundle import bundle_path
from .messages import PING, MessageTable
from .payload import format_value
from .static_html import NOTE_STYLE, escape, frame
from .token_text import visible_text

_BUNDLE = bundle_path("graph_comparison")
_TABLE = "border-collapse:collapse;font-size:.85em;margin:4px 0 10px"
_CELL = "padding:1px 6px;text-align:left"
_SIDE = {"a": "color:#1f77b4", "b": "color:#d62728"}  # the view's colours of graph A and graph B


def _label(comparison: Any, key: Any) -> str:
    """A node key as the view names it; a token or logit key says so and quotes its text made visible
    (:func:`.token_text.visible_text`), so a token's leading space reads (``token “␣sport”``), as the circuit view
    names its nodes."""
    if key[0] in ("token", "logit"):
        return f"{key[0]} “{visible_text(str(key[1]))}”"
    return comparison.labels.get(key) or key_label(None, key)


def _change(comparison: Any, c: Any) -> dict[str, Any]:
    label = _label(comparison, c.key) if c.key[0] in ("token", "logit") else c.label
    return {"label": label, "influence_a": c.influence_a, "influence_b": c.influence_b, "kept_a": c.kept_a,
            "kept_b": c.kept_b, "delta": c.delta}


def comparison_payload(comparison: Any) -> dict[str, Any]:
    """A :class:`~gemscope_widgets.backend.circuits.comparison.GraphComparison` as the view's JSON."""
    def edges(items: list[Any]) -> list[dict[str, Any]]:
        return [{"source": _label(comparison, e.source), "target": _label(comparison, e.target),
                 "weight_a": e.weight_a, "weight_b": e.weight_b} for e in items]

    return {
        "prompt_a": comparison.prompt_a,
        "prompt_b": comparison.prompt_b,
        "thresholds": list(comparison.thresholds),
        "overlap": comparison.overlap,
        "weighted_overlap": comparison.weighted_overlap,
        "only_a": [_change(comparison, c) for c in comparison.only_a],
        "only_b": [_change(comparison, c) for c in comparison.only_b],
        "shared": [_change(comparison, c) for c in comparison.shared],
        "largest_changes": [_change(comparison, c) for c in comparison.largest_changes],
        "edges_only_a": edges(comparison.edges_only_a),
        "edges_only_b": edges(comparison.edges_only_b),
    }


class GraphComparisonView(ViewWidget):
    """Two attribution graphs side by side: the features only graph A keeps and only graph B keeps (highlighted
    in each graph's colour), the largest changes in influence share (signed bars), the edges only one keeps.
    Build it with ``compare_graphs(a, b).widget()``; :attr:`comparison` is the backend result."""

    _esm = _BUNDLE
    MESSAGES: ClassVar[MessageTable] = {"ping": PING}
    """What the view sends (``GraphComparisonMessage`` in ``js/lib/protocol.ts``): only the liveness check."""

    _comparison = traitlets.Dict().tag(sync=True)
    """The comparison as JSON (:func:`comparison_payload`)."""

    def __init__(self, comparison: Any, **kwargs: Any) -> None:
        self.comparison = comparison
        super().__init__(_comparison=comparison_payload(comparison), **kwargs)

    def static_html(self) -> str:
        """Script-free HTML of the comparison (a saved notebook's fallback)."""
        return comparison_html(self._comparison)


def comparison_view(comparison: Any, **kwargs: Any) -> GraphComparisonView:
    """``GraphComparison.widget()``: the view of ``comparison``."""
    return GraphComparisonView(comparison, **kwargs)


def _rows(items: list[dict[str, Any]], side: str | None) -> str:
    out = []
    for c in items:
        style = _SIDE.get(side or ("a" if c["delta"] < 0 else "b"), "")
        signed = ("+" if c["delta"] >= 0 else "") + format_value(float(c["delta"]))
        out.append(
            f'<tr><td style="{_CELL}">{escape(c["label"])}</td>'
            f'<td style="{_CELL}">{escape(format_value(c["influence_a"]))}'
            f'</td><td style="{_CELL}">{escape(format_value(c["influence_b"]))}</td>'
            f'<td style="{_CELL};{style}">{escape(signed)}</td></tr>'
        )
    head = "".join(
        f'<th style="{_CELL};font-weight:normal;{NOTE_STYLE}">{h}</th>' for h in ("feature", "A", "B", "B − A")
    )
    return f'<table style="{_TABLE}"><tr>{head}</tr>{"".join(out)}</table>'


def comparison_html(data: dict[str, Any]) -> str:
    """The comparison view as script-free HTML; every text escaped."""
    if not data:
        return frame("Graph comparison", f'<div style="{NOTE_STYLE}">No comparison.</div>')
    parts = [
        f'<div><b style="{_SIDE["a"]}">A</b> <span style="font-family:monospace">'
        f'{escape(data["prompt_a"])}</span></div>',
        f'<div><b style="{_SIDE["b"]}">B</b> <span style="font-family:monospace">'
        f'{escape(data["prompt_b"])}</span></div>',
        f'<div style="{NOTE_STYLE}">kept features shared (Jaccard) {escape(format_value(data["overlap"]))}, '
        "influence-weighted "
        f'{escape(format_value(data["weighted_overlap"]))}</div>',
        f'<div><b style="{_SIDE["a"]}">Only in A</b> ({len(data["only_a"])})</div>', _rows(data["only_a"], "a"),
        f'<div><b style="{_SIDE["b"]}">Only in B</b> ({len(data["only_b"])})</div>', _rows(data["only_b"], "b"),
        "<div><b>Largest changes in influence</b></div>", _rows(data["largest_changes"], None),
    ]
    return frame("Graph comparison", "".join(parts))
