"""Exact Gemma Scope 2 math for every kind, against hand computations and explicit loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemscope_widgets.backend.dictionaries.folder import save_gemma_scope_folder
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.backend.dictionaries.sae import Crosscoder, CrossLayerTranscoder, JumpReLUSAE
from gemscope_widgets.errors import FeatureIndexError, GemscopeError, SAEModelMismatch
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae

HAND_CONFIG = {
    "hf_hook_point_in": "model.layers.3.output",
    "hf_hook_point_out": "model.layers.3.output",
    "width": 4,
    "model_name": "tiny-gemma-3",
    "architecture": "jump_relu",
    "l0": 2,
    "affine_connection": False,
    "type": "sae",
}


@pytest.fixture
def hand_sae(tmp_path):
    # Feature 1 sits exactly at its threshold for x = [1, 1]; feature 3 has a negative threshold, so a
    # negative pre-activation above it must still give 0 through the relu.
    params = {
        "w_enc": torch.tensor([[1.0, 0.0, -1.0, 1.0], [0.0, 2.0, 1.0, 0.0]]),
        "b_enc": torch.tensor([0.0, -1.0, 0.5, 0.5]),
        "threshold": torch.tensor([0.5, 1.0, 0.0, -1.0]),
        "w_dec": torch.tensor([[1.0, 2.0], [3.0, 4.0], [-1.0, 0.5], [0.25, -2.0]]),
        "b_dec": torch.tensor([10.0, 20.0]),
    }
    return load_sae(save_gemma_scope_folder(tmp_path / "resid_post" / "layer_3_width_4_l0_small", HAND_CONFIG, params))


def test_jumprelu_matches_hand_computation(hand_sae):
    x = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    # pre row 0 = [1, 1, 0.5, 1.5]; row 1 = [-1, -1, 1.5, -0.5]
    expected_acts = torch.tensor([[1.0, 0.0, 0.5, 1.5], [0.0, 0.0, 1.5, 0.0]])
    acts = hand_sae.encode(x)
    assert torch.equal(acts, expected_acts)
    # recon = acts @ w_dec + b_dec, by hand
    expected = torch.tensor(
        [
            [10 + 1 * 1 + 0.5 * -1 + 1.5 * 0.25, 20 + 1 * 2 + 0.5 * 0.5 + 1.5 * -2],
            [10 + 1.5 * -1, 20 + 1.5 * 0.5],
        ]
    )
    assert torch.allclose(hand_sae.decode(acts), expected)
    assert torch.allclose(hand_sae(x), expected)


def test_exactly_at_threshold_is_off_and_just_above_is_on(hand_sae):
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0 + 1e-3]])  # feature 1: pre = 2*x1 - 1 -> 1.0 (== thr), 1.002
    acts = hand_sae.encode(x)
    assert acts[0, 1] == 0
    assert acts[1, 1] == pytest.approx(1.002, abs=1e-5)


def test_encode_is_fp32_whatever_the_input_dtype(hand_sae):
    x = torch.tensor([[1.0, 1.0], [0.3, -0.7]], dtype=torch.bfloat16)
    acts = hand_sae.encode(x)
    assert acts.dtype == torch.float32
    assert torch.equal(acts, hand_sae.encode(x.float()))
    assert hand_sae.decode(acts).dtype == torch.float32


def test_encode_accepts_any_leading_shape_and_rejects_wrong_width(hand_sae):
    x = torch.randn(2, 3, 5, 2)
    assert hand_sae.encode(x).shape == (2, 3, 5, 4)
    with pytest.raises(SAEModelMismatch, match="d_in=2.*last dimension 3"):
        hand_sae.encode(torch.randn(5, 3))
    with pytest.raises(SAEModelMismatch, match="4 features"):
        hand_sae.decode(torch.randn(5, 3))


def test_feature_activation_and_write_directions(hand_sae):
    x = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    for f in range(4):
        assert torch.equal(hand_sae.feature_activation(f, {"model.layers.3.output": x}), hand_sae.encode(x)[:, f])
    dirs = hand_sae.write_directions(3)
    assert list(dirs) == ["model.layers.3.output"]
    assert torch.equal(dirs["model.layers.3.output"], torch.tensor([0.25, -2.0]))
    assert hand_sae.read_hook_points == ("model.layers.3.output",)
    with pytest.raises(GemscopeError, match=r"model\.layers\.3\.output"):
        hand_sae.feature_activation(0, {"model.layers.2.output": x})


@pytest.mark.parametrize("bad", [4, -1, 100, 2.5, "1"])
def test_feature_index_errors_name_the_valid_range(hand_sae, bad):
    with pytest.raises(FeatureIndexError, match=r"0\.\.3"):
        hand_sae.check_feature(bad)
    with pytest.raises(FeatureIndexError):
        hand_sae.write_directions(bad)


def test_feature_index_accepts_numpy_and_torch_integers(hand_sae):
    assert hand_sae.check_feature(np.int64(3)) == 3
    assert hand_sae.check_feature(torch.tensor(2)) == 2


def test_affine_skip_is_x_at_matrix_without_transpose(tmp_path):
    d_in, d_out, width = 3, 2, 5
    gen = torch.Generator().manual_seed(0)
    skip = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # [d_in, d_out]: only x @ skip has the right shape
    params = {
        "w_enc": torch.randn(d_in, width, generator=gen),
        "b_enc": torch.randn(width, generator=gen),
        "threshold": torch.rand(width, generator=gen) * 0.1,
        "w_dec": torch.randn(width, d_out, generator=gen),
        "b_dec": torch.randn(d_out, generator=gen),
        "affine_skip_connection": skip,
    }
    cfg = dict(
        HAND_CONFIG,
        type="transcoder",
        width=width,
        affine_connection=True,
        hf_hook_point_in="model.layers.1.pre_feedforward_layernorm.output",
        hf_hook_point_out="model.layers.1.post_feedforward_layernorm.output",
    )
    tc = load_sae(save_gemma_scope_folder(tmp_path / "transcoder" / "layer_1_affine", cfg, params))
    assert tc.config.affine and (tc.config.d_in, tc.config.d_out) == (3, 2)
    x = torch.tensor([[1.0, 0.0, 0.0], [0.5, -1.0, 2.0]])
    pre = x @ params["w_enc"] + params["b_enc"]
    acts = torch.relu(pre) * (pre > params["threshold"])
    expected = acts @ params["w_dec"] + params["b_dec"] + x @ skip
    assert torch.allclose(tc(x), expected)
    assert torch.allclose(tc.decode(tc.encode(x), x), expected)
    # x = e_0 picks the first ROW of the stored matrix: [1, 2], not the first column [1, 3, 5].
    assert torch.allclose(tc.decode(torch.zeros(1, width), x[:1]) - params["b_dec"], skip[0:1])
    with pytest.raises(GemscopeError, match="needs the input x"):
        tc.decode(acts)


def test_square_affine_transcoder_from_fixture_is_not_transposed(gemma_scope_folders):
    tc = load_sae(gemma_scope_folders["transcoder_affine"])
    skip = tc.affine_skip_connection
    assert not torch.allclose(skip, skip.T)
    x = torch.randn(7, 64)
    expected = tc.decode(tc.encode(x), x) - (tc.encode(x) @ tc.w_dec + tc.b_dec)
    assert torch.allclose(expected, x @ skip, atol=1e-5)
    assert not torch.allclose(expected, x @ skip.T, atol=1e-3)
    assert list(tc.write_directions(0)) == ["model.layers.1.post_feedforward_layernorm.output"]
    assert tc.read_hook_points == ("model.layers.1.pre_feedforward_layernorm.output",)


def _clt_params(n_layers: int, per: int, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    slots = []
    for _ in range(n_layers):
        slots.append(
            {
                "w_enc": torch.randn(d, per, generator=gen),
                "b_enc": torch.randn(per, generator=gen) * 0.1,
                "threshold": torch.rand(per, generator=gen) * 0.5,
                "w_dec": torch.randn(per, n_layers, d, generator=gen),
                "b_dec": torch.randn(d, generator=gen),
            }
        )
    return slots


CLT_CONFIG = {
    "hf_hook_point_in": "model.layers.{all}.pre_feedforward_layernorm.output",
    "hf_hook_point_out": "model.layers.{all}.post_feedforward_layernorm.output",
    "model_name": "google/gemma-3-270m-pt",
    "architecture": "jump_relu",
    "l0": 150,
    "affine_connection": False,
    "type": "clt",
}


def test_clt_encode_decode_match_explicit_loops(tmp_path):
    n, per, d = 3, 4, 5
    slots = _clt_params(n, per, d, 0)  # entries for j < i are nonzero: must be ignored
    clt = load_sae(save_gemma_scope_folder(tmp_path / "clt" / "w", dict(CLT_CONFIG, width=n * per), slots))
    assert isinstance(clt, CrossLayerTranscoder)
    assert clt.config.layers_in == (0, 1, 2) and clt.width == 12
    xs = torch.randn(2, 6, n, d)
    acts = clt.encode(xs)
    assert acts.shape == (2, 6, 12)
    manual_acts = []
    for i, s in enumerate(slots):
        pre = xs[..., i, :] @ s["w_enc"] + s["b_enc"]
        manual_acts.append(torch.relu(pre) * (pre > s["threshold"]))
    assert torch.allclose(acts, torch.cat(manual_acts, -1))
    recon = clt.decode(acts)
    for j in range(n):
        want = slots[j]["b_dec"] + sum(manual_acts[i] @ slots[i]["w_dec"][:, j] for i in range(j + 1))
        assert torch.allclose(recon[..., j, :], want, atol=1e-5)
    # feature 9 lives in layer 2 (features 8..11) and writes to layer 2 only
    assert clt.feature_layer(9) == 2 and clt.feature_layer(0) == 0
    dirs = clt.write_directions(9)
    assert list(dirs) == ["model.layers.2.post_feedforward_layernorm.output"]
    assert torch.equal(dirs["model.layers.2.post_feedforward_layernorm.output"], slots[2]["w_dec"][1, 2])
    assert len(clt.write_directions(1)) == 3
    feed = {h: xs[..., i, :] for i, h in enumerate(clt.read_hook_points)}
    for f in (0, 5, 11):
        assert torch.allclose(clt.feature_activation(f, feed), acts[..., f])
    with pytest.raises(SAEModelMismatch, match=r"\[\.\.\., 3, 5\]"):
        clt.encode(torch.randn(2, 4, d))


def test_clt_triangular_and_full_decoders_agree(tmp_path):
    full = load_sae(write_gemma_scope_sae(tmp_path / "full", kind="clt", n_layers=4, seed=3))
    tri = load_sae(write_gemma_scope_sae(tmp_path / "tri", kind="clt", n_layers=4, seed=3, clt_decoder="triangular"))
    assert tri.w_dec_2.shape[1] == 2 and full.w_dec_2.shape[1] == 4
    xs = torch.randn(5, 4, 64)
    assert torch.equal(full.encode(xs), tri.encode(xs))
    assert torch.allclose(full(xs), tri(xs), atol=1e-5)
    for f in (40, 100):  # layer 1 and layer 3 features
        tri_dirs, full_dirs = tri.write_directions(f), full.write_directions(f)
        assert list(tri_dirs) == list(full_dirs)
        assert all(torch.equal(full_dirs[k], v) for k, v in tri_dirs.items())


def test_affine_clt_adds_each_layers_skip(tmp_path):
    clt = load_sae(write_gemma_scope_sae(tmp_path / "a", kind="clt", n_layers=2, width=8, affine=True, seed=1))
    xs = torch.randn(3, 2, 64)
    acts = clt.encode(xs)
    without = clt.decode(acts, torch.zeros_like(xs))  # a zero input adds no skip term
    for i in range(2):
        skip = getattr(clt, f"affine_skip_connection_{i}")
        assert torch.allclose(clt.decode(acts, xs)[:, i] - without[:, i], xs[:, i] @ skip, atol=1e-5)
    with pytest.raises(GemscopeError, match="needs the inputs"):
        clt.decode(acts)


def test_crosscoder_per_slot_layout_all_to_all(gemma_scope_folders):
    cc = load_sae(gemma_scope_folders["crosscoder"])
    assert isinstance(cc, Crosscoder) and not cc.shared_latent
    assert cc.config.hook_points_in == tuple(f"model.layers.{i}.output" for i in range(4))
    xs = torch.randn(3, 4, 64)
    acts = cc.encode(xs)
    parts = []
    for k in range(4):
        pre = xs[:, k] @ getattr(cc, f"w_enc_{k}") + getattr(cc, f"b_enc_{k}")
        parts.append(torch.relu(pre) * (pre > getattr(cc, f"threshold_{k}")))
    assert torch.allclose(acts, torch.cat(parts, -1))
    recon = cc.decode(acts)
    for j in range(4):
        want = getattr(cc, f"b_dec_{j}") + sum(parts[k] @ getattr(cc, f"w_dec_{k}")[:, j] for k in range(4))
        assert torch.allclose(recon[:, j], want, atol=1e-5)
    assert len(cc.write_directions(cc.width - 1)) == 4  # a last-slot feature still writes to earlier slots
    feed = {h: xs[:, i] for i, h in enumerate(cc.read_hook_points)}
    assert torch.allclose(cc.feature_activation(70, feed), acts[:, 70])


def test_crosscoder_shared_latent_layout(tmp_path):
    cc = load_sae(
        write_gemma_scope_sae(tmp_path / "cc", kind="crosscoder", layer=(0, 1, 2, 3), width=32,
                              crosscoder_layout="shared", seed=9)
    )
    assert cc.shared_latent and cc.width == 32
    xs = torch.randn(6, 4, 64)
    pre = sum(xs[:, k] @ getattr(cc, f"w_enc_{k}") for k in range(4)) + cc.b_enc
    acts = torch.relu(pre) * (pre > cc.threshold)
    assert torch.allclose(cc.encode(xs), acts, atol=1e-6)
    recon = cc.decode(acts)
    for k in range(4):
        assert torch.allclose(recon[:, k], acts @ getattr(cc, f"w_dec_{k}") + getattr(cc, f"b_dec_{k}"), atol=1e-5)
    feed = {h: xs[:, i] for i, h in enumerate(cc.read_hook_points)}
    assert torch.allclose(cc.feature_activation(7, feed), acts[:, 7], atol=1e-6)
    assert set(cc.write_directions(7)) == set(cc.read_hook_points)


def test_every_kind_moves_with_to_and_keeps_its_class(gemma_scope_folders):
    for key, folder in gemma_scope_folders.items():
        sae = load_sae(folder, device="cpu")
        assert isinstance(sae, (JumpReLUSAE, CrossLayerTranscoder, Crosscoder)), key
        moved = sae.to(torch.device("cpu"))
        assert moved is sae and moved.config == sae.config


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_copy_matches_cpu(gemma_scope_folders):
    sae = load_sae(gemma_scope_folders["resid_post"])
    gpu = load_sae(gemma_scope_folders["resid_post"], device="cuda")
    x = torch.randn(4, 64)
    assert gpu.w_enc.is_cuda
    assert torch.allclose(gpu.encode(x.cuda().bfloat16()).cpu(), sae.encode(x.bfloat16()), atol=1e-4)


@pytest.mark.parametrize("key", ["resid_post", "transcoder_affine", "clt", "crosscoder"])
def test_a_module_cast_to_bfloat16_still_computes_in_float32(gemma_scope_folders, key):
    sae = load_sae(gemma_scope_folders[key])
    shape = (3, 64) if sae.config.kind in ("sae", "transcoder") else (3, 4, 64)
    # A fixed input: bf16-rounded weights can push a feature that sits right at its threshold across it
    # (JumpReLU is discontinuous there), so a draw from the global RNG made this depend on test order.
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    reference = sae(x)
    half = load_sae(gemma_scope_folders[key]).to(torch.bfloat16)
    out = half(x)
    assert out.dtype == torch.float32
    assert (out - reference).abs().max() < 0.05 * reference.abs().max()
