"""Find features by what they mean: by the words of their labels, or by the texts they fire on.

**By words** (:func:`search_labels`): the query's words (``\\w+`` runs, lower-cased) against each feature's shown
label (its explanation, else its automatic label) and, when different, its automatic label. A feature's match is
the fraction of the query's words found among the label's words, plus half the fraction found only inside a label
word (``"error"`` in ``"KeyError"``); ties are broken by the label's simulation score (:mod:`.label_scores`) when
it is known, then by feature index. Each hit names the label's source ("user", "neuronpedia", "auto") and its
scores.

**By examples** (:func:`search_examples`): each text runs through the model and the SAE once
(:func:`~gemscope_widgets.backend.analysis.features.prompt_features`, ``<bos>`` and padding left out); a feature's
score is its mean activation over all tokens of the ``examples`` minus its mean over all tokens of ``against``
(pooled over the texts, every token weighing the same). Without ``against`` the baseline is ``baseline`` (e.g. the
features' mean activation on held-out text, :meth:`~.label_scores.HeldOutTokens.mean_activation`), else zero.
Features are ranked by that difference, largest first (ties: lower index).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.errors import SearchError

if TYPE_CHECKING:
    from gemscope_widgets.backend.analysis.labels import FeatureLabels
    from gemscope_widgets.backend.gemma.model import GemmaModel

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class SearchHit:
    """One found feature: ``score`` (word match in [0, 1], or the activation difference in activation units),
    ``label`` and its ``source`` ("user", "neuronpedia", "auto"), ``simulation`` (the label's simulation r, None
    when not scored), ``imported`` (scores that came with an imported explanation), and for a search by examples
    ``mean_examples`` / ``mean_against`` (mean activations; None for a search by words)."""

    feature: int
    score: float
    label: str
    source: str
    simulation: float | None = None
    imported: dict[str, float] = field(default_factory=dict)
    mean_examples: float | None = None
    mean_against: float | None = None


def query_words(query: Any) -> list[str]:
    """The lower-cased ``\\w+`` words of ``query``; :class:`SearchError` when it has none."""
    if not isinstance(query, str):
        raise SearchError(f"Search by words takes a string, not a {type(query).__name__}.")
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(query)))
    if not words:
        raise SearchError("The search query is empty: give a word, e.g. scope.search('error').")
    return words


def word_match(words: Sequence[str], text: str) -> float:
    """The match of query ``words`` against ``text`` (module docstring): whole words count 1, parts of a word ½,
    divided by the number of query words."""
    have = {w.lower() for w in _WORD.findall(text)}
    total = 0.0
    for w in words:
        if w in have:
            total += 1.0
        elif any(w in h for h in have):
            total += 0.5
    return total / len(words)


def search_labels(labels: FeatureLabels, query: str, *, k: int = 20, scores: bool = True) -> list[SearchHit]:
    """The ``k`` features whose labels best match ``query`` (module docstring); a feature with no matching word
    is left out. ``scores``: attach each hit's label score (from the held-out pass when it exists; never runs it).
    :class:`SearchError` for an empty query."""
    words = query_words(query)
    width = int(labels.sae.width)
    features = list(range(width))
    shown = labels.labels(features)
    autos = labels.autos(features)
    matched = []
    for f in features:
        m = max(word_match(words, shown[f]), word_match(words, autos[f]) if autos[f] != shown[f] else 0.0)
        if m > 0:
            matched.append((f, m))
    found = labels.scores([f for f, _ in matched], compute=False, progress=False) if scores and matched else {}
    hits = []
    for f, m in matched:
        s = found.get(f)
        source = s.source if s is not None else ("auto" if shown[f] == autos[f] else "explanation")
        hits.append(SearchHit(f, m, shown[f], source, s.simulation if s is not None else None,
                              dict(s.imported) if s is not None else {}))
    hits.sort(key=lambda h: (-h.score, h.simulation is None, -(h.simulation or 0.0), h.feature))
    return hits[: max(0, int(k))]


def mean_activations(gm: GemmaModel, sae: Any, texts: Sequence[str]) -> tuple[torch.Tensor, int]:
    """Every feature's mean activation over all scored tokens of ``texts`` (``[W]`` float64) and the token count
    (:func:`prompt_features` per text). :class:`SearchError` when ``texts`` is not a non-empty list of strings
    with at least one scored token."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or not texts:
        raise SearchError("Search by examples needs a non-empty list of texts, e.g. examples=['def f(x):'].")
    bad = next((t for t in texts if not isinstance(t, str) or not t.strip()), None)
    if bad is not None:
        raise SearchError(f"Every example must be a non-empty string, got {str(bad)[:40]!r}.")
    width = int(sae.width)
    total = torch.zeros(width, dtype=torch.float64)
    n = 0
    for text in texts:
        acts = prompt_features(gm, [sae], text)[0]
        total.index_add_(0, torch.from_numpy(acts.indices.astype("int64")),
                         torch.from_numpy(acts.values).double())
        n += int((~torch.as_tensor(acts.prompt.masked)).sum())
    if n == 0:
        raise SearchError("The examples hold no token to score (only special tokens).")
    return total / n, n


def search_examples(gm: GemmaModel, sae: Any, examples: Sequence[str], against: Sequence[str] | None = None, *,
                    baseline: torch.Tensor | None = None, k: int = 20, labels: FeatureLabels | None = None
                    ) -> list[SearchHit]:
    """The ``k`` features that fire most specifically on ``examples`` against ``against`` (or ``baseline``
    ``[W]``, or zero): mean activation on the examples minus mean on the baseline (module docstring).
    ``labels`` names the hits (and adds their label scores when the held-out pass exists).
    :class:`SearchError` for empty or non-text examples."""
    on, _ = mean_activations(gm, sae, examples)
    if against is not None:
        off, _ = mean_activations(gm, sae, against)
    elif baseline is not None:
        off = torch.as_tensor(baseline, dtype=torch.float64).reshape(-1)
        if off.numel() != on.numel():
            raise SearchError(f"The baseline has {off.numel()} values but the SAE has {on.numel()} features.")
    else:
        off = torch.zeros_like(on)
    diff = on - off
    order = torch.argsort(-diff, stable=True)[: max(0, int(k))].tolist()
    names = labels.labels(order) if labels is not None else {}
    found = labels.scores(order, compute=False, progress=False) if labels is not None and order else {}
    hits = []
    for f in order:
        s = found.get(f)
        hits.append(SearchHit(f, float(diff[f]), names.get(f, ""), s.source if s is not None else "",
                              s.simulation if s is not None else None, dict(s.imported) if s is not None else {},
                              float(on[f]), float(off[f])))
    return hits


__all__ = ["SearchHit", "mean_activations", "query_words", "search_examples", "search_labels", "word_match"]
