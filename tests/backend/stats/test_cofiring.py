"""Co-firing counts: exact merge of two halves of a corpus, and the cache (hit, and miss on changed weights)."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.stats import cofiring as cofiring_module
from gemscope_widgets.backend.stats.cofiring import cofiring, count_cofiring, decoder_pairs
from gemscope_widgets.errors import MatryoshkaError


def test_halves_merge_into_the_whole(tiny_model, scan_sae, scan_corpus):
    kw = {"max_doc_tokens": 24, "batch_size": 3, "progress": False, "min_cosine": 0.15}
    whole = count_cofiring(tiny_model, scan_sae, None, scan_corpus, **kw)
    first = count_cofiring(tiny_model, scan_sae, None, scan_corpus[:3], **kw)
    first.merge_from(count_cofiring(tiny_model, scan_sae, None, scan_corpus[3:], **kw))
    assert first.n_tokens == whole.n_tokens
    assert int(whole.count.sum()) > 50
    for name, tensor in whole.tensors().items():
        assert torch.equal(first.tensors()[name], tensor), name
    other = count_cofiring(tiny_model, scan_sae, None, scan_corpus[:2], **{**kw, "min_cosine": 0.3})
    with pytest.raises(MatryoshkaError, match="other latent pairs"):
        first.merge_from(other)


def test_pairs_are_sorted_unique_and_above_the_floor(scan_sae):
    a, b, cos = decoder_pairs(scan_sae, max_partners=8, min_cosine=0.2)
    keys = a * scan_sae.width + b
    assert bool((keys[1:] > keys[:-1]).all()) and bool((a < b).all()) and bool((cos >= 0.2).all())
    d = scan_sae.w_dec / scan_sae.w_dec.norm(dim=1, keepdim=True)
    torch.testing.assert_close(cos, (d[a] * d[b]).sum(1), rtol=0, atol=1e-5)


def test_cached_pass_is_read_back_and_recounted_when_weights_change(tiny_model, scan_sae, scan_corpus,
                                                                    stats_cache, monkeypatch):
    first = cofiring(tiny_model, scan_sae, scan_corpus, max_doc_tokens=24, progress=False)
    assert any(stats_cache.glob("cofiring/*/cofiring.safetensors"))

    def refuse(*a, **k):
        raise AssertionError("counted again")

    monkeypatch.setattr(cofiring_module, "count_cofiring", refuse)
    again = cofiring(tiny_model, scan_sae, scan_corpus, max_doc_tokens=24, progress=False)
    for name, tensor in first.tensors().items():
        assert torch.equal(again.tensors()[name], tensor), name
    assert again.one_dictionary and again.n_tokens == first.n_tokens
    with torch.no_grad():
        scan_sae.threshold[0] += 1.0
    with pytest.raises(AssertionError, match="counted again"):
        cofiring(tiny_model, scan_sae, scan_corpus, max_doc_tokens=24, progress=False)
