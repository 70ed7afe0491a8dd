"""Parents and children against a brute-force computation from dense per-token activations (tiny model)."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.analysis.hierarchy import latent_family
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.stats.cofiring import count_cofiring
from gemscope_widgets.errors import FeatureIndexError, MatryoshkaError
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae
from tests.helpers import SCAN_CORPUS, token_activations

WIDTH = 96
MIN_COFIRING, MIN_COSINE, MIN_FIRINGS = 0.5, 0.2, 3


@pytest.fixture(scope="module")
def sae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae") / "resid_post/layer_1_width_16k_l0_medium"
    return load_sae_folder(write_gemma_scope_sae(folder, kind="sae", site="resid_post", layer=1, width=WIDTH,
                                                 seed=3, threshold=0.3))


@pytest.fixture(scope="module")
def counts(tiny_model, sae):
    # Every pair above the cosine floor is a candidate (max_partners = width): nothing is cut.
    return count_cofiring(tiny_model, sae, None, SCAN_CORPUS, max_partners=WIDTH, min_cosine=MIN_COSINE,
                          max_doc_tokens=24, batch_size=3, progress=False)


def brute_force(acts: torch.Tensor, sae) -> tuple[dict, dict]:
    on = (acts > 0).long()
    both = on.T @ on  # [W, W] tokens both fired on
    fired = on.sum(0)
    d = sae.w_dec / sae.w_dec.norm(dim=1, keepdim=True)
    cos = d @ d.T
    parents, children = {}, {}
    for f in range(WIDTH):
        parents[f] = sorted(
            p for p in range(f)
            if fired[f] >= MIN_FIRINGS and both[p, f] / fired[f] >= MIN_COFIRING and cos[p, f] >= MIN_COSINE
        )
        children[f] = sorted(
            c for c in range(f + 1, WIDTH)
            if fired[c] >= MIN_FIRINGS and both[f, c] / fired[c] >= MIN_COFIRING and cos[f, c] >= MIN_COSINE
        )
    return parents, children


def test_parents_and_children_equal_brute_force(tiny_model, sae, counts):
    acts = token_activations(tiny_model, sae, SCAN_CORPUS, 24)
    assert counts.n_tokens == acts.shape[0]
    assert torch.equal(counts.fired_a, (acts > 0).sum(0))
    want_parents, want_children = brute_force(acts, sae)
    assert sum(len(v) for v in want_parents.values()) >= 5  # the comparison has something to compare
    on = (acts > 0).long()
    both = on.T @ on
    for f in range(WIDTH):
        fam = latent_family(counts, f, min_cofiring=MIN_COFIRING, min_cosine=MIN_COSINE, min_firings=MIN_FIRINGS)
        assert sorted(r.latent for r in fam.parents) == want_parents[f], f
        assert sorted(r.latent for r in fam.children) == want_children[f], f
        for r in fam.parents:
            assert r.count == int(both[r.latent, f])
            assert r.p_implied == pytest.approx(int(both[r.latent, f]) / int(on[:, f].sum()))
        for r in fam.children:
            assert r.p_implied == pytest.approx(int(both[f, r.latent]) / int(on[:, r.latent].sum()))
        assert [r.p_implied for r in fam.parents] == sorted((r.p_implied for r in fam.parents), reverse=True)


def test_pair_counts_equal_brute_force(tiny_model, sae, counts):
    acts = token_activations(tiny_model, sae, SCAN_CORPUS, 24)
    on = (acts > 0).long()
    both = on.T @ on
    assert counts.count.numel() > 100
    assert torch.equal(counts.count, both[counts.pair_a, counts.pair_b])
    assert bool((counts.pair_a < counts.pair_b).all())


def test_bad_latent_and_cross_dictionary_counts(tiny_model, sae, counts, tmp_path):
    with pytest.raises(FeatureIndexError):
        latent_family(counts, WIDTH)
    wide = load_sae_folder(write_gemma_scope_sae(tmp_path / "resid_post/layer_1_width_16k_l0_big", kind="sae",
                                                 site="resid_post", layer=1, width=2 * WIDTH, seed=4))
    across = count_cofiring(tiny_model, wide, sae, SCAN_CORPUS[:2], max_doc_tokens=24, progress=False)
    with pytest.raises(MatryoshkaError, match="one dictionary"):
        latent_family(across, 0)
