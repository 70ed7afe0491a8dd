"""Scans of disjoint shards of a corpus merge exactly into the scan of the whole corpus."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.stats.scan import Scanner
from gemscope_widgets.backend.stats.scan_state import ScanParams
from gemscope_widgets.errors import GemscopeError


@pytest.mark.parametrize("shards", [2, 3])
def test_merged_shards_equal_one_scan(tiny_model, scan_sae, scan_corpus, scan_params, shards):
    params, _ = ScanParams.from_kwargs(scan_params)
    whole = Scanner(tiny_model, scan_sae, scan_corpus, params, batch_size=2)
    whole.run(progress=False)
    parts = []
    for r in range(shards):
        part = Scanner(tiny_model, scan_sae, scan_corpus, params, batch_size=2, rank=r, world=shards)
        part.run(progress=False)
        parts.append(part)
    merged = parts[0]
    for other in parts[1:]:
        merged.state.merge_from(other.state)
    assert merged.state.n_tokens == whole.state.n_tokens
    for name, tensor in whole.state.state_dict().items():
        assert torch.equal(merged.state.state_dict()[name], tensor), name
    assert (whole.state.tables["top"].doc >= 0).sum() > 20


def test_progress_takes_a_bool_and_a_separate_callback(tiny_model, scan_sae, scan_corpus, scan_params):
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats

    with pytest.raises(GemscopeError, match="on_progress"):
        FeatureStats.scan(tiny_model, scan_sae, scan_corpus, cache=False, progress=lambda *a: None, **scan_params)
    seen = []
    FeatureStats.scan(tiny_model, scan_sae, scan_corpus, cache=False, progress=False, batch_size=2,
                      on_progress=lambda done, total: seen.append((done, total)), **scan_params)
    assert seen[-1] == (len(scan_corpus), len(scan_corpus))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) >= len(scan_corpus) // 2
