"""Label scores (lookup-table simulation, precision, recall on held-out text) against a direct computation, and
the imported explanation scores beside them."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from gemscope_widgets.backend.analysis.card import FeatureCards
from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.analysis.label_scores import (
    MIN_ACTIVE,
    MIN_FIT,
    HeldOutTokens,
    explanation_words,
    held_out_tokens,
    label_texts,
)
from gemscope_widgets.backend.analysis.label_tokens import token_set
from gemscope_widgets.backend.analysis.labels import FeatureLabels
from gemscope_widgets.backend.stats.corpus import tokenize_docs
from gemscope_widgets.backend.stats.feature_stats import Example, FeatureStats
from gemscope_widgets.backend.stats.importers.neuronpedia import load_neuronpedia_export
from gemscope_widgets.errors import LabelScoreError
from gemscope_widgets.testing.calibrated import calibrated_sae

WIDTH = 64


@pytest.fixture(scope="module")
def sae(tiny_model, tmp_path_factory):
    return calibrated_sae(tiny_model, layer=1, width=WIDTH, l0=8, folder=tmp_path_factory.mktemp("sae"),
                          max_tokens=512, window=64,
                          text="\n\n".join(label_texts(40))[:3000])


@pytest.fixture(scope="module")
def texts():
    return label_texts(24)


@pytest.fixture(scope="module")
def held(tiny_model, sae, texts):
    return held_out_tokens(tiny_model, sae, texts, cache=False, progress=False)


def _direct(p: np.ndarray, a: np.ndarray) -> tuple[float, float | None, float]:
    """The documented formulas, computed directly: Pearson r (numpy), precision, recall."""
    r = 0.0 if p.std() == 0 or a.std() == 0 else float(np.corrcoef(p, a)[0, 1])
    hit = float(((p > 0) & (a > 0)).sum())
    return r, (hit / p.sum() if p.sum() else None), hit / float((a > 0).sum())


def test_held_out_pass_equals_prompt_features(tiny_model, sae, texts, held):
    """The batched, padded pass holds exactly the activations of each text run alone (the tokens in any order)."""
    ids, sums, counts = [], torch.zeros(WIDTH, dtype=torch.float64), torch.zeros(WIDTH)
    for doc in tokenize_docs(tiny_model, texts, 128):
        acts = prompt_features(tiny_model, [sae], tiny_model.prompt(doc))[0]
        keep = ~acts.prompt.masked
        ids.append(acts.prompt.input_ids.reshape(-1)[keep])
        sums.index_add_(0, torch.from_numpy(acts.indices.astype(np.int64)), torch.from_numpy(acts.values).double())
        counts += torch.bincount(torch.from_numpy(acts.indices.astype(np.int64)), minlength=WIDTH).float()
    assert sorted(torch.cat(ids).tolist()) == sorted(held.ids.tolist())
    got = torch.zeros(WIDTH, dtype=torch.float64).index_add_(0, held.feature, held.value.double())
    torch.testing.assert_close(got, sums, rtol=1e-4, atol=1e-3)
    assert (torch.bincount(held.feature, minlength=WIDTH).float() - counts).abs().max() <= 2  # threshold ties
    torch.testing.assert_close(held.mean_activation().double(), sums / held.n_tokens, rtol=1e-4, atol=1e-5)


def test_scores_equal_the_formula_on_held_out_tokens(tiny_model, sae, held):
    vocab = [t for t in tiny_model.tokenizer.convert_ids_to_tokens(held.ids[:200].tolist())]
    explanations = {f: f"fires on '{vocab[f].strip()}' and on {vocab[f + 7]} in text" for f in range(0, WIDTH, 3)}
    stats = FeatureStats.from_parts(sae_name=sae.config.name, width=WIDTH, source="neuronpedia x/y",
                                    explanations=explanations,
                                    explanation_scores={0: {"eleuther_fuzz (m)": 0.75}})
    labels = FeatureLabels(tiny_model, sae, stats, held=held)
    scores = labels.scores()
    assert len(scores) == WIDTH
    checked = 0
    for f, s in scores.items():
        a = held.activations(f).numpy().astype(np.float64)
        if f in explanations:
            assert s.source == "neuronpedia" and s.label == explanations[f]
            ids = token_set(tiny_model.tokenizer, explanation_words(explanations[f]))
            p = np.isin(held.ids.numpy(), sorted(ids)).astype(np.float64)
        else:
            assert s.source == "auto"
            fires_on, promotes, r_promotes = labels._parts[f]
            assert not fires_on  # no examples: the label is its promotes half
            # the promotes half, as the next token, scored directly
            p_next = np.isin(held.next_ids.numpy(), sorted(token_set(tiny_model.tokenizer, promotes)))
            if (a > 0).sum() >= MIN_ACTIVE:
                assert r_promotes == pytest.approx(_direct(p_next.astype(np.float64), a)[0], abs=1e-6)
                assert ("→" in s.label) == (r_promotes >= MIN_FIT)
            kept = promotes if "→" in s.label else []
            p = np.isin(held.next_ids.numpy(), sorted(token_set(tiny_model.tokenizer, kept))).astype(np.float64)
        assert s.n_active == int((a > 0).sum()) and s.n_predicted == int(p.sum()) and s.n_tokens == len(a)
        if s.n_active < MIN_ACTIVE or not s.label:
            assert s.simulation is None and s.reason
            continue
        r, precision, recall = _direct(p, a)
        assert s.simulation == pytest.approx(r, abs=1e-6)
        assert s.precision == (None if precision is None else pytest.approx(precision))
        assert s.recall == pytest.approx(recall)
        checked += 1
    assert checked >= len(explanations) // 2
    assert scores[0].imported == {"eleuther_fuzz (m)": 0.75}
    ordered = scores.sorted("simulation")
    values = [s.simulation for s in ordered if s.simulation is not None]
    assert values == sorted(values, reverse=True)
    assert all(s.simulation is None for s in ordered[len(values):])


def test_peak_token_label_scores_its_fires_on_tokens(tiny_model, sae, held):
    """An automatic label with examples is scored by its peak tokens at the same position."""
    f = int(torch.bincount(held.feature, minlength=WIDTH).argmax())
    a = held.activations(f).numpy().astype(np.float64)
    peak_id = int(held.ids[int(np.argmax(a))])
    peak = tiny_model.tokenizer.convert_ids_to_tokens([peak_id])[0]
    stats = FeatureStats.from_parts(sae_name=sae.config.name, width=WIDTH, source="scan",
                                    examples={"top": {f: [Example([peak], [1.0], 0, 1.0)]}})
    labels = FeatureLabels(tiny_model, sae, stats, held=held)
    s = labels.score(f)
    assert s.label.startswith(labels._parts[f][0][0]) and s.source == "auto"
    p = np.isin(held.ids.numpy(), sorted(token_set(tiny_model.tokenizer, labels._parts[f][0]))).astype(np.float64)
    assert peak_id in token_set(tiny_model.tokenizer, labels._parts[f][0])
    r, precision, recall = _direct(p, a)
    assert (s.simulation, s.precision, s.recall) == (pytest.approx(r), pytest.approx(precision), pytest.approx(recall))
    assert s.precision > 0
    card = FeatureCards(tiny_model, sae, stats, labels=labels).card(f)
    assert card.label_score == s


def test_too_few_activating_tokens_says_so_and_skips(tiny_model, sae):
    # Hand-made held-out data: feature 1 fires 3 times (too few), feature 2 seven times.
    ids = torch.tensor([10, 11, 12, 10, 11, 12, 10, 11, 12, 13, 14, 15])
    nxt = torch.cat([ids[1:], torch.tensor([-1])])
    token = torch.tensor([0, 3, 6, 0, 1, 3, 4, 6, 7, 9])
    feature = torch.tensor([1, 1, 1, 2, 2, 2, 2, 2, 2, 2])
    value = torch.tensor([1.0, 2.0, 3.0, 4.0, 1.0, 5.0, 1.0, 6.0, 0.5, 0.25])
    held = HeldOutTokens(ids, nxt, token, feature, value, width=WIDTH)
    stats = FeatureStats.from_parts(sae_name=sae.config.name, width=WIDTH, source="test",
                                    explanations={1: "x", 2: "y"})
    labels = FeatureLabels(tiny_model, sae, stats, held=held)
    scores = labels.scores([1, 2])
    assert scores[1].simulation is None and "fewer than" in scores[1].reason and scores[1].n_active == 3
    # a reason says why, once: the views put "label not scored: " before it
    assert "not scored" not in scores[1].reason
    assert scores[2].simulation is not None and scores[2].n_active == 7
    with pytest.raises(LabelScoreError, match="cannot be scored"):
        labels.score(1)
    with pytest.raises(LabelScoreError, match="Sort label scores"):
        scores.sorted("nonsense")
    with pytest.raises(LabelScoreError, match="non-empty"):
        held_out_tokens(tiny_model, sae, ["  "], cache=False)


def test_neuronpedia_explanation_scores_are_imported(tmp_path):
    common = {"modelId": "gemma-3-270m", "layer": "1-gemmascope-2-res-16k"}
    (tmp_path / "explanations").mkdir()
    (tmp_path / "explanation-scores").mkdir()
    rows = [{**common, "index": "2", "description": "French places", "explanationModelName": "gpt-4o-mini"},
            {**common, "index": "3", "description": "code"}]
    scored = [{**common, "index": "2", "explanations": [
        {"description": "French places", "scores": [
            {"explanationScoreTypeName": "eleuther_fuzz", "explanationScoreModelName": "haiku", "value": 0.8},
            {"explanationScoreTypeName": "eleuther_recall", "explanationScoreModelName": "haiku", "value": 0.6}]},
        {"description": "cities in France", "scores": [{"explanationScoreTypeName": "recall_alt", "value": 0.9}]},
    ]}]
    for folder, data in (("explanations", rows), ("explanation-scores", scored)):
        with gzip.open(tmp_path / folder / "batch-0.jsonl.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in data)
    stats = load_neuronpedia_export(tmp_path, width=8)
    assert stats.explanation(2) == "cities in France"  # the best-scored explanation
    assert stats.explanation_scores(2) == {"recall_alt": 0.9}
    assert stats.explanation(3) == "code" and stats.explanation_scores(3) == {}
    assert stats.explanation_source(2) == "neuronpedia"
    back = FeatureStats.load(stats.save(tmp_path / "saved"))
    assert back.explanation_scores(2) == {"recall_alt": 0.9}
    back.label(2, "mine")
    assert back.explanation_source(2) == "user" and back.explanation_scores(2) == {}
