"""Workspace: a model, named SAEs, one statistics holder and one label source per SAE, a transcoder set, used from a
script (that importing it loads no widget module is tests/test_layering.py's: it is a backend module)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from gemscope_widgets.backend.analysis.card import FeatureCards
from gemscope_widgets.backend.analysis.labels import FeatureLabels
from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.transcoder_set import TranscoderSet
from gemscope_widgets.backend.dictionaries.loading import load_sae, load_sae_folder
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from gemscope_widgets.backend.stats.holder import StatsHolder
from gemscope_widgets.backend.steering.session import SteeringSession
from gemscope_widgets.backend.workspace import Workspace
from gemscope_widgets.errors import GemscopeError, SAEModelMismatch
from gemscope_widgets.testing.transcoders import write_calibrated_set
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae
from tests.helpers import SCAN_CORPUS, SCAN_PARAMS


@pytest.fixture(scope="module")
def ws_sae(tmp_path_factory):
    folder = write_gemma_scope_sae(tmp_path_factory.mktemp("ws_sae") / "resid_post/layer_1_width_16k_l0_medium",
                                   kind="sae", site="resid_post", layer=1, width=48, seed=7, threshold=0.3)
    return load_sae_folder(folder)


@pytest.fixture(scope="module")
def ws_stats(tiny_model, ws_sae, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEMSCOPE_CACHE", str(tmp_path_factory.mktemp("ws_cache")))
        return FeatureStats.scan(tiny_model, ws_sae, SCAN_CORPUS, cache=False, progress=False, **SCAN_PARAMS)


def test_saes_are_named_checked_and_looked_up(tiny_model, gemma_scope_folders, tmp_path):
    ws = Workspace(tiny_model, [str(gemma_scope_folders["resid_post"]), load_sae(gemma_scope_folders["mlp_out"])])
    assert list(ws.saes) == ["resid_post/layer_1_width_16k_l0_medium", "mlp_out/layer_1_width_16k_l0_medium"]
    assert ws.sae() is ws.saes["resid_post/layer_1_width_16k_l0_medium"]
    assert ws.sae_name() == "resid_post/layer_1_width_16k_l0_medium"
    named = Workspace(tiny_model, {"L1": ws.sae()})
    assert list(named.saes) == ["L1"] and named.sae("L1") is ws.sae()
    with pytest.raises(GemscopeError, match="No SAE named 'nope'.*there are: L1"):
        named.sae("nope")
    with pytest.raises(GemscopeError, match="has no SAE"):
        Workspace(tiny_model).sae()
    wide = write_gemma_scope_sae(tmp_path / "wide", kind="sae", site="resid_post", layer=1, d_in=32)
    with pytest.raises(SAEModelMismatch):
        Workspace(tiny_model, str(wide))


def test_one_holder_and_one_label_source_per_sae_which_follow_the_statistics(tiny_model, ws_sae, ws_stats, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path / "cache"))
    ws = Workspace(tiny_model, {"a": ws_sae})
    holder, labels = ws.stats_holder("a"), ws.labels("a")
    assert isinstance(holder, StatsHolder) and holder is ws.stats_holder() and holder.sae is ws_sae
    assert isinstance(labels, FeatureLabels) and labels is ws.labels()
    assert holder.stats is None and ws.densities() is None
    stats = ws_stats
    holder.set(stats)
    # the kept labels follow the holder: what they give now equals fresh labels made from these statistics
    fresh = FeatureLabels(tiny_model, ws_sae, stats)
    shown = [int(f) for f in np.argsort(-stats.density)[:4]]  # features the statistics know
    assert labels.labels(shown) == fresh.labels(shown)
    assert ws.stats() is stats


def test_card_equals_the_cards_made_from_the_same_pieces(tiny_model, ws_sae, ws_stats, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path / "cache"))
    ws = Workspace(tiny_model, ws_sae)
    stats = ws_stats
    ws.stats_holder().set(stats)
    feature = int(np.argmax(stats.density))
    card = ws.card(feature, related_k=4)
    direct = FeatureCards(tiny_model, ws_sae, StatsHolder(tiny_model, ws_sae, stats),
                          labels=FeatureLabels(tiny_model, ws_sae, stats), related_k=4).card(feature)
    assert asdict(card.info) == asdict(direct.info)
    assert card.logits == direct.logits and card.related == direct.related
    assert [e.tokens for e in card.top.items] == [e.tokens for e in direct.top.items]
    assert len(card.top.items) > 0


def test_generate_is_the_steering_sessions(tiny_model, ws_sae):
    ws = Workspace(tiny_model, ws_sae)
    out = ws.generate("The quick brown fox", {3: 4.0}, unit="raw", max_new_tokens=3, stop_at_eos=False)
    ref = SteeringSession(tiny_model, "The quick brown fox", {3: 4.0}, sae=ws_sae, unit="raw").generate(
        max_new_tokens=3, stop_at_eos=False)
    assert out.steered_ids == ref.steered_ids and out.baseline_ids == ref.baseline_ids
    assert len(out.steered_ids) == 3 and out.specs == ref.specs


def test_a_given_transcoder_set_is_kept_and_attributes(tiny_model, tmp_path):
    root = write_calibrated_set(tiny_model, tmp_path / "tc", width=32, l0=4, affine=True, seed=2)
    ws = Workspace(tiny_model)
    tset = ws.transcoders(root)
    assert isinstance(tset, TranscoderSet) and ws.transcoders() is tset  # kept for later calls
    graph = ws.attribute("The quick brown fox", max_logits=2, progress=False)
    ref = attribute(tiny_model, tset, "The quick brown fox", max_logits=2, progress=False)
    assert graph.active_features.tolist() == ref.active_features.tolist()
    assert np.allclose(graph.adjacency_matrix.numpy(), ref.adjacency_matrix.numpy(), atol=1e-6)
