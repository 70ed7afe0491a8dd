"""A conversation's features per turn, and continuing a conversation with the model's next turn.

The conversation is tokenised with the model's chat template (Gemma 3's when the tokenizer has none), with one
``<bos>``; continuing generates one model turn with :func:`gemscope_widgets.backend.steering.generation.generate`
(baseline and steered together, the steering widget's code path) and stops at ``<end_of_turn>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gemscope_widgets.backend.analysis.features import SparseActivations, prompt_features
from gemscope_widgets.backend.behaviour.conversation import (
    Turn,
    check_conversation,
    stopping_at_end_of_turn,
    turns,
    warn_if_base,
)
from gemscope_widgets.backend.gemma.prompts import Prompt
from gemscope_widgets.backend.steering.generation import generate

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel
    from gemscope_widgets.backend.steering.generation import GenerationResult


@dataclass
class TurnSummary:
    """The strongest features of one turn: ``features [k]`` by their max activation over the turn's content
    tokens, with ``max`` and ``mean`` (over those tokens) alongside."""

    turn: Turn
    features: np.ndarray
    max: np.ndarray
    mean: np.ndarray


@dataclass
class ConversationFeatures:
    """A templated conversation, its turns, and each SAE's per-token activations."""

    messages: list[dict[str, str]]
    prompt: Prompt
    turns: list[Turn]
    activations: list[SparseActivations]

    def summary(self, sae_index: int = 0, k: int = 8) -> list[TurnSummary]:
        """Per turn, the ``k`` features with the highest activation on the turn's content tokens."""
        acts = self.activations[sae_index]
        out = []
        for turn in self.turns:
            best = np.zeros(acts.width, dtype=np.float32)
            total = np.zeros(acts.width, dtype=np.float64)
            n = max(turn.content_end - turn.content_start, 1)
            for t in range(turn.content_start, turn.content_end):
                idx, val = acts.token(t)
                np.maximum.at(best, idx, val)
                np.add.at(total, idx, val)
            order = np.argsort(-best, kind="stable")[:k]
            order = order[best[order] > 0]
            out.append(TurnSummary(turn, order, best[order], (total[order] / n).astype(np.float32)))
        return out


def chat_prompt(gm: GemmaModel, messages: Any, *, warn: bool = True) -> tuple[list[dict[str, str]], Prompt, list[Turn]]:
    """Check the conversation's turn order, template it (one ``<bos>``) and locate its turns."""
    checked = check_conversation(messages)
    if warn:
        warn_if_base(gm)
    prompt = gm.prompt(checked)
    return checked, prompt, turns(gm, prompt)


def conversation_features(gm: GemmaModel, saes: Sequence[Any] | Any, messages: Any) -> ConversationFeatures:
    """Per-token activations of each SAE over a conversation (one early-exit forward pass)."""
    checked, prompt, segments = chat_prompt(gm, messages)
    acts = prompt_features(gm, saes, prompt)
    return ConversationFeatures(checked, prompt, segments, acts)


def continue_conversation(
    gm: GemmaModel,
    messages: Any,
    steering: Any = None,
    *,
    sae: Any = None,
    unit: str = "typical",
    max_new_tokens: int = 64,
    **kwargs: Any,
) -> tuple[GenerationResult, list[dict[str, str]]]:
    """Generate the model's next turn, baseline and steered, stopping at ``<end_of_turn>``.

    ``messages`` must end on a user turn. ``steering``/``sae``/``unit``/other keywords as
    :func:`~gemscope_widgets.backend.steering.generation.generate` (``{feature: x}`` is x times the feature's
    unit unless ``unit="raw"``; ``on_token`` streams each step). Returns the generation and the conversation
    with the steered reply appended as an ``assistant`` (model) turn.
    """
    checked = check_conversation(messages, ending="user")
    warn_if_base(gm)
    result = generate(stopping_at_end_of_turn(gm), checked, steering, sae=sae, unit=unit,
                      max_new_tokens=max_new_tokens, **kwargs)
    return result, [*checked, {"role": "assistant", "content": result.steered_text}]
