"""FeatureCard: every section equals the backend's own answer (and a brute-force one), the pane shows exactly the
card, caches hold per feature until the statistics change, labels are read fresh, bad input gets the short error."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

import gemscope_widgets
from gemscope_widgets.backend.analysis import card as card_module
from gemscope_widgets.backend.analysis.card import FeatureCard, FeatureCards
from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.analysis.labels import FeatureLabels
from gemscope_widgets.backend.analysis.logit_lens import logit_lens
from gemscope_widgets.backend.analysis.related import related_by_decoder
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from gemscope_widgets.backend.stats.holder import StatsHolder
from gemscope_widgets.errors import FeatureIndexError, GemscopeError
from gemscope_widgets.scope import Scope
from gemscope_widgets.widgets.feature_pane import FeaturePane
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae
from tests.helpers import SCAN_CORPUS, SCAN_PARAMS


def f32(view: bytes) -> np.ndarray:
    return np.frombuffer(view, dtype="<f4")


@pytest.fixture(scope="module")
def card_sae(tmp_path_factory):
    folder = write_gemma_scope_sae(
        tmp_path_factory.mktemp("card_sae") / "resid_post/layer_1_width_16k_l0_medium",
        kind="sae", site="resid_post", layer=1, width=48, seed=7, threshold=0.3,
    )
    return load_sae_folder(folder)


@pytest.fixture(scope="module")
def card_stats(tiny_model, card_sae):
    return FeatureStats.scan(tiny_model, card_sae, SCAN_CORPUS, cache=False, progress=False, **SCAN_PARAMS)


@pytest.fixture(scope="module")
def busy(card_stats) -> int:
    """The feature with the most examples (more than one page)."""
    return int(np.argmax([card_stats.n_examples(f) for f in range(card_stats.width)]))


def test_the_pane_shows_exactly_the_card(tiny_model, card_sae, card_stats, busy):
    pane = FeaturePane(tiny_model, card_sae, card_stats, feature=busy, page_size=3)
    card = pane.cards.card(busy, page_size=3)
    assert pane.card == card and card.feature == pane.feature == busy
    info = dict(pane.info)
    score = info.pop("score")
    assert info == asdict(card.info)
    assert (score["label"], score["simulation"], score["reason"]) == (
        card.label_score.label, card.label_score.simulation, card.label_score.reason)
    # the pane reads "label not scored: <reason>", so a reason says why once and never "not scored" again
    assert card.label_score.simulation is not None or (
        card.label_score.reason and "not scored" not in card.label_score.reason)
    assert [tuple(r) for r in pane.logits["top"]] == card.logits.top
    assert [tuple(r) for r in pane.logits["bottom"]] == card.logits.bottom
    np.testing.assert_array_equal(f32(pane.histogram["edges"]), card.histogram.edges.astype(np.float32))
    np.testing.assert_array_equal(f32(pane.histogram["counts"]), card.histogram.counts.astype(np.float32))
    assert [(r["feature"], r["score"], r["kind"], r["explanation"], r["density"]) for r in pane.related] == [
        (r.feature, r.score, r.kind, r.label, r.density) for r in card.related]
    for trait, page in ((pane.examples, card.top), (pane.quantiles, card.quantile)):
        assert (trait["kind"], trait["start"], trait["total"]) == (page.kind, page.start, page.total)
        assert [i["tokens"] for i in trait["items"]] == [e.tokens for e in page.items]
        assert [(i["peak"], i["value"]) for i in trait["items"]] == [(e.peak, e.value) for e in page.items]
        for item, example in zip(trait["items"], page.items, strict=True):
            np.testing.assert_array_equal(f32(item["values"]), np.float32(example.values))
    assert card.top.total > 3 and len(card.top.items) == 3  # the comparison covered a real page

    pane._on_custom_msg(pane, {"type": "page", "kind": "quantile", "start": 1}, [])
    page = card.page("quantile", 1, 3)
    assert pane.quantiles["start"] == page.start == 1
    assert [i["tokens"] for i in pane.quantiles["items"]] == [e.tokens for e in page.items]
    text = "The capital of France is Paris."
    pane._on_custom_msg(pane, {"type": "test", "text": text}, [])
    acts = card.test(text)
    assert pane.test["tokens"] == acts.tokens and pane.test["special"] == acts.special
    np.testing.assert_array_equal(f32(pane.test["values"]), acts.values)


def test_sections_equal_the_backend_and_a_brute_force_oracle(tiny_model, card_sae, card_stats, busy):
    cards = FeatureCards(tiny_model, card_sae, card_stats, logits_k=7, related_k=5)
    card = cards.card(busy)
    top, bottom = logit_lens(tiny_model, card_sae, busy, 7)
    assert card.logits.top == top and card.logits.bottom == bottom
    direction = card_sae.w_dec[busy].float() * (1 + tiny_model.final_norm.weight.float())
    logits = tiny_model.lm_head.weight.float() @ direction
    np.testing.assert_allclose([v for _, v in card.logits.top], torch.topk(logits, 7).values, rtol=1e-4, atol=1e-5)

    decoder = [(r.feature, r.score) for r in card.related if r.kind == "decoder"]
    assert decoder == [(i, s) for i, s in related_by_decoder(card_sae, busy, 5) if i != busy]
    w = torch.nn.functional.normalize(card_sae.w_dec.float(), dim=1)
    cos = w @ w[busy]
    cos[busy] = -2
    assert decoder[0][0] == int(cos.argmax())
    co = [(r.feature, r.score) for r in card.related if r.kind == "coactivation"]
    assert co == card_stats.related_by_coactivation(busy, 5) and co
    labels = FeatureLabels(tiny_model, card_sae, card_stats).labels([r.feature for r in card.related])
    assert [r.label for r in card.related] == [labels[r.feature] for r in card.related]
    assert [r.density for r in card.related] == [float(card_stats.density[r.feature]) for r in card.related]

    info = card.info
    assert (info.density, info.max_act) == (pytest.approx(float(card_stats.density[busy])),
                                            pytest.approx(float(card_stats.max_act[busy])))
    assert info.n_tokens == card_stats.n_tokens and info.source == "scan" and info.width == 48
    assert info.dictionary == "SAE" and info.url == "" and info.sae == card_sae.config.name
    assert info.label == FeatureLabels(tiny_model, card_sae, card_stats).auto(busy)
    edges, counts = card_stats.histogram(busy)
    assert np.array_equal(card.histogram.edges, edges) and np.array_equal(card.histogram.counts, counts)

    page = card.page("top", 2, 2)
    assert (page.start, page.total) == (2, card_stats.n_examples(busy))
    assert page.items == card_stats.examples(busy, start=2, count=2)
    assert card.page("top", 10_000).start == card.top.total - 1  # clamped to the last example
    with pytest.raises(GemscopeError, match="'top' or 'quantile'"):
        card.page("best")

    text = "The quick brown fox jumps over the lazy dog."
    acts = card.test(text)
    ref = prompt_features(tiny_model, [card_sae], text)[0]
    assert acts.tokens == list(ref.prompt.tokens)
    np.testing.assert_array_equal(acts.values, ref.dense()[:, busy].numpy())
    with pytest.raises(GemscopeError):
        card.test("")


def test_logit_lens_and_neighbours_are_kept_per_feature_until_the_statistics_change(
        tiny_model, card_sae, card_stats, busy, monkeypatch):
    calls = {"lens": 0, "decoder": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(card_module, "logit_lens", counting("lens", logit_lens))
    monkeypatch.setattr(card_module, "related_by_decoder", counting("decoder", related_by_decoder))
    holder = StatsHolder(tiny_model, card_sae, None)
    cards = FeatureCards(tiny_model, card_sae, holder)
    bare = cards.card(busy)
    assert bare.info.source == "" and bare.histogram is None and bare.top.total == bare.quantile.total == 0
    assert [r.kind for r in bare.related] == ["decoder"] * len(bare.related) and bare.related
    assert cards.card(busy) == bare and calls == {"lens": 1, "decoder": 1}
    holder.set(card_stats)  # a scan finished: examples, co-activations, new labels
    full = cards.card(busy)
    assert calls == {"lens": 2, "decoder": 2} and full != bare and full.info.source == "scan"
    assert bare.stats is None and bare.page("top").total == 0  # an old card keeps its own statistics

    # labels are read fresh, even for kept neighbours
    other = full.related[0].feature
    card_stats.label(other, "a label set by the user")
    try:
        again = cards.card(busy)
        assert again.related[0].label == "a label set by the user" and calls["decoder"] == 2
        assert cards.card(other).info.explanation == "a label set by the user"
    finally:
        card_stats.label(other, None)


@pytest.mark.parametrize("bad", [48, -1, 10_000, "3", 2.5])
def test_a_bad_feature_index_gets_the_short_error(tiny_model, card_sae, card_stats, bad):
    cards = FeatureCards(tiny_model, card_sae, card_stats)
    with pytest.raises(FeatureIndexError, match=r"0\.\.47") as err:
        cards.card(bad)
    assert len(str(err.value)) < 120 and "Traceback" not in str(err.value)


def test_scope_card_from_a_script(tiny_model, card_sae, card_stats, busy):
    scope = Scope(tiny_model, card_sae, check=False)
    scope.stats_holder().set(card_stats)
    card = scope.card(busy, page_size=3)
    assert isinstance(card, gemscope_widgets.FeatureCard) and card is not None
    assert card == FeatureCards(tiny_model, card_sae, card_stats, page_size=3).card(busy)
    assert card == scope.feature(busy, page_size=3).card
    assert gemscope_widgets.FeatureCards is FeatureCards and FeatureCard is gemscope_widgets.FeatureCard
    with pytest.raises(FeatureIndexError, match="does not exist"):
        scope.card(48)
