"""Training a set of affine skip-transcoders in the Gemma Scope 2 layout, on the tiny random Gemma 3."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.backend.stats.corpus import default_corpus
from gemscope_widgets.backend.training.activations import split_corpus, token_windows
from gemscope_widgets.backend.training.transcoders import (
    collect_mlp_pairs,
    fit_transcoders,
    folder_name,
    mlp_in_point,
    mlp_out_point,
    train_transcoders,
)
from gemscope_widgets.errors import TrainingError

WIDTH = 128
QUICK = {"width": WIDTH, "target_l0": 8, "n_tokens": 6000, "steps": 150, "batch_size": 256, "ctx": 64}


@pytest.fixture(scope="module")
def corpus_split() -> tuple[list[str], list[str]]:
    return split_corpus(default_corpus(max_docs=500))


@pytest.fixture(scope="module")
def trained_set(tiny_model, corpus_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("transcoders") / "set"
    return train_transcoders(tiny_model, out, corpus=corpus_split[0], seed=0, progress=False, **QUICK)


def _folders(root, n_layers):
    return [root / "transcoder_all" / folder_name(layer, WIDTH, "small") for layer in range(n_layers)]


def test_set_is_exact_gemma_scope_2_layout_and_loads_with_load_sae(trained_set, tiny_model):
    d = tiny_model.d_model
    folders = _folders(trained_set, tiny_model.n_layers)
    assert sorted(p.name for p in (trained_set / "transcoder_all").iterdir()) == sorted(f.name for f in folders)
    assert folders[2].name == "layer_2_width_128_l0_small_affine"
    for layer, folder in enumerate(folders):
        config = json.loads((folder / "config.json").read_text())
        assert config == {
            "hf_hook_point_in": f"model.layers.{layer}.pre_feedforward_layernorm.output",
            "hf_hook_point_out": f"model.layers.{layer}.post_feedforward_layernorm.output",
            "width": WIDTH,
            "model_name": tiny_model.name,
            "architecture": "jump_relu",
            "l0": config["l0"],
            "affine_connection": True,
            "type": "transcoder",
        }
        assert isinstance(config["l0"], int) and 1 <= config["l0"] <= 40
        params = load_file(str(folder / "params.safetensors"))
        assert {k: tuple(v.shape) for k, v in params.items()} == {
            "w_enc": (d, WIDTH), "b_enc": (WIDTH,), "threshold": (WIDTH,), "w_dec": (WIDTH, d), "b_dec": (d,),
            "affine_skip_connection": (d, d),
        }
        assert all(v.dtype == torch.float32 for v in params.values())
        torch.testing.assert_close(params["w_dec"].norm(dim=1), torch.ones(WIDTH))
        tc = load_sae(folder)
        assert tc.config.kind == "transcoder" and tc.config.affine and tc.config.layer == layer
        assert tc.config.name == f"transcoder_all/{folder.name}"
        # The loaded module computes the GS2 math on raw activations.
        x = torch.randn(5, d) * 3
        pre = x @ params["w_enc"] + params["b_enc"]
        want = (torch.relu(pre) * (pre > params["threshold"])) @ params["w_dec"] + params["b_dec"]
        want += x @ params["affine_skip_connection"]
        torch.testing.assert_close(tc(x), want)
    report = json.loads((trained_set / "training.json").read_text())
    assert [row["layer"] for row in report["layers"]] == list(range(tiny_model.n_layers))


def test_fvu_on_held_out_text_beats_the_mean_and_replacement_beats_ablation(trained_set, tiny_model, corpus_split):
    from gemscope_widgets.backend.default_transcoders import transcoder_set_quality

    tcs = [load_sae(f) for f in _folders(trained_set, tiny_model.n_layers)]
    card = transcoder_set_quality(tiny_model, tcs, corpus_split[1], max_tokens=3000, loss_docs=8, progress=False)
    assert card["n_tokens"] == 3000
    # The tiny model's MLPs are random (no structure to find in 150 steps): the bound here is predicting better
    # than the mean; the Gemma Scope-like bound (FVU <= 0.3) is checked on the real 270M below.
    for row in card["layers"]:
        assert row["fvu"] < 1.0, row
        assert 1 <= row["l0"] <= 40, row
    # Replacing every MLP at once costs less than removing them.
    assert card["loss_clean"] <= card["loss_replaced"] + 0.05
    assert card["loss_replaced"] < card["loss_mlps_zeroed"]


def test_training_folds_scales_into_raw_units(tiny_model, corpus_split):
    # The FVU the fit reports (raw-unit params on raw activations) matches the folder loaded back.
    windows = token_windows(tiny_model.tokenizer, corpus_split[0], 64, max_windows=40)
    xs, ys = collect_mlp_pairs(tiny_model, windows, [1], max_tokens=2000, progress=False)
    params, reports = fit_transcoders(xs, ys, width=64, target_l0=6, steps=60, batch_size=256, progress=False)
    p = params[0]
    pre = xs[0] @ p["w_enc"] + p["b_enc"]
    out = (torch.relu(pre) * (pre > p["threshold"])) @ p["w_dec"] + p["b_dec"] + xs[0] @ p["affine_skip_connection"]
    fvu = float(((out - ys[0]) ** 2).sum() / ((ys[0] - ys[0].mean(0)) ** 2).sum())
    assert fvu == pytest.approx(reports[0].fvu, rel=0.05)


def test_collect_mlp_pairs_matches_capture_per_layer(tiny_model):
    from gemscope_widgets.backend.gemma.capture import capture

    ids = tiny_model.prompt("Paris is the capital of France.").input_ids.unsqueeze(0)
    xs, ys = collect_mlp_pairs(tiny_model, ids, [0, 3], progress=False)
    for i, layer in enumerate([0, 3]):
        got = capture(tiny_model, ids, [mlp_in_point(layer), mlp_out_point(layer)])
        torch.testing.assert_close(xs[i], got[mlp_in_point(layer)][0, 1:].float())  # <bos> dropped
        torch.testing.assert_close(ys[i], got[mlp_out_point(layer)][0, 1:].float())


def test_batched_fit_equals_per_layer_fits():
    gen = torch.Generator().manual_seed(0)
    n_layers, n, d = 3, 600, 16
    xs = torch.randn(n_layers, n, d, generator=gen) * torch.tensor([1.0, 5.0, 30.0]).view(-1, 1, 1)
    mix = torch.randn(n_layers, d, d, generator=gen)
    ys = torch.relu(xs @ mix) @ torch.randn(n_layers, d, d, generator=gen) / d + 2.0
    options = {"width": 32, "target_l0": 4, "steps": 40, "batch_size": 64, "resample_every": 10, "progress": False}
    batched, batched_reports = fit_transcoders(xs, ys, layers=[4, 5, 6], **options)
    for i, layer in enumerate([4, 5, 6]):
        alone, alone_reports = fit_transcoders(xs[i : i + 1], ys[i : i + 1], layers=[layer], **options)
        for key, value in batched[i].items():
            torch.testing.assert_close(value, alone[0][key], rtol=1e-4, atol=1e-4 * float(value.abs().max()))
        assert batched_reports[i].resampled == alone_reports[0].resampled


def test_layers_a_linear_map_explains_worst_get_the_hard_steps():
    # Layer 0's output is linear in its input (skip-only FVU ~0), layers 1 and 2 are not: with a cut between, 1 and
    # 2 are fitted for hard_steps, and every layer equals its fit alone with its own number of steps.
    gen = torch.Generator().manual_seed(4)
    n, d = 600, 16
    xs = torch.randn(3, n, d, generator=gen)
    linear = xs[0] @ torch.randn(d, d, generator=gen)
    hidden = torch.relu(xs[1:] @ torch.randn(2, d, 4 * d, generator=gen) - 1.0)
    nonlinear = hidden @ torch.randn(2, 4 * d, d, generator=gen)
    ys = torch.cat([linear[None], nonlinear])
    options = {"width": 32, "target_l0": 4, "steps": 30, "batch_size": 64, "resample_every": 10, "progress": False}
    params, reports = fit_transcoders(xs, ys, hard_skip_fvu=0.2, hard_steps=50, **options)
    assert reports[0].fvu_skip_only < 0.2 < min(reports[1].fvu_skip_only, reports[2].fvu_skip_only)
    assert [r.steps for r in reports] == [30, 50, 50]
    for layer, steps in [(0, 30), (1, 50), (2, 50)]:
        one = {**options, "steps": steps}
        alone, _ = fit_transcoders(xs[layer : layer + 1], ys[layer : layer + 1], layers=[layer], **one)
        for key, value in params[layer].items():
            torch.testing.assert_close(value, alone[0][key], rtol=1e-4, atol=1e-4 * float(value.abs().max()))
    # More steps for the non-linear layers fit them better than the plain budget does.
    _, plain = fit_transcoders(xs, ys, **options)
    assert reports[1].fvu < plain[1].fvu and reports[2].fvu < plain[2].fvu


def test_mixed_precision_fit_matches_float32():
    # bfloat16 matrix products (the demo recipe's setting on CPUs with native bf16) reach the float32 fit's quality.
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(2, 1500, 16, generator=gen)
    hidden = torch.relu(xs @ torch.randn(2, 16, 64, generator=gen) - 1.5)
    ys = hidden @ torch.randn(2, 64, 16, generator=gen) / 8 + 0.5 * xs
    options = {"width": 64, "target_l0": 6, "steps": 80, "batch_size": 128, "progress": False}
    _, full = fit_transcoders(xs, ys, **options)
    _, mixed = fit_transcoders(xs, ys, mixed_precision=True, **options)
    for a, b in zip(full, mixed):
        assert b.fvu == pytest.approx(a.fvu, abs=0.02)
        assert b.l0 == pytest.approx(a.l0, rel=0.2)


def test_bad_arguments_raise_training_errors(tiny_model, tmp_path):
    with pytest.raises(TrainingError, match="outside"):
        train_transcoders(tiny_model, tmp_path / "x", layers=[7], progress=False)
    with pytest.raises(TrainingError, match="same L and N"):
        fit_transcoders(torch.zeros(2, 10, 4), torch.zeros(3, 10, 4), width=8, target_l0=2, steps=1)
    with pytest.raises(TrainingError, match="target_l0"):
        fit_transcoders(torch.zeros(1, 10, 4), torch.zeros(1, 10, 4), width=8, target_l0=9, steps=1)
    assert not (tmp_path / "x").exists()


@pytest.mark.real_model
@pytest.mark.slow
def test_demo_set_reconstructs_every_layer_on_held_out_text(real_model):
    # Trains the demo set on first use (one activation pass and the batched fit), then measures it on held-out text.
    # Measured (v3): held-out FVU 0.02-0.288 per layer (mean 0.169); with all 18 MLPs replaced the loss is 6.43,
    # against 10.71 with every MLP zeroed and 3.83 clean. The targets are asserted as they stand.
    from gemscope_widgets.backend.default_transcoders import demo_transcoders_quality

    card = demo_transcoders_quality(real_model, progress=False)
    assert len(card["layers"]) == 18
    bad = {row["layer"]: round(row["fvu"], 3) for row in card["layers"] if row["fvu"] > 0.3}
    assert not bad, f"held-out FVU above 0.3 on layers {bad}"
    assert sum(row["fvu"] for row in card["layers"]) / 18 <= 0.2, card["layers"]
    assert card["loss_replaced"] < card["loss_mlps_zeroed"], "all 18 transcoders at once are worse than no MLPs"
    assert card["loss_clean"] < card["loss_mlps_zeroed"]
