"""Strength units hold still: one quantile per feature over a fixed corpus sample, the same for every prompt and
before and after a corpus scan; computed exactly, cached on disk, and shown with where they came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gemscope_widgets.backend.steering.units as units
from gemscope_widgets import Scope
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.steering.spec import DirectionSpec, normalize_steering
from gemscope_widgets.backend.steering.units import (
    UNIT_QUANTILE,
    UNIT_TOKENS,
    compute_feature_units,
    exact_quantiles,
    feature_units,
    strength_unit,
)
from gemscope_widgets.errors import SteeringError

PROMPTS = [
    "Paris is the capital of France. The quick brown fox",
    "def fibonacci(n):\n    return n",
    "Sparse autoencoders find features in the residual stream.",
]


@pytest.fixture(scope="module")
def sae(gemma_scope_folders):
    return load_sae_folder(gemma_scope_folders["resid_post"])


def test_exact_quantiles_equal_numpy():
    gen = torch.Generator().manual_seed(0)
    width = 7
    feature = torch.randint(0, width - 2, (500,), generator=gen)  # the last two features have no values
    feature[0] = width - 2
    values = torch.rand(500, generator=gen) * 10
    for q in (0.5, 0.99, 1.0):
        got, counts = exact_quantiles(feature, values, width, q)
        for f in range(width):
            mine = values[feature == f].numpy()
            assert int(counts[f]) == mine.size
            expected = np.quantile(mine, q) if mine.size else 0.0
            assert float(got[f]) == pytest.approx(float(expected), rel=1e-6), (f, q)


def test_units_equal_a_direct_per_document_computation(tiny_model, sae):
    """Batched, padded and chunked as computed vs each sample document captured alone (no padding)."""
    from gemscope_widgets.backend.gemma.capture import capture

    n = 1500
    got = compute_feature_units(tiny_model, sae, n_tokens=n, progress=False, batch_tokens=1024)
    assert got.n_tokens == n
    docs = units._sample_prompts(tiny_model, n, units.UNIT_DOC_TOKENS)
    assert sum(int(c.sum()) for _, c in docs) == n
    per_feature: list[list[float]] = [[] for _ in range(sae.width)]
    norms = []
    for ids, counted in docs:
        x = capture(tiny_model, ids, [sae.config.hook_in])[sae.config.hook_in][0][counted]
        acts = sae.encode(x)
        norms.append(x.float().norm(dim=-1))
        for t, f in acts.nonzero().tolist():
            per_feature[f].append(float(acts[t, f]))
    for f in range(sae.width):
        expected = float(np.quantile(per_feature[f], UNIT_QUANTILE)) if per_feature[f] else 0.0
        assert float(got.quantile_values[f]) == pytest.approx(expected, rel=1e-4, abs=1e-5), f
        assert int(got.n_nonzero[f]) == len(per_feature[f])
    assert got.site_norm[sae.config.hook_out] == pytest.approx(float(torch.cat(norms).median()), rel=1e-5)


def test_the_same_strength_is_the_same_raw_value_across_prompts_and_a_scan(tiny_model, sae):
    scope = Scope(tiny_model, sae)
    features = [3, 5, 17]

    def raw_strengths(prompt):
        result = scope.generate(prompt, {f: 2.0 for f in features}, max_new_tokens=1)
        return [s.strength for s in result.specs]

    before = [raw_strengths(p) for p in PROMPTS]
    assert before[0] == before[1] == before[2]
    scope.stats(corpus=["A short corpus for a scan.", "It has two documents."], progress=False)
    assert scope.stats_holder().stats is not None, "the scan should have produced statistics"
    after = [raw_strengths(p) for p in PROMPTS]
    assert after == before
    unit = feature_units(tiny_model, sae)
    assert before[0] == [pytest.approx(2.0 * float(unit.quantile_values[f])) for f in features]
    w = scope.steer(PROMPTS[1], {5: 2.0}, autorun=False)
    try:
        entry = w.features[0]
        assert entry["raw"] == pytest.approx(before[0][1])
        assert entry["scale_source"] == "quantile"
        assert entry["unit_source"] == f"p99 of non-zero activations over {UNIT_TOKENS:,} corpus tokens"
    finally:
        w.close()


def test_units_are_cached_on_disk_by_model_and_sae_identity(tiny_model, gemma_scope_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(units, "UNIT_TOKENS", 600)
    sae = load_sae_folder(gemma_scope_folders["resid_post"])
    first = feature_units(tiny_model, sae, progress=False)
    files = sorted(p.suffix for p in (tmp_path / "units").iterdir())
    assert files == [".json", ".lock", ".safetensors"]
    units._MEMO.clear()

    def boom(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(units, "compute_feature_units", boom)
    again = feature_units(tiny_model, sae, progress=False)
    assert torch.equal(again.quantile_values, first.quantile_values) and again.n_tokens == 600
    # Another SAE (other weights) is another key: computed, not read from the first one's file.
    other = load_sae_folder(gemma_scope_folders["mlp_out"])
    with pytest.raises(AssertionError, match="recomputed"):
        feature_units(tiny_model, other, progress=False)


def test_a_feature_that_never_fires_gets_the_site_norm_unit(tiny_model, gemma_scope_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(units, "UNIT_TOKENS", 400)
    sae = load_sae_folder(gemma_scope_folders["resid_post"])
    with torch.no_grad():
        sae.threshold[9] = 1e9
    u = feature_units(tiny_model, sae, progress=False)
    unit = strength_unit(tiny_model, normalize_steering({9: 1.0}, sae)[0])
    assert unit.kind == "site norm" and "never fired in 400 corpus tokens" in unit.source
    expected = u.site_norm[sae.config.hook_out] / float(sae.w_dec[9].norm())
    assert unit.value == pytest.approx(expected, rel=1e-6)


def test_direction_units_and_raw(tiny_model, sae):
    r = torch.randn(tiny_model.d_model, generator=torch.Generator().manual_seed(1)) * 4
    add = normalize_steering(DirectionSpec(r, mode="add", layer=1), model=tiny_model)[0]
    unit = strength_unit(tiny_model, add)
    assert unit.kind == "length" and unit.value == pytest.approx(float(r.norm()), rel=1e-6)
    ablate = normalize_steering(DirectionSpec(r), model=tiny_model)[0]
    assert strength_unit(tiny_model, ablate).kind == "fraction"
    feature = normalize_steering({5: 1.0}, sae)[0]
    assert strength_unit(tiny_model, feature, "raw").value == 1.0
    with pytest.raises(SteeringError, match="Unknown steering unit 'sigma': use 'typical' .* or 'raw'"):
        strength_unit(tiny_model, feature, "sigma")
