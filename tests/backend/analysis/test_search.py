"""Feature search: by the words of labels and explanations, and by the texts features fire on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemscope_widgets import Scope
from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.analysis.label_scores import HeldOutTokens, label_texts
from gemscope_widgets.backend.analysis.labels import FeatureLabels
from gemscope_widgets.backend.analysis.search import search_examples, search_labels, word_match
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from gemscope_widgets.errors import SearchError
from gemscope_widgets.testing.calibrated import calibrated_sae

WIDTH = 48
EXAMPLES = ["def f(x, y=2):\n    return x + y", "class A(B):\n    pass"]
AGAINST = ["The cat sat on the mat.", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def sae(tiny_model, tmp_path_factory):
    return calibrated_sae(tiny_model, layer=1, width=WIDTH, l0=8, folder=tmp_path_factory.mktemp("sae"),
                          max_tokens=512, window=64,
                          text="\n\n".join(label_texts(40))[:3000], seed=3)


def _direct_means(gm, sae, texts):
    """Mean activation per feature over every unmasked token of ``texts``, from dense prompt_features rows."""
    rows = []
    for text in texts:
        acts = prompt_features(gm, [sae], text)[0]
        rows.append(acts.dense()[~acts.prompt.masked])
    return torch.cat(rows).double().mean(0)


def test_search_by_examples_equals_a_direct_ranking(tiny_model, sae):
    hits = search_examples(tiny_model, sae, EXAMPLES, AGAINST, k=WIDTH)
    diff = (_direct_means(tiny_model, sae, EXAMPLES) - _direct_means(tiny_model, sae, AGAINST)).numpy()
    expected = sorted(range(WIDTH), key=lambda f: (-diff[f], f))
    assert [h.feature for h in hits] == expected
    np.testing.assert_allclose([h.score for h in hits], diff[expected], rtol=1e-5, atol=1e-6)
    assert hits[0].mean_examples - hits[0].mean_against == pytest.approx(hits[0].score)
    # a baseline vector instead of texts
    base = torch.linspace(0, 1, WIDTH)
    top = search_examples(tiny_model, sae, EXAMPLES, baseline=base, k=3)
    on = _direct_means(tiny_model, sae, EXAMPLES) - base.double()
    assert [h.feature for h in top] == torch.argsort(-on, stable=True)[:3].tolist()


def test_search_by_words_finds_a_feature_by_its_explanation(tiny_model, sae):
    stats = FeatureStats.from_parts(sae_name=sae.config.name, width=WIDTH, source="neuronpedia a/b",
                                    explanations={5: "Python keyword arguments in calls", 9: "keywords"},
                                    explanation_scores={5: {"eleuther_fuzz (m)": 0.7}})
    ids = torch.tensor([1, 2, 3])
    held = HeldOutTokens(ids, torch.tensor([2, 3, -1]), torch.zeros(0, dtype=torch.long),
                         torch.zeros(0, dtype=torch.long), torch.zeros(0), width=WIDTH)
    labels = FeatureLabels(tiny_model, sae, stats, held=held)
    hits = search_labels(labels, "Keyword")
    assert hits[0].feature == 5 and hits[0].score == 1.0 and hits[0].source == "neuronpedia"
    assert hits[0].imported == {"eleuther_fuzz (m)": 0.7} and hits[0].label == "Python keyword arguments in calls"
    assert 9 in [h.feature for h in hits] and next(h for h in hits if h.feature == 9).score == 0.5  # inside a word
    assert [h.feature for h in search_labels(labels, "calls python", k=1)] == [5]
    assert word_match(["x", "y"], "x z") == 0.5
    for bad in ("", "  ...  ", None):
        with pytest.raises(SearchError, match="empty|string"):
            search_labels(labels, bad)


def test_scope_search(tiny_model, sae):
    scope = Scope(tiny_model, sae, check=False)
    hits = scope.search(examples=EXAMPLES, against=AGAINST, k=4)
    assert [h.feature for h in hits] == [h.feature for h in search_examples(tiny_model, sae, EXAMPLES, AGAINST,
                                                                           k=4)]
    assert all(h.label == scope.labels().labels([h.feature])[h.feature] for h in hits)
    with pytest.raises(SearchError, match="empty"):
        scope.search("")
    with pytest.raises(SearchError, match="non-empty"):
        scope.search(examples=[])
    with pytest.raises(SearchError, match="non-empty string"):
        scope.search(examples=["ok", 3])
