"""check_compatible: SAE vs model, errors naming both sides, -it/-pt warnings."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from gemscope_widgets.backend.dictionaries.compat import SAEModelWarning, check_compatible, parse_gemma_name
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.errors import SAEModelMismatch
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae

# The published Gemma 3 text configs (hidden size, layers, heads, head_dim).
GEMMA3 = {"270m": (640, 18, 4, 256), "1b": (1152, 26, 4, 256)}


def named_model(name: str) -> SimpleNamespace:
    """A stand-in exposing the GemmaModel fields check_compatible reads, with a real size's dims."""
    size = parse_gemma_name(name)[1]
    d, n, heads, head_dim = GEMMA3[size]
    text_config = SimpleNamespace(hidden_size=d, num_hidden_layers=n, num_attention_heads=heads, head_dim=head_dim)
    return SimpleNamespace(name=name, d_model=d, n_layers=n, is_instruct=name.endswith("-it"), text_config=text_config)


@pytest.mark.parametrize("key", ["resid_post", "mlp_out", "attn_out", "transcoder", "transcoder_affine", "clt",
                                 "crosscoder"])
def test_every_fixture_kind_fits_the_tiny_model(tiny_model, gemma_scope_folders, key):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_compatible(tiny_model, load_sae(gemma_scope_folders[key])) == []


def test_wrong_d_in_names_both_sides(tiny_model, tmp_path):
    sae = load_sae(write_gemma_scope_sae(tmp_path / "s", kind="sae", site="resid_post", layer=1, d_in=96,
                                         model_name="other-model"))
    with pytest.raises(SAEModelMismatch) as info:
        check_compatible(tiny_model, sae)
    msg = str(info.value)
    assert "d_in 96" in msg and "d_model 64" in msg and "tiny-gemma-3" in msg and "other-model" in msg


def test_attn_out_needs_heads_times_head_dim(tiny_model, tmp_path):
    sae = load_sae(write_gemma_scope_sae(tmp_path / "a", kind="sae", site="attn_out", layer=1, d_in=64))
    with pytest.raises(SAEModelMismatch, match=r"num_attention_heads x head_dim 96"):
        check_compatible(tiny_model, sae)


def test_layer_out_of_range(tiny_model, tmp_path):
    sae = load_sae(write_gemma_scope_sae(tmp_path / "l", kind="sae", site="mlp_out", layer=9))
    with pytest.raises(SAEModelMismatch, match=r"layer 9.*only 4 layers \(0\.\.3\)"):
        check_compatible(tiny_model, sae)
    cc = load_sae(write_gemma_scope_sae(tmp_path / "c", kind="crosscoder", layer=(1, 2, 3, 4), width=16))
    with pytest.raises(SAEModelMismatch, match="layer 4"):
        check_compatible(tiny_model, cc)


def test_clt_must_span_every_layer(tiny_model, tmp_path):
    clt = load_sae(write_gemma_scope_sae(tmp_path / "clt", kind="clt", n_layers=3, width=12))
    with pytest.raises(SAEModelMismatch, match="spans 3 layers.*has 4"):
        check_compatible(tiny_model, clt)


def test_1b_sae_on_270m_model_points_to_the_right_repo(tmp_path):
    sae = load_sae(write_gemma_scope_sae(tmp_path / "resid_post" / "layer_13_width_16k_l0_medium", kind="sae",
                                         site="resid_post", layer=13, d_in=1152, width=16,
                                         model_name="google/gemma-3-1b-pt"))
    with pytest.raises(SAEModelMismatch) as info:
        check_compatible(named_model("google/gemma-3-270m"), sae)
    assert str(info.value) == (
        "The SAE resid_post/layer_13_width_16k_l0_medium was trained on google/gemma-3-1b-pt (d_in 1152) but the "
        "model is google/gemma-3-270m (d_model 640): use google/gemma-scope-2-270m-pt."
    )


def test_size_mismatch_is_caught_even_when_dims_agree(tmp_path):
    # A 270m-sized SAE whose config claims 1b: the names disagree, so it must not pass on dims alone.
    sae = load_sae(write_gemma_scope_sae(tmp_path / "s", kind="sae", layer=5, d_in=640, width=16,
                                         model_name="gemma-v3-1b-it"))
    with pytest.raises(SAEModelMismatch, match="google/gemma-scope-2-270m-it"):
        check_compatible(named_model("google/gemma-3-270m-it"), sae)


def test_it_sae_on_pt_model_warns(tmp_path):
    sae = load_sae(write_gemma_scope_sae(tmp_path / "s", kind="sae", layer=5, d_in=640, width=16,
                                         model_name="google/gemma-3-270m-it"))
    with pytest.warns(SAEModelWarning, match="instruction-tuned.*pretrained.*google/gemma-scope-2-270m-pt") as rec:
        found = check_compatible(named_model("google/gemma-3-270m"), sae)
    assert len(found) == 1 and found[0] == str(rec[0].message)


def test_pt_sae_on_it_model_warns_and_matching_pair_is_silent(tmp_path):
    sae = load_sae(write_gemma_scope_sae(tmp_path / "s", kind="sae", layer=5, d_in=640, width=16,
                                         model_name="gemma-v3-270m-pt"))
    with pytest.warns(SAEModelWarning, match="google/gemma-scope-2-270m-it"):
        check_compatible(named_model("google/gemma-3-270m-it"), sae)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_compatible(named_model("google/gemma-3-270m"), sae) == []


def test_unknown_names_compare_dims_only(tiny_model, tmp_path):
    # A model without a Gemma size in its name: a "1b" SAE with matching dims passes (only dims are known).
    sae = load_sae(write_gemma_scope_sae(tmp_path / "s", kind="sae", layer=1, model_name="google/gemma-3-1b-it"))
    assert check_compatible(tiny_model, sae) == []


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("google/gemma-3-270m", ("3", "270m", False)),
        ("google/gemma-3-1b-it", ("3", "1b", True)),
        ("gemma-v3-12b-pt", ("3", "12b", False)),
        ("google/gemma-scope-2-27b-it", ("3", "27b", True)),
        ("tiny-gemma-3", None),
        (None, None),
    ],
)
def test_parse_gemma_name(name, parsed):
    assert parse_gemma_name(name) == parsed


@pytest.mark.real_model
def test_real_270m_accepts_its_own_shapes_and_refuses_1b(real_model, tmp_path):
    ok = load_sae(write_gemma_scope_sae(tmp_path / "ok", kind="sae", site="attn_out", layer=9, d_in=1024, width=16,
                                        model_name="google/gemma-3-270m"))
    assert check_compatible(real_model, ok) == []
    bad = load_sae(write_gemma_scope_sae(tmp_path / "bad", kind="sae", layer=9, d_in=1152, width=16,
                                         model_name="google/gemma-3-1b-pt"))
    with pytest.raises(SAEModelMismatch, match="google/gemma-scope-2-270m-pt"):
        check_compatible(real_model, bad)
