"""load_sae on real Gemma Scope 2 layouts: local folders, the offline hub cache, SAELens names, bad input."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gemscope_widgets.backend.dictionaries.clt import CrossLayerTranscoder
from gemscope_widgets.backend.dictionaries.crosscoder import Crosscoder
from gemscope_widgets.backend.dictionaries.folder import save_gemma_scope_folder
from gemscope_widgets.backend.dictionaries.jumprelu import JumpReLUSAE
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.backend.dictionaries.safetensors_io import read_safetensors
from gemscope_widgets.backend.gemma.names import normalise_model_name, resolve_saelens_name
from gemscope_widgets.errors import SAELoadError
from tests.fixtures.gemma_scope_files import IT_REPO, PT_REPO, write_gemma_scope_sae

# ---------------------------------------------------------------- local folders, every kind

EXPECTED = {
    "resid_post": ("sae", "resid_post", ("model.layers.1.output",), ("model.layers.1.output",), 64),
    "mlp_out": (
        "sae",
        "mlp_out",
        ("model.layers.1.post_feedforward_layernorm.output",),
        ("model.layers.1.post_feedforward_layernorm.output",),
        64,
    ),
    "attn_out": (
        "sae",
        "attn_out",
        ("model.layers.1.self_attn.o_proj.input",),
        ("model.layers.1.self_attn.o_proj.input",),
        96,
    ),
    "transcoder": (
        "transcoder",
        "transcoder",
        ("model.layers.1.pre_feedforward_layernorm.output",),
        ("model.layers.1.post_feedforward_layernorm.output",),
        64,
    ),
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_single_layer_kinds_load_with_their_config(gemma_scope_folders, key):
    folder = gemma_scope_folders[key]
    sae = load_sae(folder)
    kind, site, hooks_in, hooks_out, d_in = EXPECTED[key]
    c = sae.config
    assert isinstance(sae, JumpReLUSAE)
    assert (c.kind, c.site, c.hook_points_in, c.hook_points_out) == (kind, site, hooks_in, hooks_out)
    assert (c.layers_in, c.layers_out, c.d_in, c.d_out, c.width) == ((1,), (1,), d_in, d_in, 128)
    assert c.hook_in == hooks_in[0] and c.layer == 1
    assert c.name == f"{folder.parent.name}/{folder.name}"
    assert c.path == str(folder) and c.repo_id is None
    assert c.l0 == 20.0 and c.model_name == "tiny-gemma-3" and not c.affine
    assert c.raw == json.loads((folder / "config.json").read_text())
    # tensors are exactly the file's
    stored = load_file(folder / "params.safetensors")
    for k, v in stored.items():
        assert torch.equal(getattr(sae, k), v), k
    assert sae.affine_skip_connection is None


def test_multi_layer_kinds_load(gemma_scope_folders):
    clt = load_sae(gemma_scope_folders["clt"])
    assert isinstance(clt, CrossLayerTranscoder)
    assert clt.config.kind == clt.config.site == "clt"
    assert clt.config.hook_points_out == tuple(
        f"model.layers.{i}.post_feedforward_layernorm.output" for i in range(4)
    )
    assert clt.config.hook_in == "model.layers.{all}.pre_feedforward_layernorm.output"
    assert clt.n_layers == 4 and clt.width == 128 and clt.slot_widths == (32,) * 4
    cc = load_sae(gemma_scope_folders["crosscoder"])
    assert isinstance(cc, Crosscoder)
    assert cc.config.layers_in == cc.config.layers_out == (0, 1, 2, 3)
    assert cc.config.name == "crosscoder/layer_0_1_2_3_width_1m_l0_medium"


def test_crosscoder_hook_points_follow_the_braces(tmp_path):
    cc = load_sae(write_gemma_scope_sae(tmp_path / "c", kind="crosscoder", layer=(5, 9, 12, 15), width=16))
    assert cc.config.hook_points_in == tuple(f"model.layers.{i}.output" for i in (5, 9, 12, 15))
    assert cc.config.layers_in == (5, 9, 12, 15)


def test_affine_transcoder_config(gemma_scope_folders):
    tc = load_sae(gemma_scope_folders["transcoder_affine"])
    assert tc.config.affine and tc.affine_skip_connection.shape == (64, 64)
    assert tc.config.name == "transcoder/layer_1_width_16k_l0_medium_affine"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("gemma-v3-270m-pt", "google/gemma-3-270m"),
        ("google/gemma-3-270m-pt", "google/gemma-3-270m"),
        ("google/gemma-3-1b-it", "google/gemma-3-1b-it"),
        ("gemma-v3-4b-pt", "google/gemma-3-4b-pt"),
        ("tiny-gemma-3", "tiny-gemma-3"),
        (None, None),
        ("", None),
    ],
)
def test_model_name_normalisation(raw, expected):
    assert normalise_model_name(raw) == expected


def test_old_config_without_type_is_inferred(tmp_path):
    folder = write_gemma_scope_sae(tmp_path / "transcoder" / "layer_2", kind="transcoder", layer=2)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["type"]
    (folder / "config.json").write_text(json.dumps(cfg))
    assert load_sae(folder).config.kind == "transcoder"


def test_root_plus_folder_and_params_file_path(gemma_scope_folders):
    folder = gemma_scope_folders["resid_post"]
    root = folder.parent.parent
    a = load_sae(root, "resid_post/layer_1_width_16k_l0_medium")
    b = load_sae(folder / "params.safetensors")
    assert a.config.name == b.config.name == "resid_post/layer_1_width_16k_l0_medium"
    assert torch.equal(a.w_enc, b.w_enc)


# ---------------------------------------------------------------- lazy, file-backed loading


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_large_sae_loads_file_backed_without_reading_it(tmp_path):
    d, width = 64, 160_000  # w_enc + w_dec = 82 MB of float32
    gen = torch.Generator().manual_seed(0)
    params = {
        "w_enc": torch.randn(d, width, generator=gen),
        "b_enc": torch.zeros(width),
        "threshold": torch.full((width,), 0.5),
        "w_dec": torch.randn(width, d, generator=gen),
        "b_dec": torch.zeros(d),
    }
    cfg = {"hf_hook_point_in": "model.layers.0.output", "hf_hook_point_out": "model.layers.0.output",
           "width": width, "model_name": "tiny-gemma-3", "architecture": "jump_relu", "l0": 50,
           "affine_connection": False, "type": "sae"}
    folder = save_gemma_scope_folder(tmp_path / "resid_post" / "layer_0_width_160k", cfg, params)
    w_dec_row = params["w_dec"][123].clone()
    del params
    gc.collect()
    file_size = (folder / "params.safetensors").stat().st_size
    assert file_size > 80e6

    before = _rss_bytes()
    start = time.perf_counter()
    sae = load_sae(folder)
    elapsed = time.perf_counter() - start
    grown = _rss_bytes() - before
    assert grown < file_size / 8, f"loading grew RSS by {grown / 1e6:.1f} MB for a {file_size / 1e6:.0f} MB file"
    assert elapsed < 2.0
    # the tensors live in a mapping of the params file
    maps = Path("/proc/self/maps").read_text()
    assert str((folder / "params.safetensors").resolve()) in maps
    assert torch.equal(sae.w_dec[123], w_dec_row)
    # writes go to a private copy, never to the file
    sae.w_dec[123].zero_()
    with safe_open(folder / "params.safetensors", "pt") as fh:
        assert torch.equal(fh.get_slice("w_dec")[123], w_dec_row)


def test_read_safetensors_matches_the_reference_reader(gemma_scope_folders):
    path = gemma_scope_folders["transcoder_affine"] / "params.safetensors"
    ours, ref = read_safetensors(path), load_file(path)
    assert sorted(ours) == sorted(ref)
    assert all(torch.equal(ours[k], ref[k]) and ours[k].dtype == ref[k].dtype for k in ref)


def test_save_writes_float32_lowercase_keys(tmp_path):
    params = {"W_enc": torch.randn(4, 3, dtype=torch.bfloat16), "b_enc": torch.zeros(3, dtype=torch.float64)}
    folder = save_gemma_scope_folder(tmp_path / "f", {"type": "sae"}, params)
    with safe_open(folder / "params.safetensors", "pt") as fh:
        assert sorted(fh.keys()) == ["b_enc", "w_enc"]
        assert fh.get_tensor("w_enc").dtype == torch.float32
    assert json.loads((folder / "config.json").read_text()) == {"type": "sae"}
    with pytest.raises(SAELoadError, match="same lowercase key"):
        save_gemma_scope_folder(tmp_path / "g", {}, {"w_enc": torch.zeros(1), "W_ENC": torch.zeros(1)})


# ---------------------------------------------------------------- bad input -> SAELoadError


def _sae_folder(tmp_path: Path, **kw) -> Path:
    return write_gemma_scope_sae(tmp_path / "resid_post" / "layer_1_width_16k_l0_medium", kind="sae", layer=1, **kw)


def _rewrite_params(folder: Path, change) -> None:
    params = {k: v.clone() for k, v in load_file(folder / "params.safetensors").items()}
    change(params)
    save_file(params, folder / "params.safetensors")


def _rewrite_config(folder: Path, change) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    change(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_missing_folder(tmp_path):
    with pytest.raises(SAELoadError, match="No such SAE folder"):
        load_sae(tmp_path / "nope")
    with pytest.raises(SAELoadError, match="No such SAE folder"):
        load_sae(tmp_path, "resid_post/layer_99")


def test_missing_or_broken_config(tmp_path):
    folder = _sae_folder(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(SAELoadError, match="not valid JSON"):
        load_sae(folder)
    (folder / "config.json").write_text(json.dumps({"width": 128}))
    with pytest.raises(SAELoadError, match="hf_hook_point_in"):
        load_sae(folder)
    (folder / "config.json").unlink()
    with pytest.raises(SAELoadError, match="no config.json"):
        load_sae(folder)


def test_unknown_type_and_unknown_site(tmp_path):
    folder = _sae_folder(tmp_path)
    _rewrite_config(folder, lambda c: c.update(type="topk"))
    with pytest.raises(SAELoadError, match="type 'topk'"):
        load_sae(folder)
    _rewrite_config(folder, lambda c: c.update(type="sae", hf_hook_point_in="blocks.1.hook_resid_post",
                                               hf_hook_point_out="blocks.1.hook_resid_post"))
    with pytest.raises(SAELoadError, match="names no layer|not a Gemma Scope 2 site"):
        load_sae(folder)


def test_missing_params_and_pickle_files_are_never_read(tmp_path):
    folder = _sae_folder(tmp_path)
    (folder / "params.safetensors").unlink()
    with pytest.raises(SAELoadError, match="no params.safetensors"):
        load_sae(folder)
    (folder / "params.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(SAELoadError, match=r"params\.npz.*never read"):
        load_sae(folder)


def test_non_safetensors_and_truncated_files(tmp_path):
    folder = _sae_folder(tmp_path)
    good = (folder / "params.safetensors").read_bytes()
    (folder / "params.safetensors").write_bytes(b"<html>Access denied</html>" * 10)
    with pytest.raises(SAELoadError, match="not a valid safetensors"):
        load_sae(folder)
    (folder / "params.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(SAELoadError, match="truncated"):
        load_sae(folder)
    (folder / "params.safetensors").write_bytes(b"")
    with pytest.raises(SAELoadError, match="not a valid safetensors"):
        load_sae(folder)


def test_missing_and_uppercase_keys(tmp_path):
    folder = _sae_folder(tmp_path)
    _rewrite_params(folder, lambda p: p.pop("w_dec"))
    with pytest.raises(SAELoadError, match=r"lacks \['w_dec'\]"):
        load_sae(folder)
    _rewrite_params(folder, lambda p: p.update(W_dec=torch.zeros(128, 64)))
    with pytest.raises(SAELoadError, match="lowercase"):
        load_sae(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.update(w_dec=torch.zeros(100, 64)), r"w_enc has 128 features.*w_dec has 100"),
        (lambda p: p.update(threshold=torch.zeros(127)), r"threshold has shape \(127,\), expected \[128\]"),
        (lambda p: p.update(b_enc=torch.zeros(3)), r"b_enc has shape"),
        (lambda p: p.update(b_dec=torch.zeros(63)), r"b_dec has shape"),
        (lambda p: p.update(w_enc=torch.zeros(64, 128, 1)), r"must be matrices"),
        (lambda p: p.update(w_dec=torch.zeros(128, 32), b_dec=torch.zeros(32)), r"d_in=64 and d_out=32"),
        (lambda p: p.update(affine_skip_connection=torch.zeros(64, 32)), r"affine_skip_connection has shape"),
    ],
)
def test_wrong_shapes(tmp_path, change, message):
    folder = _sae_folder(tmp_path)
    _rewrite_params(folder, change)
    with pytest.raises(SAELoadError, match=message):
        load_sae(folder)


def test_config_width_disagreeing_with_tensors(tmp_path):
    folder = _sae_folder(tmp_path)
    _rewrite_config(folder, lambda c: c.update(width=16384))
    with pytest.raises(SAELoadError, match="width 16384 but the weights hold 128"):
        load_sae(folder)


def test_affine_config_without_skip_tensor(tmp_path):
    folder = write_gemma_scope_sae(tmp_path / "t", kind="transcoder", layer=1)
    _rewrite_config(folder, lambda c: c.update(affine_connection=True))
    with pytest.raises(SAELoadError, match="affine_connection"):
        load_sae(folder)


def test_clt_file_errors(tmp_path):
    folder = write_gemma_scope_sae(tmp_path / "clt" / "w", kind="clt", n_layers=4, width=32)
    (folder / "params_layer_2.safetensors").rename(tmp_path / "moved.safetensors")
    with pytest.raises(SAELoadError, match="missing params_layer_2"):
        load_sae(folder)
    (tmp_path / "moved.safetensors").rename(folder / "params_layer_2.safetensors")
    params = {k: v.clone() for k, v in load_file(folder / "params_layer_1.safetensors").items()}
    params["w_dec"] = torch.zeros(8, 2, 64)
    save_file(params, folder / "params_layer_1.safetensors")
    with pytest.raises(SAELoadError, match=r"params_layer_1.*w_dec has shape \(8, 2, 64\)"):
        load_sae(folder)
    for f in folder.glob("params_layer_*"):
        f.unlink()
    with pytest.raises(SAELoadError, match="no params_layer"):
        load_sae(folder)


def test_crosscoder_hook_count_must_match_files(tmp_path):
    folder = write_gemma_scope_sae(tmp_path / "cc", kind="crosscoder", layer=(0, 1, 2, 3), width=16)
    (folder / "params_layer_3.safetensors").unlink()
    with pytest.raises(SAELoadError, match="4 hook points.*3 params_layer files"):
        load_sae(folder)


def test_crosscoder_unrecognised_layout(tmp_path):
    folder = write_gemma_scope_sae(tmp_path / "cc", kind="crosscoder", layer=(0, 1, 2, 3), width=16)
    params = {k: v.clone() for k, v in load_file(folder / "params_layer_0.safetensors").items()}
    params["w_dec"] = torch.zeros(4, 3, 64)  # 3 target slots for a 4-slot crosscoder
    save_file(params, folder / "params_layer_0.safetensors")
    with pytest.raises(SAELoadError, match="layout is not recognised"):
        load_sae(folder)


def test_not_a_path_nor_a_repo(tmp_path):
    with pytest.raises(SAELoadError, match="neither a local folder nor a hub repo"):
        load_sae("not a repo id!", "resid_post/layer_1")


# ---------------------------------------------------------------- the hub cache, offline


def test_hub_folder_loads_from_the_cache_offline(hub_cache):
    folder = "resid_post/layer_2_width_16k_l0_medium"
    sae = load_sae(PT_REPO, folder)
    assert sae.config.repo_id == PT_REPO and sae.config.name == folder
    assert sae.config.model_name == "google/gemma-3-270m"
    snapshot = hub_cache.folders[(PT_REPO, folder)]
    assert Path(sae.config.path) == snapshot
    assert f"snapshots/{hub_cache.commit}" in sae.config.path
    assert torch.equal(sae.w_enc, load_file(snapshot / "params.safetensors")["w_enc"])
    same = load_sae(f"{PT_REPO}/{folder}")
    assert torch.equal(same.threshold, sae.threshold)


def test_hub_fetches_only_config_and_params(hub_cache, monkeypatch):
    requested = []
    real = huggingface_hub.hf_hub_download

    def spy(repo_id, filename, **kw):
        requested.append(filename)
        return real(repo_id, filename, **kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    load_sae(PT_REPO, "transcoder/layer_1_width_16k_l0_big_affine")
    assert requested == [
        "transcoder/layer_1_width_16k_l0_big_affine/config.json",
        "transcoder/layer_1_width_16k_l0_big_affine/params.safetensors",
    ]
    requested.clear()
    clt = load_sae(PT_REPO, "clt/width_262k_l0_big")
    assert isinstance(clt, CrossLayerTranscoder) and clt.n_layers == 4
    assert requested == ["clt/width_262k_l0_big/config.json"] + [
        f"clt/width_262k_l0_big/params_layer_{i}.safetensors" for i in range(4)
    ]
    cc = load_sae(PT_REPO, "crosscoder/layer_0_1_2_3_width_1m_l0_big")
    assert isinstance(cc, Crosscoder) and cc.config.repo_id == PT_REPO


def test_hub_folder_not_cached_offline_says_how_to_download(hub_cache):
    folder = "resid_post/layer_5_width_262k_l0_small"
    with pytest.raises(SAELoadError) as info:
        load_sae(PT_REPO, folder)
    msg = str(info.value)
    assert PT_REPO in msg and folder in msg and "HF_HUB_OFFLINE" in msg
    assert f"hf download {PT_REPO} {folder}/config.json {folder}/params.safetensors" in msg


def test_hub_clt_partly_cached_offline(hub_cache):
    snap = hub_cache.folders[(PT_REPO, "clt/width_262k_l0_big")]
    (snap / "params_layer_1.safetensors").unlink()
    with pytest.raises(SAELoadError, match="missing params_layer_1"):
        load_sae(PT_REPO, "clt/width_262k_l0_big")


def test_unknown_repo_offline(hub_cache):
    with pytest.raises(SAELoadError, match="google/gemma-scope-2-9b-pt"):
        load_sae("google/gemma-scope-2-9b-pt", "resid_post/layer_1_width_16k_l0_small")


# ---------------------------------------------------------------- SAELens names


@pytest.mark.parametrize(
    ("release", "sae_id", "expected"),
    [
        ("gemma-scope-2-270m-pt-res", "layer_9_width_16k_l0_medium",
         ("google/gemma-scope-2-270m-pt", "resid_post/layer_9_width_16k_l0_medium")),
        ("gemma-scope-2-1b-it-mlp", "layer_13_width_65k_l0_small",
         ("google/gemma-scope-2-1b-it", "mlp_out/layer_13_width_65k_l0_small")),
        ("gemma-scope-2-4b-pt-att-all", "layer_3_width_16k_l0_small",
         ("google/gemma-scope-2-4b-pt", "attn_out_all/layer_3_width_16k_l0_small")),
        ("gemma-scope-2-1b-it-transcoders", "transcoder/layer_13_width_16k_l0_big_affine",
         ("google/gemma-scope-2-1b-it", "transcoder/layer_13_width_16k_l0_big_affine")),
        ("gemma-scope-2-27b-it-transcoders-all", "transcoder_all/layer_40_width_262k_l0_small_affine",
         ("google/gemma-scope-2-27b-it", "transcoder_all/layer_40_width_262k_l0_small_affine")),
        ("gemma-scope-2-12b-pt-res-all", "layer_0_width_16k_l0_big",
         ("google/gemma-scope-2-12b-pt", "resid_post_all/layer_0_width_16k_l0_big")),
        ("gemma-scope-2-270m-pt-lol", "layer_9", None),
        ("gemma-scope-2b-pt-res", "layer_9", None),
    ],
)
def test_saelens_release_table(release, sae_id, expected):
    assert resolve_saelens_name(release, sae_id) == expected


def test_saelens_name_loads_through_the_hub_cache(hub_cache):
    by_name = load_sae("gemma-scope-2-270m-pt-res", "layer_9_width_16k_l0_medium")
    by_repo = load_sae(PT_REPO, "resid_post/layer_9_width_16k_l0_medium")
    assert by_name.config == by_repo.config
    assert torch.equal(by_name.w_dec, by_repo.w_dec)
    tc = load_sae("gemma-scope-2-270m-pt-transcoders", "transcoder/layer_1_width_16k_l0_big_affine")
    assert tc.config.affine
    it = load_sae("gemma-scope-2-270m-it-res", "layer_2_width_16k_l0_medium")
    assert it.config.repo_id == IT_REPO and it.config.model_name == "google/gemma-3-270m-it"


def test_unknown_saelens_release(hub_cache):
    with pytest.raises(SAELoadError, match="Unknown SAELens release 'gemma-scope-2-270m-pt-embed'"):
        load_sae("gemma-scope-2-270m-pt-embed", "layer_9_width_16k_l0_medium")
