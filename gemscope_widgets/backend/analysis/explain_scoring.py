"""Scores of an explanation by detection and fuzzing on held-out contexts (delphi's classifier scorers).

Source: EleutherAI ``delphi`` (Paulo, Mallen, Juang, Belrose, "Automatically Interpreting Millions of Features in
LLMs", 2024): ``split_quantiles`` for the deciles, the detection and fuzzing scorers (prompts in
:mod:`.explain_prompts`), their normalised log-prob answer. :func:`~.explain.explain` runs it for each feature.

The scored contexts come from held-out text that the statistics never read (the label scores' held-out
pass, :func:`~.label_scores.held_out_tokens`: by default the corpus documents after the scanned ones), so no scored
context was shown to the explainer. Each held-out document where the feature fires gives one *activating* context:
the window (as the statistics', 16 tokens before and 8 after by default) around its peak. Those contexts are ranked
by their peak and cut into ``deciles`` equal slices by rank (delphi's ``split_quantiles``: slice ``i`` is ranks
``i·m .. (i+1)·m − 1`` with ``m = n_activating // deciles``; the remainder is never drawn), and ``n_test //
deciles`` contexts are drawn from each slice without replacement (``random.Random(seed + feature)``); decile 0 holds
the strongest. ``n_non`` (default ``n_test``) *non-activating* contexts are windows of the same length at a random
start in held-out documents where the feature never fires. A feature needs ``MIN_ACTIVATING`` activating held-out
documents (and ``deciles`` of them) and ``MIN_NON_ACTIVATING`` others, else it is skipped and says why.

- *Detection*: the scorer sees the explanation and one context as plain text and answers ``[1]`` (it has the
  feature) or ``[0]``.
- *Fuzzing*: the same with tokens marked ``<< >>``: in an activating context the tokens at or above 0.3 × its
  peak; in a non-activating one ``ceil(mean number of non-zero tokens of the activating contexts)`` random tokens
  (delphi's default fuzzing). The scorer answers whether the marked tokens are correctly marked.

One context per prompt (delphi's default ``n_examples_shown=1``), the scorer's reply prefilled with ``[``; the
answer is read from the next-token probabilities, never sampled: ``probability = P("1") / (P("0") + P("1"))``
(delphi's normalised log-prob), ``prediction = probability > 0.5``. The prompts of one feature and method share
everything up to the context: that prefix runs once into a KV cache, then ``batch_size`` contexts at a time run as
one forward over their right-padded suffixes. The reported score is the **balanced accuracy**
``½ · (TP / (TP + FN) + TN / (TN + FP))`` (scikit-learn's ``balanced_accuracy_score``), with the AUROC of the
probabilities beside it.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from gemscope_widgets.backend.analysis.explain_prompts import (
    HIGHLIGHT,
    Method,
    chat_ids,
    highlight,
    scorer_messages,
    shared_prefix_length,
)
from gemscope_widgets.backend.analysis.label_scores import HeldOutTokens
from gemscope_widgets.backend.gemma.decoding import PrefixCache, cached_forward, next_token_logits
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.backend.steering.plan import model_lock
from gemscope_widgets.errors import ExplainError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

MIN_ACTIVATING = 10
"""Held-out documents a feature must fire in to be scored (and at least ``deciles``)."""
MIN_NON_ACTIVATING = 4
"""Held-out documents a feature must not fire in to be scored."""


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class ScoredContext:
    """One scored context: held-out document ``doc`` (numbered in the held-out pass's order, which runs the
    documents by length: :func:`~gemscope_widgets.backend.stats.corpus.plan_batches`), ``activating`` or not,
    its ``decile`` (0 = strongest; None for a non-activating one), its ``peak`` activation, the ``text`` the
    scorer saw (marks included for fuzzing), the scorer's next-token probabilities ``p_one`` = P("1") and
    ``p_zero`` = P("0") after ``[``, ``probability`` = p_one / (p_one + p_zero) and ``prediction`` =
    probability > 0.5."""

    doc: int
    activating: bool
    decile: int | None
    peak: float
    text: str
    p_one: float
    p_zero: float
    probability: float
    prediction: bool


@dataclass(frozen=True)
class ScorerResult:
    """One method's score of one explanation: ``balanced_accuracy`` over ``contexts`` (predictions against
    activating / not), ``auroc`` of their probabilities (None with one class), ``prefills``: forwards run."""

    method: str
    scorer: str
    balanced_accuracy: float
    auroc: float | None
    contexts: list[ScoredContext]
    prefills: int = 0


# ---------------------------------------------------------------------- contexts


@dataclass(frozen=True)
class Context:
    """A window of held-out document ``doc``: its token ``ids`` and the feature's ``values`` on them; ``decile`` of
    an activating one (None otherwise); ``tokens``: each token's text once :meth:`with_tokens` filled them."""

    doc: int
    ids: list[int]
    values: list[float]
    activating: bool
    decile: int | None = None
    tokens: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return max(self.values, default=0.0)

    def with_tokens(self, tokenizer: Any) -> Context:
        """This context with ``tokens`` filled in (each token's text)."""
        return replace(self, tokens=token_strings(tokenizer, self.ids))


def document_of(held: HeldOutTokens) -> torch.Tensor:
    """The held-out document of every held-out token, ``[N]`` int64 (a document ends where ``next_ids`` is -1)."""
    ends = (held.next_ids == -1).to(torch.int64)
    starts = torch.zeros_like(ends)
    starts[1:] = ends[:-1]
    return starts.cumsum(0)


def held_out_contexts(held: HeldOutTokens, feature: int, *, before: int = 16, after: int = 8,
                      rng: random.Random | None = None) -> tuple[list[Context], list[Context]]:
    """Every activating context of ``feature`` in ``held`` (one per document where it fires: the window of
    ``before`` + 1 + ``after`` tokens around its peak, ranked by peak, strongest first; ties: earlier document) and
    one non-activating window (same length, random start from ``rng``) per document where it never fires."""
    rng = rng or random.Random(0)
    doc = document_of(held)
    n_docs = int(doc[-1]) + 1 if held.n_tokens else 0
    values = held.activations(int(feature))
    bounds = torch.searchsorted(doc, torch.arange(n_docs + 1))
    active: list[tuple[float, int]] = []
    quiet: list[int] = []
    for d in range(n_docs):
        lo, hi = int(bounds[d]), int(bounds[d + 1])
        peak = float(values[lo:hi].max()) if hi > lo else 0.0
        (active.append((peak, d)) if peak > 0 else quiet.append(d))
    active.sort(key=lambda p: (-p[0], p[1]))
    length = before + 1 + after

    def window(d: int, start: int, activating: bool) -> Context:
        lo, hi = int(bounds[d]), int(bounds[d + 1])
        a, b = max(lo, lo + start), min(hi, lo + start + length)
        return Context(d, held.ids[a:b].tolist(), [float(v) for v in values[a:b]], activating)

    on = []
    for _, d in active:
        lo, hi = int(bounds[d]), int(bounds[d + 1])
        at = int(torch.argmax(values[lo:hi]))
        on.append(window(d, at - before, True))
    off = [window(d, rng.randrange(max(1, int(bounds[d + 1] - bounds[d]) - length + 1)), False) for d in quiet]
    return on, off


def sample_deciles(contexts: Sequence[Context], n: int, deciles: int, rng: random.Random) -> list[Context]:
    """``n // deciles`` contexts from each of ``deciles`` equal rank slices of ``contexts`` (ranked strongest
    first; delphi's ``split_quantiles``), each marked with its ``decile``; all of a slice when it is smaller."""
    size = len(contexts) // deciles
    per = n // deciles
    out = []
    for i in range(deciles):
        part = list(contexts[i * size : (i + 1) * size])
        chosen = part if len(part) <= per else rng.sample(part, per)
        out += [replace(c, decile=i) for c in chosen]
    return out


def scored_text(method: Method, context: Context, n_incorrect: int, rng: random.Random) -> str:
    """What the scorer sees of ``context``: plain text for detection; for fuzzing, the tokens at or above 0.3 × its
    peak marked (activating) or ``n_incorrect`` random tokens marked (non-activating; delphi's default)."""
    if method == "detection":
        return "".join(context.tokens)
    if context.activating:
        top = context.peak * HIGHLIGHT
        return highlight(context.tokens, lambda j: context.values[j] >= top)
    chosen = set(rng.sample(range(len(context.tokens)), min(n_incorrect, len(context.tokens))))
    return highlight(context.tokens, lambda j: j in chosen)


# ---------------------------------------------------------------------- the scorer's answers


def _answer_ids(gm: GemmaModel) -> tuple[int, int]:
    ids = [gm.tokenizer(s, add_special_tokens=False)["input_ids"] for s in ("1", "0")]
    if any(len(i) != 1 for i in ids):
        raise ExplainError(f"{gm.name}'s tokenizer has no single token for '1' and '0': it cannot be a scorer.")
    return int(ids[0][0]), int(ids[1][0])


@torch.inference_mode()
def answer_probabilities(gm: GemmaModel, prompts: Sequence[Sequence[int]], batch_size: int,
                         prefixes: PrefixCache | None = None, shared: int = 0
                         ) -> tuple[list[tuple[float, float]], int]:
    """``(P("1"), P("0"))`` of the next token after each prompt (token ids), and the forwards run.

    The prompts' common prefix runs once into a KV cache (its first ``shared`` tokens kept in ``prefixes`` for
    later calls); then ``batch_size`` prompts at a time run their remaining tokens, right-padded, in one forward
    reading the logits at each one's last real token (causal attention: padding after a token never changes it).
    """
    one, zero = _answer_ids(gm)
    lcp = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        lcp = next((j for j in range(lcp) if p[j] != first[j]), lcp)
    pad = gm.tokenizer.pad_token_id if gm.tokenizer.pad_token_id is not None else 0
    prefixes = prefixes or PrefixCache(gm)
    before = prefixes.forwards
    out: list[tuple[float, float]] = []
    with model_lock(gm):
        if 0 < shared <= lcp:
            prefixes.run(first[:shared], keep=True)
        cache, _ = prefixes.run(first[:lcp])
        forwards = prefixes.forwards - before
        for start in range(0, len(prompts), batch_size):
            rows = [list(p[lcp:]) for p in prompts[start : start + batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=gm.device)
            batch_cache = copy.deepcopy(cache)
            if len(rows) > 1:
                batch_cache.batch_repeat_interleave(len(rows))
            hidden = cached_forward(gm, ids, batch_cache)
            last = hidden[torch.arange(len(rows), device=gm.device),
                          torch.tensor([len(r) - 1 for r in rows], device=gm.device)]
            probs = torch.softmax(next_token_logits(gm, last), dim=-1)
            out += [(float(p[one]), float(p[zero])) for p in probs.cpu()]
            forwards += 1
    return out, forwards


def score_contexts(scorer: GemmaModel, method: Method, explanation: str, contexts: Sequence[Context],
                   n_incorrect: int, rng: random.Random, batch_size: int, prefixes: PrefixCache | None = None
                   ) -> ScorerResult:
    """One method's :class:`ScorerResult` of ``explanation`` on ``contexts`` (module docstring; ``prefixes``
    keeps the method's system prompt and few-shot examples, the same for every feature)."""
    texts = [scored_text(method, c, n_incorrect, rng) for c in contexts]
    prompts = [chat_ids(scorer, scorer_messages(method, explanation, t), "[") for t in texts]
    shared = shared_prefix_length(scorer, method)
    probs, forwards = answer_probabilities(scorer, prompts, batch_size, prefixes, shared=shared)
    scored = []
    for c, text, (p1, p0) in zip(contexts, texts, probs, strict=True):
        probability = p1 / (p1 + p0) if p1 + p0 > 0 else 0.0
        scored.append(ScoredContext(c.doc, c.activating, c.decile, c.peak, text, p1, p0, probability,
                                    probability > 0.5))
    truth = [s.activating for s in scored]
    auroc = float(roc_auc_score(truth, [s.probability for s in scored])) if len(set(truth)) == 2 else None
    ba = float(balanced_accuracy_score(truth, [s.prediction for s in scored]))
    return ScorerResult(method, scorer.name, ba, auroc, scored, forwards)
