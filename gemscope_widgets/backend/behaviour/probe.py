"""Probes with honest baselines: does an SAE feature track a behaviour better than simple probes, on held-out prompts?

Kantamneni, Engels, Rajamanoharan, Tegmark, Nanda (2025), "Are Sparse Autoencoders Useful? A Case Study in Sparse
Probing": an SAE probe (the ``k`` latents whose class means differ most on the training prompts, then a regularised
logistic regression on them) is compared with a dense logistic probe on the same activations and with the
difference-of-means direction, by held-out AUROC, also with few training examples; SAE probes do not consistently
win, so the baselines are always shown. Each of the SAE probe's latents is also scored alone as a one-number
detector (its activation, signed by its training mean difference).

Every detector is fitted and every latent chosen on training prompts only; its AUROC is computed on the held-out
prompts (one stratified split, or cross-validation for small sets: :mod:`~gemscope_widgets.backend.behaviour.heldout`).
Logistic regression and AUROC are scikit-learn's (``LogisticRegression`` after ``StandardScaler``, L2,
``roc_auc_score``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from gemscope_widgets.backend.behaviour.batched import sae_inputs_at
from gemscope_widgets.backend.behaviour.direction import BehaviourDirection
from gemscope_widgets.backend.behaviour.heldout import (
    MIN_PER_SPLIT,
    Fold,
    auroc,
    auroc_interval,
    folds,
)
from gemscope_widgets.backend.behaviour.prompt_sets import read_prompts
from gemscope_widgets.backend.behaviour.read_position import behaviour_prompt, check_position, read_positions
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.views import view_factory
from gemscope_widgets.errors import ProbeError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

SAE_PROBE = "SAE probe"
DENSE_PROBE = "dense probe"
DIFF_MEANS = "difference of means"
PROBES = (SAE_PROBE, DENSE_PROBE, DIFF_MEANS)
ENCODE_PROMPTS = 64
"""Prompts whose read tokens are SAE-encoded in one call (bounds the ``[tokens, width]`` block held at once)."""


@dataclass(frozen=True)
class DetectorScore:
    """One detector's held-out AUROC with its bootstrap interval ``[low, high]`` over ``n_held_out`` prompts."""

    name: str
    auroc: float
    low: float
    high: float
    n_held_out: int


@dataclass(frozen=True)
class ProbeFeature:
    """An SAE latent chosen for the SAE probe, scored alone on the held-out prompts of the parts that chose it.

    ``mean_difference``: positive-minus-negative mean activation on the training prompts (activation units,
    averaged over the parts that chose it); ``chosen_in``: how many training parts chose it among their top ``k``;
    ``auroc``/``low``/``high``: held-out AUROC of its activation (signed by its mean difference) with the interval;
    ``label`` and ``density`` (fraction of corpus tokens it fires on) when the caller had them.
    """

    feature: int
    mean_difference: float
    chosen_in: int
    auroc: float
    low: float
    high: float
    n_held_out: int
    label: str | None = None
    density: float | None = None


@dataclass
class ProbeResult:
    """Held-out comparison of an SAE probe against a dense probe, the difference of means and single latents.

    ``detectors``: the three probes' :class:`DetectorScore`; ``features``: the latents the SAE probe used
    (:class:`ProbeFeature`, most often chosen first); ``curve_sizes``: ``[S]`` training prompts per class and
    ``curve``: ``{probe name: [S] held-out AUROC}`` (the learning curve); ``labels``: ``[N]`` 1 for positive;
    ``scores``: ``{detector: [N]}`` each prompt's held-out score (out-of-fold with cross-validation; NaN for the
    training prompts of a single split); ``held_out``: the indices those AUROCs are computed on;
    ``folds``: the train / held-out parts; ``direction``: the difference of means fitted on the training part of
    the first split, a :class:`BehaviourDirection` for steering and :func:`validate`; ``fold_features``: per part,
    the ``k`` latents its training prompts chose (largest absolute mean difference first) and
    ``fold_differences`` their mean differences; ``feature_scores``: ``{latent: (held-out indices, signed
    activations)}``, what each chosen latent's AUROC was computed from.
    """

    sae_name: str
    layer: int
    position: str | int
    k: int
    seed: int
    prompts: list[Any]
    labels: np.ndarray
    folds: list[Fold]
    detectors: list[DetectorScore]
    features: list[ProbeFeature]
    curve_sizes: np.ndarray
    curve: dict[str, np.ndarray]
    scores: dict[str, np.ndarray] = field(repr=False)
    direction: BehaviourDirection | None = field(default=None, repr=False)
    d_model: int = 0
    fold_features: list[list[int]] = field(default_factory=list, repr=False)
    fold_differences: list[list[float]] = field(default_factory=list, repr=False)
    feature_scores: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def scheme(self) -> str:
        """``"one split"`` or ``"5-fold cross-validation"``."""
        return "one split" if len(self.folds) == 1 else f"{len(self.folds)}-fold cross-validation"

    @property
    def held_out(self) -> np.ndarray:
        """``[H]`` indices of the prompts the detectors are scored on (all of them with cross-validation)."""
        return np.unique(np.concatenate([part.test for part in self.folds]))

    @property
    def top_features(self) -> list[int]:
        """The SAE probe's latents, most often chosen first (what :func:`validate` steers by default)."""
        return [f.feature for f in self.features]

    def detector(self, name: str) -> DetectorScore:
        """The :class:`DetectorScore` called ``name`` (one of :data:`PROBES`)."""
        for d in self.detectors:
            if d.name == name:
                return d
        raise ProbeError(f"No detector {name!r}; there are {[d.name for d in self.detectors]}.")

    def roc(self, detector: str | int) -> tuple[np.ndarray, np.ndarray]:
        """``(false positive rate, true positive rate)`` of a detector's held-out ROC curve
        (``sklearn.metrics.roc_curve``, ``drop_intermediate=True``): ``detector`` is a name of :data:`PROBES`
        or a latent of :attr:`features` (its signed activation on the prompts held out from the parts that chose
        it). Both ``[P]``, from (0, 0) to (1, 1); the trapezoid area under them is the detector's AUROC."""
        if isinstance(detector, str):
            self.detector(detector)  # ProbeError for an unknown name
            held = self.held_out
            labels, scores = self.labels[held], self.scores[detector][held]
        elif isinstance(detector, (int, np.integer)) and int(detector) in self.feature_scores:
            test, scores = self.feature_scores[int(detector)]
            labels = self.labels[test]
        else:
            raise ProbeError(f"No ROC curve for {detector!r}: name one of {list(PROBES)} or a latent of "
                             f"the SAE probe {self.top_features}.")
        fpr, tpr, _ = roc_curve(labels, scores)
        return np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)

    def widget(self, **kwargs: Any) -> Any:
        """This result drawn in a notebook cell: ROC curves, AUROCs, the SAE probe's latents and the learning
        curve. Keywords: ``scope`` (the Scope whose SAE the probe used: a click on a latent opens its feature pane,
        labels and densities follow its statistics), ``sae`` (that SAE's key), ``steer`` (a steering widget the
        latents' "steer" buttons add to). The view belongs to the widget layer, which registers it
        (:func:`~gemscope_widgets.backend.views.register_view`)."""
        return view_factory("ProbeResult")(self, **kwargs)

    def held_out_prompts(self) -> tuple[list[Any], list[Any]]:
        """``(positive, negative)`` prompts held out by the first split (with cross-validation: its first fold)."""
        test = self.folds[0].test
        pos = [self.prompts[i] for i in test if self.labels[i] == 1]
        neg = [self.prompts[i] for i in test if self.labels[i] == 0]
        return pos, neg

    def summary(self) -> str:
        """A plain-text table: the detectors, the latents with labels and densities, and the learning curve."""
        n_pos = int(self.labels.sum())
        lines = [
            f"Probe on {self.sae_name} (layer {self.layer}, position {self.position!r}): {n_pos} positive + "
            f"{len(self.labels) - n_pos} negative prompts, {self.scheme}, seed {self.seed}",
            "",
            f"{'detector':<34}{'held-out AUROC':>15}  95% interval",
        ]
        names = {SAE_PROBE: f"SAE probe (top {self.k} latents)", DENSE_PROBE: f"dense probe ({self.d_model} dims)"}
        for d in self.detectors:
            lines.append(f"{names.get(d.name, d.name):<34}{d.auroc:>15.3f}  [{d.low:.3f}, {d.high:.3f}]")
        if self.features:
            best = max(self.features, key=lambda f: f.auroc)
            lines.append(f"{'best single latent #' + str(best.feature):<34}{best.auroc:>15.3f}  "
                         f"[{best.low:.3f}, {best.high:.3f}]")
            lines += ["", f"{'latent':>8}{'AUROC':>8}  {'interval':<15}{'Δmean':>9}{'density':>10}{'chosen':>8}  label"]
            for f in self.features:
                density = "" if f.density is None else f"{f.density:.2e}"
                lines.append(
                    f"{f.feature:>8}{f.auroc:>8.3f}  [{f.low:.2f}, {f.high:.2f}]   {f.mean_difference:>9.3g}"
                    f"{density:>10}{f.chosen_in:>5}/{len(self.folds)}  {f.label or ''}"
                )
        if len(self.curve_sizes):
            lines += ["", "learning curve: training prompts per class -> held-out AUROC",
                      f"{'':<22}" + "".join(f"{int(s):>7}" for s in self.curve_sizes)]
            for name, values in self.curve.items():
                lines.append(f"{name:<22}" + "".join(f"{v:>7.3f}" for v in values))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def probe_activations(
    gm: GemmaModel, sae: Any, prompts: Sequence[Any], *, position: str | int, chat: bool, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents [N, width], inputs [N, d_in])`` float32 on CPU: each prompt's SAE activations and SAE input
    (for a ``resid_post`` SAE, the residual stream), averaged over its ``position`` tokens.

    Prompts run in padded batches (:func:`~.batched.sae_inputs_at`), stopped after the SAE's layer. ``position`` as in
    :func:`~gemscope_widgets.backend.behaviour.direction.behaviour_direction`.
    """

    if len(sae.config.hook_points_in) != 1:
        raise ProbeError(f"{sae.config.name} reads several layers; a probe needs an SAE with one input site.")
    tokenized = [behaviour_prompt(gm, prompt, chat) for prompt in prompts]
    where = [read_positions(gm, t, position, ProbeError) for t in tokenized]
    bar = progress_bar(total=len(prompts), desc="probe activations", disable=not progress, leave=False)
    try:
        xs = sae_inputs_at(gm, sae, tokenized, where, step=bar.update)
    finally:
        bar.close()
    latents = torch.empty(len(prompts), int(sae.width), dtype=torch.float32)
    inputs = torch.empty(len(prompts), int(sae.config.d_in), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, len(xs), ENCODE_PROMPTS):  # one encode per group: per-call overhead, not FLOPs, dominates
            group = xs[start : start + ENCODE_PROMPTS]
            rows = torch.cat(group)
            for i, (acts, x) in enumerate(zip(sae.encode(rows).float().split([len(x) for x in group]), group), start):
                latents[i] = acts.mean(dim=0).cpu()
                inputs[i] = x.float().mean(dim=0).cpu()
    return latents, inputs


def _logistic(C: float, seed: int) -> Any:  # noqa: N803 (scikit-learn's name)
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))


def _mean_difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.asarray(x[y == 1].mean(axis=0) - x[y == 0].mean(axis=0))


def top_latents(latents: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` latents with the largest absolute class-mean difference (ties: lower index first), and that
    difference for every latent ``[width]`` (positive minus negative)."""
    diff = _mean_difference(latents, y)
    return np.argsort(-np.abs(diff), kind="stable")[:k], diff


def _probe_scores(
    latents: np.ndarray, dense: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, k: int, C: float,  # noqa: N803
    seed: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Held-out scores of the three probes fitted on ``train``; the chosen latents and their mean differences.

    BLAS runs on one thread here: the regressions' products are a few hundred rows by ``d_model``, too small to
    share, and handing them between threads (beside torch's own pool) made the fits ~7x slower on two cores with
    bit-identical results."""
    with threadpool_limits(limits=1, user_api="blas"):
        top, diff = top_latents(latents[train], y[train], k)
        sae_fit = _logistic(C, seed).fit(latents[train][:, top], y[train])
        dense_fit = _logistic(C, seed).fit(dense[train], y[train])
        unit = _mean_difference(dense[train], y[train])
        unit = unit / max(float(np.linalg.norm(unit)), 1e-12)
        scores = {
            SAE_PROBE: sae_fit.decision_function(latents[test][:, top]),
            DENSE_PROBE: dense_fit.decision_function(dense[test]),
            DIFF_MEANS: dense[test] @ unit,
        }
    return scores, top, diff[top]


def _curve_sizes(n_train_min: int, sizes: Sequence[int] | None) -> np.ndarray:
    if sizes is None:
        grid = [s for s in (2, 4, 8, 16, 32, 64, 128, 256) if s < n_train_min]
        return np.asarray([*grid, n_train_min], dtype=np.int64)
    chosen = sorted({int(s) for s in sizes})
    if not chosen or chosen[0] < MIN_PER_SPLIT or chosen[-1] > n_train_min:
        raise ProbeError(
            f"curve_sizes must lie between {MIN_PER_SPLIT} and {n_train_min} (the training prompts per class of "
            f"the smallest training part), got {list(sizes)}."
        )
    return np.asarray(chosen, dtype=np.int64)


def _subsample(train: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    parts = [rng.choice(train[y[train] == c], size=size, replace=False) for c in (0, 1)]
    return np.sort(np.concatenate(parts))


def _read_labels(labels: Any, features: Sequence[int]) -> dict[int, str]:
    if labels is None or not features:
        return {}
    if isinstance(labels, Mapping):
        return {f: str(labels[f]) for f in features if f in labels}
    if hasattr(labels, "labels"):
        return {int(f): str(t) for f, t in labels.labels(features).items()}
    if callable(labels):
        return {f: str(labels(f)) for f in features}
    raise ProbeError("labels= must be {feature: text}, a FeatureLabels (scope.labels()) or a function of a feature.")


def probe(
    gm: GemmaModel,
    sae: Any,
    positive: Any,
    negative: Any,
    *,
    position: str | int = "last_prompt_token",
    k: int = 8,
    seed: int = 0,
    chat: bool | None = None,
    C: float = 1.0,  # noqa: N803 (scikit-learn's name)
    test_fraction: float = 0.25,
    curve_sizes: Sequence[int] | None = None,
    labels: Any = None,
    densities: Any = None,
    label: str = "behaviour",
    progress: bool = True,
) -> ProbeResult:
    """Compare an SAE-latent probe with a dense probe, the difference of means and single latents on held-out prompts.

    ``positive``/``negative``: prompts (lists of strings or chat message lists, a text file, a ``datasets``
    dataset), equal in number, at least ``2 * MIN_PER_SPLIT`` (4) each. ``position``: where each prompt's
    activations are read (``"last_prompt_token"``, ``"post_instruction"``, ``"mean"`` or a token index, as
    :func:`behaviour_direction`). ``k``: latents in the SAE probe. ``seed``: the split, the learning-curve
    subsamples and the bootstrap. ``chat``: wrap strings as a user turn (default: when the model is ``-it``).
    ``C``: inverse L2 strength of both logistic regressions (on standardised inputs). ``curve_sizes``: training
    prompts per class for the learning curve (default 2, 4, 8, … up to all). ``labels``: ``{feature: text}``,
    a :class:`FeatureLabels` or a function; ``densities``: ``[width]`` firing rates (``FeatureStats.density``).

    Cost: one forward pass per prompt (up to the SAE's layer), then scikit-learn fits (small). Returns a
    :class:`ProbeResult` (``print(result)`` shows the table). Raises :class:`ProbeError` for unequal or tiny sets,
    a single class in a part, a bad position or ``k``. Method: Kantamneni et al. (2025).
    """
    pos, neg = read_prompts(positive), read_prompts(negative)
    if len(pos) != len(neg):
        raise ProbeError(
            f"The sets have {len(pos)} positive and {len(neg)} negative prompts: use sets of equal size "
            "(trim the longer one)."
        )
    check_position(position, ProbeError)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= int(sae.width):
        raise ProbeError(f"k={k!r} must be an integer between 1 and the SAE's width ({int(sae.width)}).")
    if not (isinstance(C, (int, float)) and C > 0):
        raise ProbeError(f"C={C!r} must be a positive number (the inverse regularisation strength).")
    y = np.asarray([1] * len(pos) + [0] * len(neg), dtype=np.int64)
    parts = folds(y, seed=seed, test_fraction=test_fraction)
    if chat is None:
        chat = bool(gm.is_instruct)
    prompts = [*pos, *neg]
    latents_t, dense_t = probe_activations(gm, sae, prompts, position=position, chat=chat, progress=progress)
    latents, dense = latents_t.numpy().astype(np.float64), dense_t.numpy().astype(np.float64)

    scores = {name: np.full(len(y), np.nan) for name in PROBES}
    held = np.unique(np.concatenate([part.test for part in parts]))  # every prompt with cross-validation
    chosen: dict[int, list[tuple[np.ndarray, float]]] = {}  # feature -> [(test indices, mean difference)]
    fold_features, fold_differences = [], []
    for part in parts:
        fold_scores, top, diffs = _probe_scores(latents, dense, y, part.train, part.test, k, C, seed)
        for name, values in fold_scores.items():
            scores[name][part.test] = values
        for f, d in zip(top.tolist(), diffs.tolist()):
            chosen.setdefault(f, []).append((part.test, d))
        fold_features.append([int(f) for f in top.tolist()])
        fold_differences.append([float(d) for d in diffs.tolist()])

    detectors = []
    for i, name in enumerate(PROBES):
        low, high = auroc_interval(y[held], scores[name][held], seed=seed + i)
        detectors.append(DetectorScore(name, auroc(y[held], scores[name][held]), low, high, len(held)))

    order = sorted(chosen, key=lambda f: (-len(chosen[f]), -abs(np.mean([d for _, d in chosen[f]])), f))
    names = _read_labels(labels, order)
    density = None if densities is None else np.asarray(torch.as_tensor(densities).float().cpu())
    features = []
    feature_scores = {}
    for f in order:
        test = np.concatenate([t for t, _ in chosen[f]])
        signed = np.concatenate([np.sign(d) * latents[t, f] for t, d in chosen[f]])
        feature_scores[int(f)] = (test, signed)
        low, high = auroc_interval(y[test], signed, seed=seed + 3)
        features.append(ProbeFeature(
            feature=int(f), mean_difference=float(np.mean([d for _, d in chosen[f]])), chosen_in=len(chosen[f]),
            auroc=auroc(y[test], signed), low=low, high=high, n_held_out=len(test), label=names.get(f),
            density=None if density is None else float(density[f]),
        ))

    n_train_min = min(int(min((y[p.train] == c).sum() for c in (0, 1))) for p in parts)
    sizes = _curve_sizes(n_train_min, curve_sizes)
    rng = np.random.default_rng(seed)
    curve = {name: np.zeros(len(sizes)) for name in PROBES}
    for j, size in enumerate(sizes.tolist()):
        pooled = {name: np.zeros(len(y)) for name in PROBES}
        for part in parts:
            train = _subsample(part.train, y, size, rng)
            fold_scores, _, _ = _probe_scores(latents, dense, y, train, part.test, k, C, seed)
            for name, values in fold_scores.items():
                pooled[name][part.test] = values
        for name in PROBES:
            curve[name][j] = auroc(y[held], pooled[name][held])

    first = parts[0].train
    mean_difference = torch.from_numpy(_mean_difference(dense[first], y[first])).float()
    norm = float(mean_difference.norm())
    direction = None
    if norm > 0 and sae.config.site == "resid_post":
        direction = BehaviourDirection(
            direction=mean_difference / norm, layer=int(sae.config.layer), scores=np.full(gm.n_layers, np.nan),
            mean_difference=mean_difference, position=position, chat=chat, model_name=gm.name,
            n_positive=int((y[first] == 1).sum()), n_negative=int((y[first] == 0).sum()), label=label,
        )
    return ProbeResult(
        sae_name=sae.config.name, layer=int(sae.config.layer), position=position, k=k, seed=seed, prompts=prompts,
        labels=y, folds=parts, detectors=detectors, features=features, curve_sizes=sizes, curve=curve,
        scores=scores, direction=direction, d_model=int(dense.shape[1]), fold_features=fold_features,
        fold_differences=fold_differences, feature_scores=feature_scores,
    )
