"""Logit lens (Gemma's 1 + w norm gain) and decoder-cosine related features."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.analysis.logit_lens import feature_direction, feature_logits, logit_lens
from gemscope_widgets.backend.analysis.related import related_by_decoder
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.errors import FeatureIndexError


@pytest.fixture(scope="module")
def resid_sae(gemma_scope_folders):
    return load_sae_folder(gemma_scope_folders["resid_post"])


def test_logit_lens_is_the_unembedding_of_the_normed_direction(tiny_model, resid_sae):
    """Up to the positive 1/rms factor, the lens equals lm_head(final_norm(w_dec[f])) run by transformers."""
    gain_w = tiny_model.final_norm.weight.detach()
    assert gain_w.abs().max() > 0.05, "the tiny model's final norm must not be the identity for this test"
    for f in (0, 7, 100):
        direction = resid_sae.w_dec[f]
        with torch.no_grad():
            via_model = tiny_model.lm_head(tiny_model.final_norm(direction[None, None]))[0, 0]
        lens = feature_logits(tiny_model, resid_sae, f)
        unit = torch.nn.functional.normalize
        torch.testing.assert_close(unit(lens, dim=0), unit(via_model, dim=0), rtol=1e-4, atol=1e-5)
        plain = tiny_model.lm_head.weight.detach() @ (direction * gain_w)  # the common mistake: gain = w
        assert not torch.allclose(torch.nn.functional.normalize(plain, dim=0),
                                  torch.nn.functional.normalize(lens, dim=0), atol=1e-2)


def test_logit_lens_top_and_bottom_tokens(tiny_model, resid_sae):
    top, bottom = logit_lens(tiny_model, resid_sae, 3, k=5)
    logits = feature_logits(tiny_model, resid_sae, 3)
    assert [v for _, v in top] == pytest.approx(torch.topk(logits, 5).values.tolist())
    assert [v for _, v in bottom] == pytest.approx((-torch.topk(-logits, 5).values).tolist())
    ids = torch.topk(logits, 5).indices.tolist()
    assert [s for s, _ in top] == token_strings(tiny_model.tokenizer, ids)
    with pytest.raises(FeatureIndexError):
        logit_lens(tiny_model, resid_sae, resid_sae.width)


def test_attn_out_and_clt_directions(tiny_model, gemma_scope_folders):
    attn = load_sae_folder(gemma_scope_folders["attn_out"])
    o_proj = tiny_model.layers[1].self_attn.o_proj.weight.detach()
    torch.testing.assert_close(feature_direction(tiny_model, attn, 4), o_proj @ attn.w_dec[4])
    clt = load_sae_folder(gemma_scope_folders["clt"])
    writes = clt.write_directions(1)
    torch.testing.assert_close(feature_direction(tiny_model, clt, 1), sum(writes.values()))
    assert len(logit_lens(tiny_model, clt, 1, k=3)[0]) == 3


def _brute_related(rows: torch.Tensor, f: int, k: int):
    sims = torch.nn.functional.cosine_similarity(rows, rows[f][None], dim=1)
    sims[f] = -float("inf")
    top = torch.topk(sims, k)
    return top.indices.tolist(), top.values.tolist()


def test_related_by_decoder_matches_a_full_cosine_matrix(resid_sae):
    got = related_by_decoder(resid_sae, 11, k=6, chunk=7)  # several chunks
    ids, vals = _brute_related(resid_sae.w_dec.float(), 11, 6)
    assert [g for g, _ in got] == ids
    assert [v for _, v in got] == pytest.approx(vals, abs=1e-5)


def test_related_by_decoder_for_a_clt(gemma_scope_folders):
    clt = load_sae_folder(gemma_scope_folders["clt"])
    rows = torch.stack([torch.cat([clt.write_directions(g).get(h, torch.zeros(clt.config.d_out))
                                   for h in clt.config.hook_points_out]) for g in range(clt.width)])
    got = related_by_decoder(clt, 5, k=4, chunk=5)
    ids, vals = _brute_related(rows, 5, 4)
    assert [g for g, _ in got] == ids
    assert [v for _, v in got] == pytest.approx(vals, abs=1e-5)
