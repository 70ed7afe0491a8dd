"""prompt_features: sparse activations equal the dense SAE math, for every kind, from one forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemscope_widgets.backend.analysis.features import prompt_features, sae_inputs
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.backend.gemma.capture import capture

KINDS = ["resid_post", "mlp_out", "attn_out", "transcoder", "transcoder_affine", "clt", "crosscoder"]
TEXT = "The quick brown fox jumps over the lazy dog. def fibonacci(n): return n"


def _dense_reference(gm, sae, prompt):
    acts = capture(gm, prompt.input_ids, sae.config.hook_points_in, stop_early=False)
    x = sae_inputs(sae, {k: v[0] for k, v in acts.items()})
    dense = sae.encode(x).float()
    dense[prompt.masked] = 0.0
    return dense


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_features_equal_dense_encode(tiny_model, gemma_scope_folders, kind):
    sae = load_sae(gemma_scope_folders[kind])
    (sa,) = prompt_features(tiny_model, [sae], TEXT)
    reference = _dense_reference(tiny_model, sae, sa.prompt)
    assert sa.nnz > 0, "the fixture SAE should fire on this text"
    torch.testing.assert_close(sa.dense(), reference, rtol=1e-6, atol=1e-6)
    assert sa.width == sae.width and sa.n_tokens == len(sa.prompt)
    # <bos> is masked; every row is sorted largest first.
    assert sa.token(0)[0].size == 0
    for t in range(sa.n_tokens):
        _, values = sa.token(t)
        assert np.all(np.diff(values) <= 0)
    f = int(sa.indices[0])
    np.testing.assert_allclose(sa.feature(f), reference[:, f].numpy(), rtol=1e-6)


def test_several_saes_share_one_forward_pass(tiny_model, gemma_scope_folders):
    saes = [load_sae(gemma_scope_folders[k]) for k in ("resid_post", "mlp_out", "attn_out")]
    calls = []
    handle = tiny_model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        results = prompt_features(tiny_model, saes, TEXT)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert [r.sae_name for r in results] == [s.config.name for s in saes]


def test_long_prompts_are_encoded_in_chunks_exactly(tiny_model, gemma_scope_folders):
    sae = load_sae(gemma_scope_folders["resid_post"])
    text = " ".join(["Sparse autoencoders find features."] * 90)
    (sa,) = prompt_features(tiny_model, [sae], text)
    assert sa.n_tokens > 2 * 256  # more than two encode chunks
    torch.testing.assert_close(sa.dense(), _dense_reference(tiny_model, sae, sa.prompt), rtol=1e-6, atol=1e-6)


def test_unmasked_bos_is_kept_when_asked(tiny_model, gemma_scope_folders):
    sae = load_sae(gemma_scope_folders["resid_post"])
    (sa,) = prompt_features(tiny_model, [sae], TEXT, mask_special=False)
    assert sa.token(0)[0].size > 0
