"""Prefix curves against a hand computation (encode, zero every latent >= k, decode, splice), the latent-order
statistics against scipy, and the refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gemscope_widgets.backend.analysis.evaluation import fvu
from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.analysis.matryoshka import (
    MATRYOSHKA_KEY,
    ORDER_RHO,
    check_sizes,
    default_sizes,
    first_latents,
    latent_order,
    prefix_curve,
    prefix_levels,
    spearman,
)
from gemscope_widgets.backend.dictionaries.loading import load_sae, load_sae_folder
from gemscope_widgets.backend.gemma.prompts import masked_ids
from gemscope_widgets.backend.gemma.sites import parse_hook_point
from gemscope_widgets.backend.stats.corpus import tokenize_docs
from gemscope_widgets.errors import MatryoshkaError
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae
from tests.helpers import SCAN_CORPUS


def by_hand(gm, sae, texts, sizes, max_doc_tokens):
    """Per prefix size: FVU, L0 and the spliced next-token loss, one document at a time with plain hooks."""
    layer, _, _ = parse_hook_point(sae.config.hook_in)
    hidden = torch.tensor(sorted(masked_ids(gm.tokenizer)))
    targets, recons = [], {k: [] for k in sizes}
    l0 = dict.fromkeys(sizes, 0.0)
    ce = {k: [] for k in ("clean", "zero", *sizes)}
    for ids in tokenize_docs(gm, texts, max_doc_tokens):
        ids_t = torch.tensor([ids])
        keep = ~torch.isin(ids_t[0], hidden)
        seen = {}
        h = gm.layers[layer].register_forward_hook(
            lambda m, a, o, seen=seen: seen.__setitem__("x", o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            logits = gm.model(input_ids=ids_t).logits
        h.remove()
        x = seen["x"][0].float()
        ce["clean"].append(F.cross_entropy(logits[0, :-1].float(), ids_t[0, 1:], reduction="none"))
        pre = x @ sae.w_enc + sae.b_enc
        acts = torch.where(pre > sae.threshold, pre, torch.zeros(()))
        targets.append(x[keep])
        for k in (*sizes, "zero"):
            if k == "zero":
                recon = torch.zeros_like(x)
            else:
                cut = acts.clone()
                cut[:, k:] = 0.0  # zero every latent >= k
                recon = cut @ sae.w_dec + sae.b_dec
                recons[k].append(recon[keep])
                l0[k] += float((cut[keep] > 0).sum())

            def splice(m, a, o, new=recon, keep=keep):
                h_out = (o[0] if isinstance(o, tuple) else o).clone()
                h_out[0, keep] = new[keep].to(h_out.dtype)
                return (h_out, *o[1:]) if isinstance(o, tuple) else h_out

            h = gm.layers[layer].register_forward_hook(splice)
            with torch.no_grad():
                out = gm.model(input_ids=ids_t).logits
            h.remove()
            ce[k].append(F.cross_entropy(out[0, :-1].float(), ids_t[0, 1:], reduction="none"))
    target = torch.cat(targets)
    n = target.shape[0]
    loss = {k: float(torch.cat(v).mean()) for k, v in ce.items()}
    return {
        "fvu": [fvu(target, torch.cat(recons[k])) for k in sizes],
        "l0": [l0[k] / n for k in sizes],
        "loss": [loss[k] for k in sizes],
        "clean": loss["clean"],
        "zero": loss["zero"],
        "n_tokens": n,
    }


def check_against_hand(gm, sae, texts, sizes, max_doc_tokens, rel):
    curve = prefix_curve(gm, sae, texts, sizes, max_doc_tokens=max_doc_tokens, batch_size=2, progress=False)
    want = by_hand(gm, sae, texts, sizes, max_doc_tokens)
    assert curve.n_tokens == want["n_tokens"]
    assert curve.fvu == pytest.approx(want["fvu"], rel=rel)
    assert curve.l0 == pytest.approx(want["l0"], rel=1e-9)
    assert curve.loss == pytest.approx(want["loss"], rel=rel)
    assert curve.loss_clean == pytest.approx(want["clean"], rel=rel)
    assert curve.loss_zero_ablation == pytest.approx(want["zero"], rel=rel)
    recovered = [(want["zero"] - s) / (want["zero"] - want["clean"]) for s in want["loss"]]
    assert curve.loss_recovered == pytest.approx(recovered, rel=1e-3, abs=1e-3)
    return curve


@pytest.fixture
def tiny_sae(tmp_path):
    folder = tmp_path / "resid_post/layer_1_width_16k_l0_medium"
    return load_sae_folder(write_gemma_scope_sae(folder, kind="sae", site="resid_post", layer=1, width=96,
                                                 seed=3, threshold=0.3))


def test_prefixes_equal_hand_computation_tiny(tiny_model, tiny_sae):
    curve = check_against_hand(tiny_model, tiny_sae, SCAN_CORPUS, [8, 40, 96], 24, rel=1e-4)
    assert curve.l0[0] < curve.l0[1] < curve.l0[2]  # the prefixes really differ


@pytest.mark.real_model
def test_prefixes_equal_hand_computation_real_270m(demo_scope_parts):
    from gemscope_widgets.backend.training.activations import held_out_texts

    gm, sae = demo_scope_parts[:2]
    curve = check_against_hand(gm, sae, held_out_texts(4), [128, 1024, 4096], 48, rel=1e-4)
    assert curve.fvu[0] > curve.fvu[-1]


def test_bad_sizes_are_refused(tiny_model, tiny_sae, tmp_path):
    for sizes, match in (([40, 8], "increase"), ([8, 8], "increase"), ([8, 97], "1..96"), ([0, 8], "1..96"),
                         ([], "at least one"), (["a"], "whole numbers")):
        with pytest.raises(MatryoshkaError, match=match):
            prefix_curve(tiny_model, tiny_sae, SCAN_CORPUS, sizes, progress=False)
    clt = load_sae(write_gemma_scope_sae(tmp_path / "clt", kind="clt", n_layers=4, width=12))
    with pytest.raises(MatryoshkaError, match="one-layer"):
        prefix_curve(tiny_model, clt, SCAN_CORPUS, [4], progress=False)
    assert default_sizes(4096) == [128, 512, 1024, 2048, 4096]
    assert check_sizes((1, 2.0), 2, "x") == [1, 2]


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = np.arange(500, dtype=float)
    for y in (rng.normal(size=500) - 0.004 * x, np.round(rng.exponential(size=500), 1), rng.normal(size=500)):
        rho, p = spearman(x, y)
        ref = stats.spearmanr(x, y)
        assert rho == pytest.approx(ref.statistic, abs=1e-12)
        assert p == pytest.approx(ref.pvalue, rel=0.05, abs=1e-12)
    assert math.isnan(spearman(x, np.ones(500))[0])


def test_latent_order_states_what_it_finds():
    rng = np.random.default_rng(1)
    w = 1024
    falling = np.sort(rng.exponential(0.01, size=w))[::-1].copy()
    order = latent_order(falling, falling**2, [128, 512, 1024])
    assert order.coarse_to_fine and order.rho_frequency < -0.99
    assert "are ordered coarse-to-fine" in order.finding and "ρ = -1.000" in order.finding
    flat = latent_order(rng.permutation(falling), falling, [128, 1024])
    assert not flat.coarse_to_fine and abs(flat.rho_frequency) < ORDER_RHO
    assert "not ordered" in flat.finding
    assert len(flat.group_frequency) == 2


def test_first_latents_equal_zeroing_every_later_latent(tiny_model, tiny_sae):
    acts = prompt_features(tiny_model, [tiny_sae], SCAN_CORPUS[0])[0]
    full = acts.dense()
    assert (full[:, :8] > 0).any() and (full[:, 8:] > 0).any()  # both sides of the cut fire
    for k in (1, 8, 40, 96):
        cut = first_latents(acts, k)
        expected = full.clone()
        expected[:, k:] = 0.0  # zero every latent >= k
        assert torch.equal(cut.dense(), expected)
        for t in range(cut.n_tokens):  # each row stays largest first, as the heatmap reads it
            values = cut.token(t)[1]
            assert np.all(np.diff(values) <= 0)
    for bad in (0, 97, -1, 2.5, "x"):
        with pytest.raises(MatryoshkaError, match="outside|whole number of latents"):
            first_latents(acts, bad)


def test_prefix_levels_are_the_recorded_groups_else_default_sizes(tiny_sae, tmp_path):
    assert prefix_levels(tiny_sae) == [3, 12, 24, 48, 96]
    folder = tmp_path / "resid_post/layer_1_width_16k_l0_medium_m"
    write_gemma_scope_sae(folder, kind="sae", site="resid_post", layer=1, width=96, seed=3)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, MATRYOSHKA_KEY: [16, 64, 96]}))
    assert prefix_levels(load_sae_folder(folder)) == [16, 64, 96]
