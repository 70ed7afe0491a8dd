"""TokenView: a prompt's tokens in the notebook; a click selects one and the kernel answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import traitlets

from gemscope_widgets.errors import PromptError

from .base import ViewWidget
from .bundle import bundle_path
from .messages import PING, MessageTable

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

_BUNDLE = bundle_path("token_view")

_HINT = "Click a token to select it."


class TokenView(ViewWidget):
    """Shows token strings with their whitespace made visible; clicking one sets ``selected_token``.

    >>> TokenView(["<bos>", "Hello", " world"], special=[True, False, False])
    """

    _esm = _BUNDLE

    MESSAGES: ClassVar[MessageTable] = {"ping": PING}
    """What the view sends (``TokenViewMessage`` in ``js/lib/protocol.ts``): only the liveness check."""

    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The token strings, in order."""
    special = traitlets.List(traitlets.Bool()).tag(sync=True)
    """Per token, whether it is a special token (BOS, ``<start_of_turn>``, ...); empty means none are."""
    selected_token = traitlets.Int(-1).tag(sync=True)
    """Index of the selected token, -1 when none is selected. Set by a click in the browser."""
    status = traitlets.Unicode(_HINT).tag(sync=True)
    """A line shown under the tokens, written by the kernel."""

    def static_html(self) -> str:
        """The script-free rendering carried in the mime bundle (see :mod:`.static_view`)."""
        from .static_view import token_view_html

        return token_view_html(self)

    def __init__(
        self,
        tokens: Sequence[str] = (),
        special: Sequence[bool] | None = None,
        **kwargs: Any,
    ) -> None:
        tokens, special = list(tokens), list(special or ())
        if special and len(special) != len(tokens):
            raise PromptError(f"special has {len(special)} flags for {len(tokens)} tokens; pass one flag per token.")
        super().__init__(tokens=tokens, special=special, **kwargs)

    @classmethod
    def from_text(cls, model: GemmaModel, text: str | list[dict[str, str]], **kwargs: Any) -> TokenView:
        """The tokens of ``text`` as ``model`` tokenises it (BOS and chat markers flagged special)."""
        prompt = model.prompt(text)
        return cls(list(prompt.tokens), [bool(s) for s in prompt.special], **kwargs)

    def set_tokens(self, tokens: Sequence[str], special: Sequence[bool] | None = None) -> None:
        """Replaces the tokens (and their special flags) in one update and clears the selection."""
        with self.hold_trait_notifications():
            self.selected_token = -1
            self.tokens = list(tokens)
            self.special = list(special or ())

    @traitlets.validate("special")
    def _check_special(self, proposal: traitlets.Bunch) -> list[bool]:
        special = proposal["value"]
        if special and len(special) != len(self.tokens):
            raise PromptError(
                f"special has {len(special)} flags for {len(self.tokens)} tokens; pass one flag per token "
                "(or none), e.g. with view.set_tokens(tokens, special)."
            )
        return special

    @traitlets.validate("tokens")
    def _check_tokens(self, proposal: traitlets.Bunch) -> list[str]:
        tokens = proposal["value"]
        if self.special and len(self.special) != len(tokens):
            raise PromptError(
                f"{len(tokens)} tokens do not match the {len(self.special)} special flags already set; "
                "replace both together with view.set_tokens(tokens, special)."
            )
        return tokens

    @traitlets.validate("selected_token")
    def _check_selected(self, proposal: traitlets.Bunch) -> int:
        index = proposal["value"]
        if not -1 <= index < len(self.tokens):
            raise PromptError(
                f"selected_token {index} is outside the {len(self.tokens)} tokens; "
                f"use 0..{len(self.tokens) - 1}, or -1 for no selection."
            )
        return index

    @traitlets.observe("selected_token", "tokens")
    def _update_status(self, _change: traitlets.Bunch) -> None:
        index = self.selected_token
        if index >= len(self.tokens):  # the tokens were replaced by fewer: the old selection is gone
            self.selected_token = -1  # re-enters this observer, which writes the status
            return
        if 0 <= index < len(self.tokens):
            self.status = f"selected token {index}: {self.tokens[index]!r}"
        else:
            self.status = _HINT
