"""The family tree across widths against a dense cosine computation and brute-force co-activation."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.analysis.related import nearest_decoder_rows
from gemscope_widgets.backend.analysis.width_family import family_tree
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.errors import MatryoshkaError
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae
from tests.helpers import SCAN_CORPUS, token_activations


def _sae(root, *, width, seed, layer=1, site="resid_post", model_name="tiny-gemma-3"):
    folder = root / f"{site}/layer_{layer}_width_{width}_l0_medium_{seed}"
    return load_sae_folder(write_gemma_scope_sae(folder, kind="sae", site=site, layer=layer, width=width,
                                                 seed=seed, threshold=0.3, model_name=model_name))


def dense_nearest(queries, keys, n):
    q = queries.w_dec / queries.w_dec.norm(dim=1, keepdim=True)
    k = keys.w_dec / keys.w_dec.norm(dim=1, keepdim=True)
    top = (q @ k.T).topk(n, dim=1)
    return top.indices, top.values


@pytest.mark.parametrize("chunk", [7, 64, 4096])
def test_nearest_equal_dense_cosine(tmp_path, chunk):
    narrow, wide = _sae(tmp_path, width=48, seed=1), _sae(tmp_path, width=200, seed=2)
    tree = family_tree(narrow, wide, 4, chunk=chunk, progress=False)
    idx, val = dense_nearest(wide, narrow, 4)
    assert torch.equal(tree.nearest, idx)
    torch.testing.assert_close(tree.cosine, val, rtol=0, atol=1e-5)
    # Children of a narrow latent: exactly the wide latents whose nearest it is.
    for nl in range(48):
        assert sorted(b.wide for b in tree.children(nl)) == (idx[:, 0] == nl).nonzero().flatten().tolist()
    assert sum(len(tree.children(nl)) for nl in range(48)) == 200


def test_self_comparison_leaves_each_row_out(tmp_path):
    sae = _sae(tmp_path, width=90, seed=5)
    idx, val = nearest_decoder_rows(sae, sae, 3, exclude_self=True, chunk=16)
    d = sae.w_dec / sae.w_dec.norm(dim=1, keepdim=True)
    sims = (d @ d.T).fill_diagonal_(-2.0)
    top = sims.topk(3, dim=1)
    assert torch.equal(idx, top.indices)
    torch.testing.assert_close(val, top.values, rtol=0, atol=1e-5)


def test_coactivation_equals_brute_force(tiny_model, tmp_path):
    narrow, wide = _sae(tmp_path, width=40, seed=1), _sae(tmp_path, width=120, seed=2)
    tree = family_tree(narrow, wide, 3, model=tiny_model, corpus=SCAN_CORPUS, progress=False)
    # max_doc_tokens of the pass is 128: the corpus's documents are shorter, so every token counts.
    on_w = token_activations(tiny_model, wide, SCAN_CORPUS, 128) > 0
    on_n = token_activations(tiny_model, narrow, SCAN_CORPUS, 128) > 0
    assert tree.n_tokens == on_w.shape[0]
    assert torch.equal(tree.wide_fired, on_w.sum(0))
    both = on_w.long().T @ on_n.long()  # [W_wide, W_narrow]
    fired = on_w.sum(0)
    want = both.gather(1, tree.nearest).double() / fired.clamp_min(1).unsqueeze(1).double()
    want[fired == 0] = float("nan")
    assert int((fired > 0).sum()) > 20
    torch.testing.assert_close(tree.coactivation.double(), want, equal_nan=True, rtol=0, atol=1e-6)
    branch = tree.parents(int(fired.argmax()))[0]
    assert branch.narrow == int(tree.nearest[fired.argmax(), 0]) and branch.p_narrow_given_wide is not None


def test_bad_pairs_are_refused(tmp_path):
    narrow = _sae(tmp_path, width=32, seed=1)
    with pytest.raises(MatryoshkaError, match="same site and layer"):
        family_tree(narrow, _sae(tmp_path, width=64, seed=2, layer=2), progress=False)
    with pytest.raises(MatryoshkaError, match="same site and layer"):
        family_tree(narrow, _sae(tmp_path, width=64, seed=2, site="mlp_out"), progress=False)
    with pytest.raises(MatryoshkaError, match="one model"):
        family_tree(narrow, _sae(tmp_path, width=64, seed=2, model_name="google/gemma-3-1b-pt"), progress=False)
    with pytest.raises(MatryoshkaError, match="narrow dictionary first"):
        family_tree(_sae(tmp_path, width=64, seed=2), narrow, progress=False)
