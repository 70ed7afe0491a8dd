"""Training JumpReLU SAEs in the Gemma Scope 2 layout, on the tiny random Gemma 3."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.backend.stats.corpus import default_corpus
from gemscope_widgets.backend.training import fit
from gemscope_widgets.backend.training.activations import collect_activations, token_windows
from gemscope_widgets.backend.training.fit import fit_jumprelu
from gemscope_widgets.backend.training.jumprelu import StackedJumpReLU
from gemscope_widgets.backend.training.train import hook_point, train_sae
from gemscope_widgets.errors import TrainingError

LAYER = 1
WIDTH = 128
TARGET_L0 = 8
TRAIN = {"width": WIDTH, "target_l0": TARGET_L0, "n_tokens": 6000, "steps": 200, "batch_size": 256, "ctx": 64}


@pytest.fixture(scope="module")
def tiny_corpus() -> list[str]:
    return default_corpus(max_docs=400)


@pytest.fixture(scope="module")
def tiny_acts(tiny_model, tiny_corpus) -> torch.Tensor:
    windows = token_windows(tiny_model.tokenizer, tiny_corpus, 64)
    return collect_activations(
        tiny_model, hook_point("resid_post", LAYER), windows, max_tokens=6000, progress=False
    )


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae") / "layer_1"
    return train_sae(tiny_model, LAYER, corpus=tiny_corpus, out_dir=out, seed=0, progress=False, **TRAIN)


def test_folder_is_exact_gemma_scope_2_layout(trained, tiny_model):
    config = json.loads((trained / "config.json").read_text())
    assert set(config) == {
        "hf_hook_point_in", "hf_hook_point_out", "width", "model_name", "architecture", "l0",
        "affine_connection", "type",
    }
    assert config["hf_hook_point_in"] == config["hf_hook_point_out"] == f"model.layers.{LAYER}.output"
    assert config["width"] == WIDTH
    assert config["model_name"] == tiny_model.name
    assert config["architecture"] == "jump_relu"
    assert config["affine_connection"] is False
    assert config["type"] == "sae"
    assert isinstance(config["l0"], int)
    params = load_file(str(trained / "params.safetensors"))
    d = tiny_model.d_model
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    assert shapes == {"w_enc": (d, WIDTH), "w_dec": (WIDTH, d), "b_enc": (WIDTH,), "b_dec": (d,), "threshold": (WIDTH,)}
    assert all(v.dtype == torch.float32 for v in params.values())
    # GS2 decoders have unit rows: activations are in the residual stream's own units.
    torch.testing.assert_close(params["w_dec"].norm(dim=1), torch.ones(WIDTH))
    assert not list(trained.parent.glob(".layer_1.*")), "the temporary folder was left behind"


def test_loads_through_load_sae_and_hits_target_l0(trained, tiny_acts, tiny_model):
    sae = load_sae(trained)
    assert sae.config.width == WIDTH
    acts = sae.encode(tiny_acts)
    l0 = float((acts > 0).sum(-1).float().mean())
    assert abs(l0 - TARGET_L0) / TARGET_L0 < 0.3, l0
    assert json.loads((trained / "config.json").read_text())["l0"] == pytest.approx(l0, abs=2)
    recon = sae.decode(acts)
    fvu = float(((recon - tiny_acts) ** 2).sum() / ((tiny_acts - tiny_acts.mean(0)) ** 2).sum())
    assert fvu < 0.5, fvu


def test_folded_mean_and_scale_match_training_time_math():
    gen = torch.Generator().manual_seed(3)
    sae = StackedJumpReLU(16, 16, 32, [gen], tied=True)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=gen)
        sae.b_dec.normal_(0, 1.0, generator=gen)
        sae.log_threshold.uniform_(-4, -1, generator=gen)
    scale, mean = 7123.5, torch.randn(16, generator=gen) * 3000
    x = torch.randn(200, 16, generator=gen) * scale + mean
    acts_n, recon_n = sae.layer_forward(0, (x - mean) / scale)
    params = sae.fold(0, mean, mean, scale, scale)
    pre = x @ params["w_enc"] + params["b_enc"]
    acts = torch.relu(pre) * (pre > params["threshold"])
    recon = acts @ params["w_dec"] + params["b_dec"]
    assert (acts > 0).any()
    assert torch.equal(acts > 0, acts_n > 0)
    torch.testing.assert_close(acts, acts_n * scale, rtol=1e-4, atol=1e-1)
    torch.testing.assert_close(recon, recon_n * scale + mean, rtol=1e-4, atol=1e-1)


def test_same_seed_same_weights_other_seed_other_weights(tiny_model, tiny_corpus, tmp_path):
    short = {**TRAIN, "steps": 30, "n_tokens": 2000}

    def run(name: str, seed: int) -> dict[str, torch.Tensor]:
        out = train_sae(
            tiny_model, LAYER, corpus=tiny_corpus, out_dir=tmp_path / name, seed=seed, progress=False, **short
        )
        return load_file(str(out / "params.safetensors"))

    first, second, third = run("a", 0), run("b", 0), run("c", 1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["w_enc"], third["w_enc"])


def test_resampling_revives_dead_features(tiny_acts):
    dead_at_start = torch.arange(0, WIDTH, 4)  # a quarter of the features start unable to fire
    common = {"width": WIDTH, "target_l0": TARGET_L0, "steps": 200, "batch_size": 256, "progress": False}
    params, report = fit_jumprelu(tiny_acts, resample_every=25, dead_features_init=dead_at_start, **common)
    alive = fit.alive_in(tiny_acts, params)
    assert report.resampled >= len(dead_at_start)
    assert alive[dead_at_start].float().mean() > 0.8
    assert report.dead_fraction < 0.1
    # Without resampling the same features stay dead: the test above is measuring the resampler.
    params_off, report_off = fit_jumprelu(tiny_acts, revive_dead=False, dead_features_init=dead_at_start, **common)
    assert not fit.alive_in(tiny_acts, params_off)[dead_at_start].any()
    assert report_off.dead_fraction >= 0.25


def test_bad_arguments_raise_clear_errors(tiny_model, tiny_acts):
    with pytest.raises(TrainingError, match="outside the model"):
        train_sae(tiny_model, 99, progress=False)
    with pytest.raises(TrainingError, match="unknown SAE site"):
        train_sae(tiny_model, 0, site="resid_pre", progress=False)
    with pytest.raises(TrainingError, match="target_l0"):
        fit_jumprelu(tiny_acts, width=16, target_l0=40, steps=1, progress=False)
    with pytest.raises(TrainingError, match="fewer than"):
        train_sae(tiny_model, 0, corpus=["too short"], progress=False)


def test_other_sites_use_their_gemma_scope_hook_points(tiny_model, tiny_corpus, tmp_path):
    out = train_sae(
        tiny_model, 2, site="attn_out", corpus=tiny_corpus, out_dir=tmp_path / "attn", progress=False,
        **{**TRAIN, "steps": 20},
    )
    config = json.loads((out / "config.json").read_text())
    assert config["hf_hook_point_in"] == "model.layers.2.self_attn.o_proj.input"
    # attn_out SAEs read the concatenated heads, wider than d_model.
    assert load_file(str(out / "params.safetensors"))["w_enc"].shape[0] == 4 * 24


def _with_a_dense_direction(n: int, seed: int) -> torch.Tensor:
    """Sparse data (48 directions, each on 6 % of rows) plus one direction on 40 % of rows."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(49, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    coef = (torch.rand(n, 48, generator=g) < 0.06) * (1 + torch.rand(n, 48, generator=g))
    dense = (torch.rand(n, 1, generator=g) < 0.4) * (3 + torch.rand(n, 1, generator=g))
    return coef @ dirs[:48] + dense * dirs[48]


def test_frequency_penalty_keeps_features_under_the_cap():
    train, held = _with_a_dense_direction(20_000, 1), _with_a_dense_direction(5_000, 2)
    common = {"width": 64, "target_l0": 4, "steps": 400, "batch_size": 256, "seed": 0, "progress": False}

    def max_density(params):
        pre = held @ params["w_enc"] + params["b_enc"]
        return float(((pre > params["threshold"]) & (pre > 0)).float().mean(0).max())

    plain, _ = fit_jumprelu(train, **common)
    capped, report = fit_jumprelu(train, max_frequency=0.1, dense_coefficient=4.0, **common)
    assert max_density(plain) > 0.3  # without the penalty a feature takes the dense direction
    assert max_density(capped) < 0.15
    assert abs(report.l0 - 4) < 1
