"""Held-out evaluation: stratified seeded splits (or cross-validation folds) and AUROC with a bootstrap interval.

A detector is judged only on prompts it was not fitted or chosen on. With many prompts per class the prompts are
split once into a training and a held-out part (stratified, ``test_fraction`` held out); with fewer than
:data:`CV_BELOW` per class they are split into stratified folds and every prompt is scored by the detector fitted
on the other folds (cross-validated, "out-of-fold" scores), so each prompt is held out exactly once. The AUROC is
``sklearn.metrics.roc_auc_score`` of those held-out scores; its interval is a stratified percentile bootstrap over
the held-out prompts (Efron & Tibshirani, 1993), computed exactly from per-pair comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from gemscope_widgets.errors import ProbeError

MIN_PER_SPLIT = 2
"""Fewest prompts of each class in every training part and every held-out part: below it a mean difference or an
AUROC is not defined (one example) or pure noise. A probe therefore needs at least ``2 * MIN_PER_SPLIT`` prompts
per class."""
CV_BELOW = 32
"""Below this many prompts per class the held-out scores come from cross-validation rather than one split."""
MAX_FOLDS = 5
N_BOOTSTRAP = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Fold:
    """One train / held-out division: ``train`` and ``test`` are index arrays into the pooled prompts."""

    train: np.ndarray
    test: np.ndarray


def check_classes(labels: np.ndarray, what: str) -> None:
    """ProbeError unless ``labels`` (0/1) holds at least :data:`MIN_PER_SPLIT` of each class."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=2)
    if counts.min() == 0:
        cls = "positive" if counts[1] == 0 else "negative"
        raise ProbeError(f"The {what} part has no {cls} prompt: both classes are needed in every part.")
    if counts.min() < MIN_PER_SPLIT:
        raise ProbeError(
            f"The {what} part has only {int(counts.min())} prompt(s) of one class; every part needs at least "
            f"{MIN_PER_SPLIT} of each. Use more prompts (at least {2 * MIN_PER_SPLIT} per set)."
        )


def folds(labels: np.ndarray, *, seed: int, test_fraction: float = 0.25) -> list[Fold]:
    """Stratified, seeded train / held-out parts of prompts labelled ``labels`` (``[N]`` of 0 and 1).

    At least :data:`CV_BELOW` prompts per class: one split with ``test_fraction`` held out
    (``sklearn.model_selection.train_test_split``, stratified). Fewer: ``k = min(MAX_FOLDS, n_min // MIN_PER_SPLIT)``
    stratified folds (``StratifiedKFold``, shuffled), each held out once. The same ``seed`` gives the same parts.
    Raises :class:`ProbeError` when a part would hold fewer than :data:`MIN_PER_SPLIT` prompts of a class.
    """
    y = np.asarray(labels, dtype=np.int64)
    n_min = int(np.bincount(y, minlength=2).min())
    if n_min < 2 * MIN_PER_SPLIT:
        raise ProbeError(
            f"{n_min} prompt(s) in the smaller set is too few to hold any out: use at least {2 * MIN_PER_SPLIT} per "
            f"set (each training and held-out part needs {MIN_PER_SPLIT} of each class; 32 or more per set gives a "
            "single held-out split)."
        )
    if not 0 < test_fraction < 1:
        raise ProbeError(f"test_fraction={test_fraction!r} must be between 0 and 1.")
    index = np.arange(len(y))
    if n_min >= CV_BELOW:
        train, test = train_test_split(index, test_size=test_fraction, stratify=y, random_state=seed)
        parts = [Fold(np.sort(train), np.sort(test))]
    else:
        k = min(MAX_FOLDS, n_min // MIN_PER_SPLIT)
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = [Fold(np.sort(tr), np.sort(te)) for tr, te in splitter.split(index, y)]
    for part in parts:
        check_classes(y[part.train], "training")
        check_classes(y[part.test], "held-out")
    return parts


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``); 0.5 is chance, 1 perfect, ties count half."""
    return float(roc_auc_score(np.asarray(labels), np.asarray(scores, dtype=np.float64)))


def auroc_interval(
    labels: np.ndarray, scores: np.ndarray, *, seed: int, n_bootstrap: int = N_BOOTSTRAP, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of the AUROC, resampling positives and negatives separately.

    Each resample's AUROC is ``cᵖᵀ C cⁿ / (n_p n_n)`` with ``C[i, j] = [s_i > s_j] + ½[s_i = s_j]`` over held-out
    positives ``i`` and negatives ``j`` and ``c`` the multinomial resampling counts: exactly the Mann–Whitney
    AUROC of the resampled scores, without sorting each resample.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    comparisons = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    rng = np.random.default_rng(seed)
    cp = rng.multinomial(len(pos), np.full(len(pos), 1 / len(pos)), size=n_bootstrap).astype(np.float64)
    cn = rng.multinomial(len(neg), np.full(len(neg), 1 / len(neg)), size=n_bootstrap).astype(np.float64)
    values = np.einsum("bi,ij,bj->b", cp, comparisons, cn) / (len(pos) * len(neg))
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def mean_interval(
    values: np.ndarray, *, seed: int, n_bootstrap: int = N_BOOTSTRAP, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (``[N]``, e.g. paired differences), seeded."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(v), np.full(len(v), 1 / len(v)), size=n_bootstrap).astype(np.float64)
    means = counts @ v / len(v)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
