"""The causal check: does pushing on chosen features (or a direction) change the behaviour, more than pushing on
random features of the same density?

For each held-out prompt the baseline and the intervened continuation are generated together (the steering
backend's :func:`~gemscope_widgets.backend.steering.generation.generate`, greedy by default), or the next-token
distribution is read with and without the intervention; a scorer turns each into a number (the refusal score, or
the user's function). The effect is the mean paired difference, intervened minus baseline, with a seeded
percentile-bootstrap interval over prompts. The control repeats the check with random features matched in
density (each chosen feature replaced by a random one among the features of nearest corpus density), or for a
direction a random direction, so an effect that any intervention of that size would have shows as such.
This is the validation by ablation / steering on held-out prompts of Arditi et al. (2024) and Ferrando et al.
(ICLR 2025), with the random-feature control of e.g. Marks et al. (2024), "Sparse Feature Circuits".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gemscope_widgets.backend.behaviour.conversation import stopping_at_end_of_turn, warn_if_base
from gemscope_widgets.backend.behaviour.direction import BehaviourDirection
from gemscope_widgets.backend.behaviour.heldout import mean_interval
from gemscope_widgets.backend.behaviour.probe import ProbeResult
from gemscope_widgets.backend.behaviour.prompt_sets import read_prompts
from gemscope_widgets.backend.behaviour.refusal import refusal_score
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.steering.generation import generate, next_token_probs
from gemscope_widgets.backend.steering.spec import DirectionSpec, SteeringSpec
from gemscope_widgets.errors import CausalCheckError, GemscopeError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

SCORED_ON = ("text", "next_token")
DENSITY_NEIGHBOURS = 10
"""A control feature is drawn among the this many features nearest in density to the feature it replaces."""


@dataclass
class InterventionEffect:
    """Scores of one intervention on every prompt: ``baseline`` and ``intervened`` ``[N]``, their texts (for
    ``on="text"``), and the mean paired change ``intervened − baseline`` with its bootstrap interval."""

    specs: list[Any]
    baseline: np.ndarray
    intervened: np.ndarray
    baseline_texts: list[str]
    intervened_texts: list[str]
    change: float
    low: float
    high: float

    @property
    def baseline_rate(self) -> float:
        """Mean baseline score."""
        return float(self.baseline.mean())

    @property
    def intervened_rate(self) -> float:
        """Mean intervened score."""
        return float(self.intervened.mean())


@dataclass
class CausalCheck:
    """The chosen intervention's effect beside a matched random control.

    ``effect``/``control``: :class:`InterventionEffect` (``control`` None with ``control=False``);
    ``features``/``control_features``: the steered features and their density-matched stand-ins (empty for a
    direction); ``densities``: ``(chosen, control)`` densities where known.
    """

    prompts: list[Any]
    scorer: str
    on: str
    description: str
    effect: InterventionEffect
    control: InterventionEffect | None
    features: list[int] = field(default_factory=list)
    control_features: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """A plain-text table: baseline and intervened means, the change and its 95% interval, for both."""
        lines = [f"Causal check: {self.description} on {len(self.prompts)} prompts, scored by {self.scorer} "
                 f"({'generated text' if self.on == 'text' else 'next-token probabilities'})", "",
                 f"{'':<26}{'baseline':>10}{'intervened':>12}{'change':>9}  95% interval"]
        rows = [("chosen", self.effect)] + ([("random, matched density", self.control)] if self.control else [])
        for name, e in rows:
            lines.append(f"{name:<26}{e.baseline_rate:>10.3f}{e.intervened_rate:>12.3f}{e.change:>+9.3f}  "
                         f"[{e.low:+.3f}, {e.high:+.3f}]")
        if self.features:
            lines.append(f"\nfeatures {self.features}; control features {self.control_features}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def matched_features(
    features: Sequence[int], densities: Any, *, seed: int, neighbours: int = DENSITY_NEIGHBOURS
) -> list[int]:
    """For each feature, a random other feature among the ``neighbours`` nearest to it in density (``[width]``
    firing rates), none of them chosen and none drawn twice. Seeded."""
    density = np.asarray(torch.as_tensor(densities).float().cpu(), dtype=np.float64).reshape(-1)
    order = np.argsort(density, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    taken = {int(f) for f in features}
    if len(order) < 2 * len(taken):
        raise CausalCheckError(f"{len(taken)} features leave too few others ({len(order)} in all) for a control.")
    rng = np.random.default_rng(seed)
    out = []
    for f in features:
        r = int(rank[int(f)])
        pool: list[int] = []
        step = 1
        while len(pool) < neighbours and step < len(order):
            for j in (r - step, r + step):
                if 0 <= j < len(order) and int(order[j]) not in taken and len(pool) < neighbours:
                    pool.append(int(order[j]))
            step += 1
        if not pool:
            raise CausalCheckError("No feature is left to serve as a density-matched control.")
        pick = int(rng.choice(pool))
        taken.add(pick)
        out.append(pick)
    return out


def _specs(intervention: Any, mode: str, strength: float) -> tuple[list[Any], list[int], str]:
    """SteeringSpecs / DirectionSpecs for the intervention, the features it steers, and a description."""
    if isinstance(intervention, ProbeResult):
        intervention = intervention.top_features
    if isinstance(intervention, (BehaviourDirection, DirectionSpec)) or (
        isinstance(intervention, torch.Tensor) and intervention.is_floating_point()
    ) or (isinstance(intervention, np.ndarray) and np.issubdtype(intervention.dtype, np.floating)):
        spec = intervention if isinstance(intervention, DirectionSpec) else DirectionSpec(
            intervention, mode=mode, strength=strength)
        return [spec], [], f"direction {getattr(intervention, 'name', '') or ''} ({spec.mode})".replace("  ", " ")
    if isinstance(intervention, (int, np.integer)) and not isinstance(intervention, bool):
        intervention = [int(intervention)]
    if isinstance(intervention, (torch.Tensor, np.ndarray)):
        intervention = [int(f) for f in intervention.reshape(-1).tolist()]
    if isinstance(intervention, Sequence) and intervention and all(
        isinstance(s, (SteeringSpec, DirectionSpec)) for s in intervention
    ):
        feats = [s.feature for s in intervention if isinstance(s, SteeringSpec)]
        return list(intervention), feats, f"{len(intervention)} steering specs"
    if isinstance(intervention, Sequence) and intervention and all(
        isinstance(f, (int, np.integer)) and not isinstance(f, bool) for f in intervention
    ):
        feats = [int(f) for f in intervention]
        specs = [SteeringSpec(f, strength, mode=mode) for f in feats]
        return specs, feats, f"{mode} features {feats}" + ("" if mode == "ablate" else f" at {strength:g}")
    raise CausalCheckError(
        "Nothing to intervene on: pass feature indices, a ProbeResult, a BehaviourDirection, a [d_model] vector "
        "or a list of SteeringSpec / DirectionSpec."
    )


def _control_specs(specs: list[Any], control_features: list[int], d_model: int, seed: int) -> list[Any]:
    mapping = iter(control_features)
    out = []
    gen = torch.Generator().manual_seed(seed)
    for spec in specs:
        if isinstance(spec, SteeringSpec):
            out.append(replace(spec, feature=next(mapping)))
        else:
            random = torch.randn(d_model, generator=gen)
            out.append(replace(spec, direction=random / random.norm(), name="random direction"))
    return out


def _score(scorer: Callable[[Any], Any], value: Any, i: int) -> float:
    try:
        score = scorer(value)
    except GemscopeError:
        raise
    except Exception as e:
        raise CausalCheckError(f"The scorer failed on prompt {i}: {type(e).__name__}: {e}") from None
    try:
        number = float(score)
    except (TypeError, ValueError):
        raise CausalCheckError(f"The scorer returned {score!r} for prompt {i}; it must return a number.") from None
    if not math.isfinite(number):
        raise CausalCheckError(f"The scorer returned {number} for prompt {i}; it must return a finite number.")
    return number


def _effect(
    gm: GemmaModel, prompts: list[Any], specs: list[Any], sae: Any, scorer: Callable[[Any], Any], on: str,
    chat: bool, seed: int, unit: str, generation: dict[str, Any], bar: Any,
) -> InterventionEffect:
    model = stopping_at_end_of_turn(gm) if chat else gm
    base = np.zeros(len(prompts))
    steered = np.zeros(len(prompts))
    base_texts, steered_texts = [], []
    for i, prompt in enumerate(prompts):
        messages = [{"role": "user", "content": prompt}] if chat and isinstance(prompt, str) else prompt
        if on == "text":
            result = generate(model, messages, specs, sae=sae, unit=unit, **generation)
            base_texts.append(result.baseline_text)
            steered_texts.append(result.steered_text)
            base[i] = _score(scorer, result.baseline_text, i)
            steered[i] = _score(scorer, result.steered_text, i)
        else:
            probs, _, _ = next_token_probs(model, messages, specs, sae=sae, unit=unit)
            base[i] = _score(scorer, probs[0], i)
            steered[i] = _score(scorer, probs[1], i)
        bar.update()
    low, high = mean_interval(steered - base, seed=seed)
    return InterventionEffect(specs, base, steered, base_texts, steered_texts, float((steered - base).mean()),
                              low, high)


def validate(
    gm: GemmaModel,
    prompts: Any,
    intervention: Any,
    *,
    sae: Any = None,
    mode: str = "ablate",
    strength: float = 1.0,
    unit: str = "raw",
    scorer: str | Callable[[Any], Any] = "refusal",
    on: str = "text",
    control: bool = True,
    densities: Any = None,
    seed: int = 0,
    chat: bool | None = None,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> CausalCheck:
    """Intervene on ``intervention`` while the model answers ``prompts`` and measure the change in a score.

    ``prompts``: held-out prompts (strings, chat message lists, a text file or a dataset). ``intervention``:
    feature indices (with ``sae``), a :class:`ProbeResult` (its top features), a :class:`BehaviourDirection` or
    ``[d_model]`` vector, or a list of :class:`SteeringSpec` / :class:`DirectionSpec` used as given. ``mode`` and
    ``strength``: for features ``"ablate"`` / ``"add"`` / ``"clamp"`` with the strength in raw activation units;
    for a direction ``"ablate"`` (removed fraction) / ``"add"`` (residual-stream units); ``unit="typical"`` takes
    strengths as multiples of each feature's typical activation instead (:mod:`.steering.units`). ``scorer``:
    ``"refusal"`` (:func:`refusal_score` of the response) or a function of the generated text (``on="text"``)
    or of the next-token probabilities ``[vocab]`` (``on="next_token"``) returning a number. ``control``: repeat
    with density-matched random features (needs ``densities``, ``[width]`` firing rates:
    ``FeatureStats.density``) or a random direction. ``chat``: wrap strings as a user turn (default: when the
    model is ``-it``). Generation: greedy, ``max_new_tokens``, the same call as ``Scope.generate(..., unit=unit)``.

    Raises :class:`CausalCheckError` for nothing to intervene on, a scorer that fails or returns no number, or
    a control without densities. Cost: one paired generation (or forward pass) per prompt, twice with control.
    """

    items = read_prompts(prompts)
    if not items:
        raise CausalCheckError("No prompts to check on.")
    if on not in SCORED_ON:
        raise CausalCheckError(f"on={on!r}: use 'text' (a function of the response) or 'next_token'.")
    if scorer == "refusal":
        if on != "text":
            raise CausalCheckError("The refusal scorer reads generated text: use on='text'.")
        score_fn: Callable[[Any], Any] = refusal_score
        scorer_name = "refusal score"
    elif callable(scorer):
        score_fn = scorer
        scorer_name = getattr(scorer, "__name__", "scorer")
    else:
        raise CausalCheckError(f"scorer={scorer!r}: use 'refusal' or a function returning a number.")
    specs, features, description = _specs(intervention, mode, strength)
    if features and sae is None and not all(getattr(s, "sae", None) is not None for s in specs):
        raise CausalCheckError("Steering features needs their SAE: pass sae=...")
    if chat is None:
        chat = bool(gm.is_instruct)
    if chat:
        warn_if_base(gm)
    control_features: list[int] = []
    if control and features:
        if densities is None:
            raise CausalCheckError(
                "A density-matched control needs the features' densities: pass densities=stats.density "
                "(FeatureStats of this SAE), use Scope.validate, or control=False."
            )
        control_features = matched_features(features, densities, seed=seed)
    generation = {"max_new_tokens": max_new_tokens}
    bar = progress_bar(total=len(items) * (2 if control else 1), desc="causal check", disable=not progress, leave=False)
    try:
        effect = _effect(gm, items, specs, sae, score_fn, on, chat, seed, unit, generation, bar)
        control_effect = None
        if control:
            others = _control_specs(specs, control_features, gm.d_model, seed)
            control_effect = _effect(gm, items, others, sae, score_fn, on, chat, seed + 1, unit, generation, bar)
    finally:
        bar.close()
    return CausalCheck(items, scorer_name, on, description, effect, control_effect, features, control_features)
