"""Contrasting two prompts (or conversations): SAE features ranked by the difference of their activation.

For one pair, features are ranked by ``|act_a − act_b|`` where each side's activation is reduced (mean or max)
over a span of tokens. For several pairs the ranking uses a paired statistic, ``t = mean(d) / (sd(d) / √n)``
over the per-pair differences ``d`` (the paired t statistic), which separates features that differ consistently
from ones that differ a lot in one pair only. Source: feature diffing between paired prompts as in
"Sparse Feature Circuits" (Marks et al., 2024) and the Gemma Scope 2 release's chat-behaviour case studies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gemscope_widgets.backend.analysis.features import SparseActivations, prompt_features
from gemscope_widgets.backend.behaviour.conversation import check_conversation, turns
from gemscope_widgets.backend.gemma.prompts import is_token_ids
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.errors import ContrastError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

SPANS = ("all", "last_user_turn", "first_response_token", "response", "last_token")
"""``all``: every token but ``<bos>``; ``last_user_turn``: the user's text in the last user turn (a system
message folded into it is left out); ``first_response_token``: the first token of the last model turn when there
is one, else the last token (where the first response token is predicted); ``response``: the content of the last
model turn; ``last_token``: the prompt's last token."""
REDUCTIONS = ("mean", "max")
SINGLE_PAIR_CAVEAT = (
    "One pair of prompts cannot separate content from wording: this ranking reflects tokenisation and phrasing "
    "differences as much as the behaviour. Rank over several pairs that differ only in what you study: "
    "pairs=[(a, b), ...] (paired t statistic)."
)
"""Shown with every single-pair :class:`Contrast` (``Contrast.caveat``), in scripts and views alike."""


def span_positions(gm: GemmaModel, prompt: Any, span: str) -> np.ndarray:
    """Token indices of ``span`` in a tokenised prompt (:class:`Prompt`); :class:`ContrastError` if it is empty."""
    if span not in SPANS:
        raise ContrastError(f"span={span!r}: use one of {SPANS}.")
    n = len(prompt)
    if span == "all":
        return np.nonzero(~prompt.masked.numpy())[0]
    if span == "last_token":
        return np.array([n - 1])
    if not prompt.is_chat:
        raise ContrastError(
            f"span={span!r} needs a conversation (a list of {{'role', 'content'}} messages), but this prompt is "
            "plain text: pass messages, or use span='all' or 'last_token'."
        )
    segments = turns(gm, prompt)
    users = [t for t in segments if t.role == "user"]
    models = [t for t in segments if t.role == "model" and t.content_end > t.content_start]
    if span == "last_user_turn":
        turn = users[-1]
        return np.arange(turn.message_start, turn.content_end)  # the user's own text, not a folded system one
    if span == "first_response_token":
        return np.array([models[-1].content_start]) if models else np.array([n - 1])
    if not models:
        raise ContrastError(
            "span='response' needs a model turn in the conversation; add the model's reply (or use "
            "span='first_response_token' to read where the reply starts)."
        )
    return np.arange(models[-1].content_start, models[-1].content_end)


def reduce_span(acts: SparseActivations, positions: np.ndarray, reduce: str) -> np.ndarray:
    """Each feature's ``mean`` or ``max`` activation over ``positions``: dense ``[width]`` float32."""
    if reduce not in REDUCTIONS:
        raise ContrastError(f"reduce={reduce!r}: use 'mean' or 'max'.")
    out = np.zeros(acts.width, dtype=np.float64)
    for t in positions:
        idx, val = acts.token(int(t))
        if reduce == "mean":
            np.add.at(out, idx, val)
        else:
            out[idx] = np.maximum(out[idx], val)
    if reduce == "mean" and len(positions):
        out /= len(positions)
    return out.astype(np.float32)


@dataclass
class Contrast:
    """Features ranked by the difference between two prompts over a span.

    ``features``: ``[k]`` by ``|diff|``, largest first; ``diff``/``a``/``b``: ``[k]`` the difference and each side's
    reduced activation; ``full_diff``: ``[width]``; ``acts_a``/``acts_b``: the per-token activations (for heatmaps);
    ``positions_a``/``positions_b``: the span's token indices.
    """

    features: np.ndarray
    diff: np.ndarray
    a: np.ndarray
    b: np.ndarray
    full_diff: np.ndarray
    acts_a: SparseActivations
    acts_b: SparseActivations
    positions_a: np.ndarray
    positions_b: np.ndarray
    span: str
    reduce: str
    sae_name: str

    @property
    def caveat(self) -> str:
        """Why one pair's ranking needs care: :data:`SINGLE_PAIR_CAVEAT`."""
        return SINGLE_PAIR_CAVEAT


def _default_span(a: Any, b: Any) -> str:
    def chat(p: Any) -> bool:
        return getattr(p, "is_chat", False) or (
            isinstance(p, Sequence) and not isinstance(p, str) and not is_token_ids(p))

    return "last_user_turn" if chat(a) and chat(b) else "all"


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ContrastError(f"k must be a positive integer, got {k!r}.")
    return k


def _side(gm: GemmaModel, sae: Any, prompt: Any, span: str, reduce: str) -> tuple[SparseActivations, np.ndarray,
                                                                                     np.ndarray]:
    if isinstance(prompt, Sequence) and not isinstance(prompt, str) and not is_token_ids(prompt):
        prompt = check_conversation(prompt)
    acts = prompt_features(gm, sae, prompt)[0]
    positions = span_positions(gm, acts.prompt, span)
    if len(positions) == 0:
        raise ContrastError(f"The span {span!r} of {str(acts.prompt.source)[:60]!r} has no tokens.")
    return acts, positions, reduce_span(acts, positions, reduce)


def contrast(
    gm: GemmaModel, sae: Any, a: Any, b: Any, *, span: str | None = None, reduce: str = "mean", k: int = 20
) -> Contrast:
    """Rank ``sae``'s features by the difference of their activation between ``a`` and ``b`` over ``span``.

    ``a``, ``b``: text or chat messages; ``span``: one of :data:`SPANS` (default ``"last_user_turn"`` for two
    conversations, else ``"all"``); ``reduce``: ``"mean"`` or ``"max"`` over the span. One early-exit forward
    pass per prompt (:func:`prompt_features`). Raises :class:`ContrastError` (or :class:`PromptError` for a bad prompt).
    """
    k = _check_k(k)
    span = span or _default_span(a, b)
    if reduce not in REDUCTIONS:
        raise ContrastError(f"reduce={reduce!r}: use 'mean' or 'max'.")
    if span not in SPANS:
        raise ContrastError(f"span={span!r}: use one of {SPANS}.")
    acts_a, pos_a, red_a = _side(gm, sae, a, span, reduce)
    acts_b, pos_b, red_b = _side(gm, sae, b, span, reduce)
    diff = red_a - red_b
    order = np.argsort(-np.abs(diff), kind="stable")[: min(k, len(diff))]
    order = order[diff[order] != 0]
    return Contrast(order, diff[order], red_a[order], red_b[order], diff, acts_a, acts_b, pos_a, pos_b, span,
                    reduce, sae.config.name)


@dataclass
class PairedContrast:
    """Features ranked over several pairs by the paired t statistic ``mean(d) / (sd(d)/√n)``.

    ``features``: ``[k]`` by ``|t|``; ``mean_diff``, ``stderr``, ``t``: ``[k]``; ``diffs``: ``[n_pairs, k]`` the
    per-pair differences of those features; ``first``: the first pair's :class:`Contrast` (its per-token
    activations and span, for showing one example pair beside the ranking). A feature whose differences are all
    equal and non-zero has ``t = ±inf`` (ranked first); features that never differ are left out.
    """

    features: np.ndarray
    mean_diff: np.ndarray
    stderr: np.ndarray
    t: np.ndarray
    diffs: np.ndarray
    n_pairs: int
    span: str
    reduce: str
    sae_name: str
    first: Contrast


def contrast_pairs(
    gm: GemmaModel,
    sae: Any,
    pairs: Sequence[tuple[Any, Any]],
    *,
    span: str | None = None,
    reduce: str = "mean",
    k: int = 20,
    progress: bool = True,
) -> PairedContrast:
    """:func:`contrast` over a batch of ``(a, b)`` pairs (at least 2), ranked by the paired t statistic."""

    k = _check_k(k)
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or len(pairs) < 2:
        raise ContrastError("contrast_pairs needs a list of at least 2 (a, b) pairs; use contrast(a, b) for one.")
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ContrastError(f"Pair {i} is not an (a, b) pair: {pair!r:.80}.")
    span = span or _default_span(*pairs[0])
    diffs = np.zeros((len(pairs), sae.width), dtype=np.float64)
    first = None
    for i, (a, b) in enumerate(progress_bar(pairs, desc="contrast pairs", disable=not progress, leave=False)):
        single = contrast(gm, sae, a, b, span=span, reduce=reduce, k=1)
        first = first or single
        diffs[i] = single.full_diff
    assert first is not None  # at least 2 pairs
    n = len(pairs)
    mean = diffs.mean(0)
    se = diffs.std(0, ddof=1) / np.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, mean / se, np.sign(mean) * np.inf)
    t = np.where(mean == 0, 0.0, t)
    order = np.lexsort((-np.abs(mean), -np.abs(t)))[: min(k, sae.width)]
    order = order[mean[order] != 0]
    return PairedContrast(order, mean[order].astype(np.float32), se[order].astype(np.float32),
                          t[order].astype(np.float32), diffs[:, order].astype(np.float32), n, span, reduce,
                          sae.config.name, first)

