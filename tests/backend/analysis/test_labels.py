"""Automatic feature labels: peak tokens of the top examples and readable top logit-lens tokens."""

from __future__ import annotations

import pytest

from gemscope_widgets.backend.analysis.labels import (
    MAX_LABEL_CHARS,
    FeatureLabels,
    clean_token,
    compose_label,
    peak_tokens,
    top_logit_tokens,
)
from gemscope_widgets.backend.analysis.logit_lens import logit_lens
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.stats.feature_stats import Example, FeatureStats
from gemscope_widgets.errors import FeatureIndexError


@pytest.fixture(scope="module")
def resid_sae(gemma_scope_folders):
    return load_sae_folder(gemma_scope_folders["resid_post"])


def _example(tokens, peak, value):
    return Example(tokens=tokens, values=[0.0] * len(tokens), peak=peak, value=value)


def _stats(sae, examples=None, explanations=None):
    return FeatureStats.from_parts(sae_name=sae.config.name, width=sae.width, source="test",
                                   examples={"top": examples or {}}, explanations=explanations)


def test_clean_token():
    assert clean_token(" KeyError") == "KeyError"
    assert clean_token("\n\n") == ""
    assert clean_token("<start_of_turn>") == ""
    assert clean_token("\u2581word") == "word"
    assert clean_token("x" * 40).endswith("…") and len(clean_token("x" * 40)) == 14


def test_peak_tokens_vote_by_activation():
    stats_examples = {
        3: [
            _example(["a", " Error", "b"], 1, 5.0),
            _example([" error", "c"], 0, 4.0),
            _example(["d", " Key"], 1, 6.0),
            _example(["e", "Error"], 1, 2.0),  # the same token as the first, case and space aside
            _example(["<bos>", "x"], 0, 9.0),  # control tokens never vote
        ]
    }

    class Sae:
        width = 8

        class config:  # noqa: N801
            name = "toy"

    stats = _stats(Sae, stats_examples)
    # " Error"+"Error": 7; " Key": 6; " error": 4 (case-insensitive duplicate of Error, dropped).
    assert peak_tokens(stats, 3, k=2) == ["Error", "Key"]
    assert peak_tokens(stats, 4) == []
    assert peak_tokens(None, 3) == []


def test_top_logit_tokens_follow_the_logit_lens(tiny_model, resid_sae):
    features = [0, 7, 100, 3]
    got = top_logit_tokens(tiny_model, resid_sae, features, k=2)
    for f in features:
        top, _ = logit_lens(tiny_model, resid_sae, f, k=24)
        expected = [t for t in (clean_token(s) for s, _ in top) if t]
        words = [t for t in expected if any(c.isalnum() for c in t)]
        order = list(dict.fromkeys(t.lower() for t in words + expected))
        assert [t.lower() for t in got[f]] == order[:2], (f, got[f], top[:6])
    with pytest.raises(FeatureIndexError):
        top_logit_tokens(tiny_model, resid_sae, [resid_sae.width])


def test_compose_label():
    assert compose_label(["KeyError", "Error"], ["raised", "exception"]) == "KeyError/Error → raised, exception"
    assert compose_label([], ["raised"]) == "→ raised"
    assert compose_label(["if"], []) == "if"
    assert compose_label([], []) == ""
    long = compose_label(["a" * 14, "b" * 14], ["c" * 14, "d" * 14])
    assert len(long) == MAX_LABEL_CHARS and long.endswith("…")


def test_explanations_win_and_new_stats_refresh_labels(tiny_model, resid_sae):
    stats = _stats(resid_sae, {5: [_example(["x", " Zebra"], 1, 3.0)]}, explanations={6: "dates in prose"})
    labels = FeatureLabels(tiny_model, resid_sae, stats)
    out = labels.labels([5, 6, 7])
    promotes = top_logit_tokens(tiny_model, resid_sae, [5, 7])
    assert out[5] == compose_label(["Zebra"], promotes[5])
    assert out[6] == "dates in prose"
    assert out[7] == compose_label([], promotes[7])
    stats.label(7, "my own label")
    assert labels.labels([7])[7] == "my own label"
    labels.set_stats(_stats(resid_sae, {5: [_example([" Yak"], 0, 1.0)]}))
    assert labels.auto(5) == compose_label(["Yak"], promotes[5])


def test_labels_are_computed_in_batches_and_kept(tiny_model, resid_sae, monkeypatch):
    import gemscope_widgets.backend.analysis.labels as module

    calls = []
    real = module.top_logit_tokens

    def counted(gm, sae, features, k=2):
        calls.append(list(features))
        return real(gm, sae, features, k)

    monkeypatch.setattr(module, "top_logit_tokens", counted)
    labels = FeatureLabels(tiny_model, resid_sae)
    labels.autos(range(10))
    labels.autos([3, 4, 11])
    assert calls == [list(range(10)), [11]]
