"""The statistics cache notices every change: any single weight of the SAE or the model, the format version."""

from __future__ import annotations

import json

import pytest
import torch

from gemscope_widgets.backend.stats import store
from gemscope_widgets.backend.stats.feature_stats import FeatureStats


def assert_same(a: FeatureStats, b: FeatureStats) -> None:
    assert a.n_tokens == b.n_tokens
    assert torch.equal(a.max_act, b.max_act) and torch.equal(a.density, b.density)
    for name, tensor in b._tensors.items():
        assert torch.equal(a._tensors[name], tensor), name


def _one_weight_each(module: torch.nn.Module, picks: int | None = None):
    named = [(n, t) for n, t in [*module.named_parameters(), *module.named_buffers()] if t is not None]
    if picks is not None and len(named) > picks:  # first, last and evenly spread between
        step = (len(named) - 1) / (picks - 1)
        named = [named[round(i * step)] for i in range(picks)]
    return named


def test_changing_any_single_weight_is_noticed(tiny_model, scan_sae, stats_cache, scan_corpus, scan_params):
    targets = [("sae", n, t) for n, t in _one_weight_each(scan_sae)]
    targets += [("model", n, t) for n, t in _one_weight_each(tiny_model.model, picks=5)]
    FeatureStats.load_or_scan(tiny_model, scan_sae, scan_corpus, progress=False, **scan_params)
    changed_result = 0
    for owner, name, tensor in targets:
        before = FeatureStats.scan(tiny_model, scan_sae, scan_corpus, cache=False, progress=False, **scan_params)
        flat = tensor.view(-1)
        i = flat.numel() // 2
        old = flat[i].clone()
        with torch.no_grad():
            flat[i] = old * 3 + 0.75  # one value, in place, no new tensor
        try:
            cached = FeatureStats.load_or_scan(tiny_model, scan_sae, scan_corpus, progress=False, **scan_params)
            fresh = FeatureStats.scan(tiny_model, scan_sae, scan_corpus, cache=False, progress=False, **scan_params)
            assert_same(cached, fresh)
            changed_result += not torch.equal(fresh.max_act, before.max_act)
        finally:
            with torch.no_grad():
                flat[i] = old
        assert cached.meta["key"][owner]["weights"] != before.meta["key"][owner]["weights"], (owner, name)
    # Decoder weights and layers after the SAE's site cannot change a scan, but the key still changes; those
    # upstream of the encoder output do change it, so a stale cache would have failed assert_same.
    assert changed_result >= 3


def test_disabled_features_read_zero_density_after_a_cached_scan(tiny_model, scan_sae, stats_cache, scan_corpus,
                                                                  scan_params):
    first = FeatureStats.load_or_scan(tiny_model, scan_sae, scan_corpus, progress=False, **scan_params)
    alive = (first.density > 0).nonzero(as_tuple=True)[0][:10]
    with torch.no_grad():
        scan_sae.threshold[alive] = 1e9
    again = FeatureStats.load_or_scan(tiny_model, scan_sae, scan_corpus, progress=False, **scan_params)
    assert (again.density[alive] == 0).all()


def test_replacing_a_buffer_is_noticed(scan_sae):
    before = store.sae_identity(scan_sae)
    assert store.sae_identity(scan_sae) == before  # remembered, unchanged
    scan_sae.threshold = scan_sae.threshold.clone().add_(1.0)
    assert store.sae_identity(scan_sae)["weights"] != before["weights"]


def test_a_folder_of_another_format_version_is_rebuilt(tiny_model, scan_sae, stats_cache, scan_corpus, scan_params):
    good = FeatureStats.load_or_scan(tiny_model, scan_sae, scan_corpus, progress=False, **scan_params)
    meta_path = good._path / store.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["format"] = store.FORMAT_VERSION - 1
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="another version"):
        rebuilt = FeatureStats.load_or_scan(tiny_model, scan_sae, scan_corpus, progress=False, **scan_params)
    assert_same(rebuilt, good)
    assert json.loads(meta_path.read_text())["format"] == store.FORMAT_VERSION
