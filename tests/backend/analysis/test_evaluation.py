"""The SAE card against a hand computation on the tiny model (one document at a time, no padding)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gemscope_widgets.backend.analysis.evaluation import sae_card
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.stats.corpus import tokenize_docs
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "def fibonacci(n):\n    return n",
    "Sparse autoencoders find features in the residual stream.",
    "1, 2, 3, 4, 5",
]


def by_hand(gm, sae, texts, layer):
    w_enc, b_enc, thr, w_dec, b_dec = sae.w_enc, sae.b_enc, sae.threshold, sae.w_dec, sae.b_dec
    l0 = sq = 0.0
    targets, fired = [], torch.zeros(sae.width, dtype=torch.bool)
    loss = {"clean": [], "spliced": [], "zero": []}
    for ids in tokenize_docs(gm, texts, 64):
        ids_t = torch.tensor([ids])
        seen = {}
        # A decoder layer returns a tuple in transformers 4.x and the hidden state alone in 5.x.
        h = gm.layers[layer].register_forward_hook(
            lambda m, a, o, seen=seen: seen.__setitem__("x", o[0] if isinstance(o, tuple) else o)
        )
        with torch.no_grad():
            logits = gm.model(input_ids=ids_t).logits
        h.remove()
        x = seen["x"][0, 1:]  # without <bos>
        pre = x @ w_enc + b_enc
        acts = torch.where(pre > thr, pre, torch.zeros(()))
        recon = acts @ w_dec + b_dec
        fired |= (acts > 0).any(0)
        l0 += float((acts > 0).sum())
        sq += float(((recon - x) ** 2).sum())
        targets.append(x)
        loss["clean"].append(F.cross_entropy(logits[0, :-1], ids_t[0, 1:], reduction="none"))
        for label, new in (("spliced", recon), ("zero", torch.zeros_like(recon))):
            def replace(m, a, o, new=new):
                x = (o[0] if isinstance(o, tuple) else o).clone()
                x[0, 1:] = new
                return (x, *o[1:]) if isinstance(o, tuple) else x

            h = gm.layers[layer].register_forward_hook(replace)
            with torch.no_grad():
                out = gm.model(input_ids=ids_t).logits
            h.remove()
            loss[label].append(F.cross_entropy(out[0, :-1], ids_t[0, 1:], reduction="none"))
    t = torch.cat(targets).double()
    n = t.shape[0]
    means = {k: float(torch.cat(v).mean()) for k, v in loss.items()}
    return {
        "n_tokens": n,
        "l0": l0 / n,
        "fvu": sq / float(((t - t.mean(0)) ** 2).sum()),
        "dead_features": int((~fired).sum()),
        "loss_clean": means["clean"],
        "loss_spliced": means["spliced"],
        "loss_zero_ablation": means["zero"],
    }


def test_sae_card_matches_hand_computation(tiny_model, tmp_path):
    # High thresholds leave some features dead on five short texts.
    folder = write_gemma_scope_sae(tmp_path / "resid_post/layer_2_width_16k_l0_small", kind="sae",
                                   site="resid_post", layer=2, width=256, seed=5,
                                   threshold=torch.linspace(0.0, 3.0, 256))
    sae = load_sae_folder(folder)
    card = sae_card(tiny_model, sae, TEXTS, batch_size=2, progress=False)  # padded batches
    want = by_hand(tiny_model, sae, TEXTS, layer=2)
    assert card["n_tokens"] == want["n_tokens"]
    assert card["dead_features"] == want["dead_features"]
    assert 0 < card["dead_features"] < sae.width
    for key in ("l0", "fvu", "loss_clean", "loss_spliced", "loss_zero_ablation"):
        assert card[key] == pytest.approx(want[key], rel=1e-4), key
    assert card["loss_spliced"] != pytest.approx(card["loss_clean"], rel=1e-3)
    recovered = (want["loss_zero_ablation"] - want["loss_spliced"]) / (
        want["loss_zero_ablation"] - want["loss_clean"]
    )
    assert card["loss_recovered"] == pytest.approx(recovered, rel=1e-3)
    assert math.isclose(card["dead_fraction"], card["dead_features"] / 256)


def test_sae_card_runs_for_a_transcoder_and_removes_its_hooks(tiny_model, gemma_scope_folders):
    from tests.helpers import hook_ids

    before = hook_ids(tiny_model.model)
    sae = load_sae_folder(gemma_scope_folders["transcoder_affine"])
    card = sae_card(tiny_model, sae, TEXTS[:3], progress=False)
    assert hook_ids(tiny_model.model) == before
    assert card["n_tokens"] > 0 and card["fvu"] > 0
    assert card["loss_clean"] != card["loss_zero_ablation"]
