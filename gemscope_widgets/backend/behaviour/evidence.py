"""Sycophancy and refusal evidence on the built-in prompt sets: held-out probes, a topic control, the causal check.

For a behaviour (``"refusal"``: :data:`~.prompt_sets.HARMFUL_REQUESTS` against
:data:`~.prompt_sets.HARMLESS_REQUESTS`; ``"sycophancy"``: each question of :data:`~.prompt_sets.SYCOPHANCY_PAIRS`
with the user's opinion stated against the same question asked neutrally) :func:`behaviour_evidence` gathers what
a reviewer asks for, with the machinery of :func:`~.probe.probe` and :func:`~.validate.validate`:

1. **held-out AUROC** of the SAE probe, a dense probe, the difference-of-means direction and each top latent
   (Kantamneni et al., 2025);
2. for sycophancy, a **topic control** (:func:`topic_control`): pairs of prompts with the *same* framing that differ
   in topic only (:func:`topic_control_sets`). The latents and the direction chosen for sycophancy are scored on
   them; a sycophancy detector should not separate them (AUROC near 0.5, its interval covering 0.5), while a latent
   that does separate them tracks the topics rather than the stated opinion;
3. the **causal check** (:func:`~.validate.validate`): the top latents that fire more with the behaviour, as
   chosen on the first training part, are ablated on that part's held-out behaviour prompts, beside
   density-matched random latents. Refusal is scored by :func:`~.refusal.refusal_score` of the generated text;
   sycophancy by :func:`agreement_scorer` (next-token probability of agreeing minus disagreeing: every stated
   opinion is a misconception, so agreeing is the sycophantic answer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gemscope_widgets.backend.behaviour.heldout import auroc, auroc_interval
from gemscope_widgets.backend.behaviour.probe import ProbeResult, probe, probe_activations
from gemscope_widgets.backend.behaviour.prompt_sets import HARMFUL_REQUESTS, HARMLESS_REQUESTS, SYCOPHANCY_PAIRS
from gemscope_widgets.backend.behaviour.validate import CausalCheck, validate
from gemscope_widgets.errors import ProbeError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

REFUSAL = "refusal"
SYCOPHANCY = "sycophancy"
BEHAVIOURS = (REFUSAL, SYCOPHANCY)
AGREE_WORDS = ("Yes", "yes", "YES", "True", "true", "Correct", "correct", "Right", "right")
DISAGREE_WORDS = ("No", "no", "NO", "False", "false", "Incorrect", "incorrect", "Wrong", "wrong")


def behaviour_sets(behaviour: str) -> tuple[list[str], list[str]]:
    """``(positive, negative)`` built-in prompts of ``behaviour`` (:data:`BEHAVIOURS`): refusal, the harmful and the
    harmless requests (32 each); sycophancy, the questions with the user's opinion stated and the same questions
    asked neutrally (16 each, paired by index)."""
    if behaviour == REFUSAL:
        return list(HARMFUL_REQUESTS), list(HARMLESS_REQUESTS)
    if behaviour == SYCOPHANCY:
        return [opinion for _, opinion in SYCOPHANCY_PAIRS], [neutral for neutral, _ in SYCOPHANCY_PAIRS]
    raise ProbeError(f"behaviour={behaviour!r}: use one of {BEHAVIOURS}, or call probe() and validate() with your "
                     "own prompt sets.")


def topic_control_sets(pairs: Sequence[tuple[str, str]] = SYCOPHANCY_PAIRS) -> tuple[list[str], list[str]]:
    """Prompts that differ in topic only: ``(first, second)``, where ``first[i]`` and ``second[i]`` have the same
    framing (both neutral, or both with the opinion stated) and different topics.

    The ``2h`` pairs (``(neutral, opinion)`` each) are split into the first ``h`` topics and the last ``h``;
    ``first`` holds the first half's neutral then opinion prompts, ``second`` the second half's in the same order,
    so framing is balanced between the two sides and only the topic tells them apart.
    """
    if len(pairs) < 8:
        raise ProbeError(f"A topic control needs at least 8 pairs (4 topics a side), got {len(pairs)}.")
    h = len(pairs) // 2
    first, second = pairs[:h], pairs[h : 2 * h]
    return [n for n, _ in first] + [o for _, o in first], [n for n, _ in second] + [o for _, o in second]


@dataclass
class TopicControl:
    """The behaviour's detectors scored on prompts that differ in topic only.

    ``features``: the probe's latents; ``auroc``/``low``/``high``: ``[k]`` each latent's AUROC on the control
    (``first`` scored as positive; activation signed by its behaviour mean difference) with its bootstrap interval;
    ``behaviour_auroc``: ``[k]`` the same latents' held-out AUROC on the behaviour; ``direction``:
    ``(auroc, low, high)`` of the difference-of-means direction on the control (None without one).
    """

    first: list[str]
    second: list[str]
    features: list[int]
    auroc: np.ndarray
    low: np.ndarray
    high: np.ndarray
    behaviour_auroc: np.ndarray
    direction: tuple[float, float, float] | None = None

    @property
    def separating(self) -> list[int]:
        """Latents whose control interval excludes 0.5: they tell the topics apart (a confound to look at)."""
        return [f for f, lo, hi in zip(self.features, self.low, self.high) if lo > 0.5 or hi < 0.5]

    def summary(self) -> str:
        """A plain-text table: each latent's AUROC on the behaviour beside its AUROC on the topic control."""
        lines = [f"Topic control: {len(self.first)} + {len(self.second)} prompts that differ in topic only "
                 "(a behaviour detector should stay near 0.5)", "",
                 f"{'detector':<22}{'behaviour':>10}{'topic control':>15}  95% interval"]
        if self.direction is not None:
            a, lo, hi = self.direction
            lines.append(f"{'difference of means':<22}{'':>10}{a:>15.3f}  [{lo:.3f}, {hi:.3f}]")
        for f, b, a, lo, hi in zip(self.features, self.behaviour_auroc, self.auroc, self.low, self.high):
            lines.append(f"{'latent #' + str(f):<22}{b:>10.3f}{a:>15.3f}  [{lo:.3f}, {hi:.3f}]")
        lines.append(f"\nseparating the topics: {self.separating or 'none'}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def topic_control(
    gm: GemmaModel, sae: Any, result: ProbeResult, first: Sequence[str], second: Sequence[str], *,
    chat: bool | None = None, seed: int = 0, progress: bool = False,
) -> TopicControl:
    """Score ``result``'s latents and direction on ``first`` (as positive) against ``second`` (prompts that differ
    in topic only, e.g. :func:`topic_control_sets`) at the probe's position. One forward pass per prompt up to the
    SAE's layer. AUROCs are ``sklearn.metrics.roc_auc_score`` with stratified bootstrap intervals."""
    if len(first) < 2 or len(second) < 2:
        raise ProbeError("A topic control needs at least 2 prompts on each side.")
    if chat is None:
        chat = bool(gm.is_instruct) if result.direction is None else result.direction.chat
    prompts = [*first, *second]
    y = np.asarray([1] * len(first) + [0] * len(second), dtype=np.int64)
    latents_t, inputs_t = probe_activations(gm, sae, prompts, position=result.position, chat=chat, progress=progress)
    latents, inputs = latents_t.numpy().astype(np.float64), inputs_t.numpy().astype(np.float64)
    values, lows, highs, behaviour = [], [], [], []
    for i, f in enumerate(result.features):
        signed = np.sign(f.mean_difference) * latents[:, f.feature]
        lo, hi = auroc_interval(y, signed, seed=seed + i)
        values.append(auroc(y, signed))
        lows.append(lo)
        highs.append(hi)
        behaviour.append(f.auroc)
    direction = None
    if result.direction is not None:
        scores = inputs @ result.direction.direction.double().numpy()
        lo, hi = auroc_interval(y, scores, seed=seed + len(result.features))
        direction = (auroc(y, scores), lo, hi)
    return TopicControl(list(first), list(second), result.top_features, np.asarray(values), np.asarray(lows),
                        np.asarray(highs), np.asarray(behaviour), direction)


def _first_token_ids(gm: GemmaModel, words: Sequence[str]) -> list[int]:
    ids = set()
    for word in words:
        for text in (word, " " + word):
            encoded = gm.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1:
                ids.add(int(encoded[0]))
    return sorted(ids)


def agreement_scorer(
    gm: GemmaModel, agree: Sequence[str] = AGREE_WORDS, disagree: Sequence[str] = DISAGREE_WORDS
) -> Callable[[torch.Tensor], float]:
    """A next-token scorer for :func:`validate` (``on="next_token"``): the probability of answering with an agreeing
    word minus that of a disagreeing one (each word with and without a leading space, where it is one token), in
    [-1, 1]. On prompts that state a misconception, higher means more sycophantic."""
    yes, no = _first_token_ids(gm, agree), _first_token_ids(gm, disagree)
    if not yes or not no:
        raise ProbeError("None of the agreeing or disagreeing words is a single token of this tokenizer.")

    def agreement(probs: torch.Tensor) -> float:
        p = probs.float()
        return float(p[yes].sum() - p[no].sum())

    return agreement


@dataclass
class BehaviourEvidence:
    """What :func:`behaviour_evidence` found: ``probe`` (:class:`ProbeResult`), ``control`` (:class:`TopicControl`,
    sycophancy only) and ``causal`` (:class:`CausalCheck`, None when skipped, with ``causal_note`` saying why)."""

    behaviour: str
    probe: ProbeResult
    control: TopicControl | None = None
    causal: CausalCheck | None = None
    causal_features: list[int] = field(default_factory=list)
    causal_note: str = ""

    def summary(self) -> str:
        """The probe's table, the topic control and the causal check, one after the other."""
        parts = [f"== {self.behaviour}: held-out probes ==", self.probe.summary()]
        if self.control is not None:
            parts += ["", f"== {self.behaviour}: topic control ==", self.control.summary()]
        parts += ["", f"== {self.behaviour}: causal check =="]
        if self.causal is not None:
            parts.append(self.causal.summary())
        if self.causal_note:
            parts.append(self.causal_note)
        return "\n".join(parts)

    def __repr__(self) -> str:
        return self.summary()


def behaviour_evidence(
    gm: GemmaModel,
    sae: Any,
    behaviour: str = SYCOPHANCY,
    *,
    k: int = 8,
    seed: int = 0,
    position: str | int = "last_prompt_token",
    chat: bool | None = None,
    labels: Any = None,
    densities: Any = None,
    causal: bool = True,
    n_causal: int = 4,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> BehaviourEvidence:
    """Held-out probes, the topic control (sycophancy) and the causal check for a built-in behaviour.

    ``behaviour``: ``"refusal"`` or ``"sycophancy"`` (:func:`behaviour_sets`). ``k``, ``seed``, ``position``,
    ``chat``, ``labels``, ``densities``: as :func:`probe`. The causal check ablates up to ``n_causal`` latents chosen
    on the first training part that fire more with the behaviour, on that part's held-out behaviour prompts; its
    density-matched random control needs ``densities`` (``FeatureStats.density``; without them the check runs with
    no control, said in the summary). Refusal is scored on ``max_new_tokens`` generated tokens, sycophancy on the
    next-token distribution (:func:`agreement_scorer`). ``causal=False`` skips the check.

    Cost: one forward pass per prompt (twice for sycophancy: the control), then one paired generation (refusal)
    or forward pass (sycophancy) per held-out prompt, twice with the control. Raises :class:`ProbeError` for an
    unknown behaviour and whatever :func:`probe` / :func:`validate` raise. Methods: Kantamneni et al. (2025);
    Arditi et al. (2024); Marks et al. (2024) for the matched random control.
    """
    positive, negative = behaviour_sets(behaviour)
    if chat is None:
        chat = bool(gm.is_instruct)
    result = probe(gm, sae, positive, negative, position=position, k=k, seed=seed, chat=chat, labels=labels,
                   densities=densities, label=behaviour, progress=progress)
    evidence = BehaviourEvidence(behaviour, result)
    if behaviour == SYCOPHANCY:
        first, second = topic_control_sets()
        evidence.control = topic_control(gm, sae, result, first, second, chat=chat, seed=seed, progress=progress)
    if not causal:
        evidence.causal_note = "skipped (causal=False)"
        return evidence
    up = [f for f, d in zip(result.fold_features[0], result.fold_differences[0]) if d > 0][:n_causal]
    held_out = result.held_out_prompts()[0]
    if not up:
        evidence.causal_note = "no latent chosen on the first training part fires more with the behaviour"
        return evidence
    if behaviour == SYCOPHANCY:
        check = validate(gm, held_out, up, sae=sae, mode="ablate", scorer=agreement_scorer(gm), on="next_token",
                         control=densities is not None, densities=densities, seed=seed, chat=chat, progress=progress)
    else:
        check = validate(gm, held_out, up, sae=sae, mode="ablate", scorer="refusal", on="text",
                         control=densities is not None, densities=densities, seed=seed, chat=chat,
                         max_new_tokens=max_new_tokens, progress=progress)
    evidence.causal = check
    evidence.causal_features = up
    if densities is None:
        evidence.causal_note = "no density-matched control: pass densities=stats.density"
    return evidence

