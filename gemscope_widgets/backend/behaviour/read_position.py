"""Where a behaviour is read in a prompt: the token positions whose residual activations a behaviour direction
(:mod:`~.direction`) or a probe (:mod:`~.probe`) averages.

``position`` is one of :data:`POSITIONS` or a token index: ``"last_prompt_token"`` (the last token, where a
chat prompt's template hands over to the model), ``"post_instruction"`` (the chat template's tokens after the
last user turn, as Arditi et al., 2024 read refusal), ``"mean"`` (every unmasked token) or an index (negative
from the end).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.behaviour.conversation import turns
from gemscope_widgets.backend.gemma.prompts import Prompt
from gemscope_widgets.errors import DirectionError, GemscopeError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

POSITIONS = ("last_prompt_token", "post_instruction", "mean")


def check_position(position: Any, error: type[GemscopeError] = DirectionError) -> None:
    """Raise ``error`` unless ``position`` is one of :data:`POSITIONS` or a token index (an ``int``)."""
    if isinstance(position, bool) or not isinstance(position, (int, str)) or (
        isinstance(position, str) and position not in POSITIONS
    ):
        raise error(f"position={position!r}: use one of {POSITIONS} or a token index.")


def behaviour_prompt(gm: GemmaModel, prompt: Any, chat: bool) -> Prompt:
    """``prompt`` tokenised: a :class:`Prompt` as it is, a string as one user turn when ``chat`` (else plain text),
    a message list through the chat template."""
    if isinstance(prompt, Prompt):
        return prompt
    if chat and isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return gm.prompt(prompt)


def read_positions(
    gm: GemmaModel, prompt: Prompt, position: str | int, error: type[GemscopeError] = DirectionError
) -> torch.Tensor:
    """Token indices ``[n] long`` of ``prompt`` read at ``position`` (module docstring).

    Raises ``error`` for an unknown position, an index outside the prompt, or ``"post_instruction"`` on a prompt
    without a user turn.
    """
    check_position(position, error)
    n = len(prompt)
    if isinstance(position, int):
        if not -n <= position < n:
            raise error(f"position={position} is outside a prompt of {n} tokens.")
        return torch.tensor([position % n])
    if position == "last_prompt_token":
        return torch.tensor([n - 1])
    if position == "mean":
        return torch.nonzero(~prompt.masked).reshape(-1)
    user_turns = [t for t in turns(gm, prompt) if t.role == "user"]
    if not user_turns:
        raise error(
            "position='post_instruction' needs chat prompts (the template tokens after the last user turn): "
            "pass chat=True or message lists."
        )
    return torch.arange(user_turns[-1].content_end, n)
