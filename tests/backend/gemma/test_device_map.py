"""A model spread by an accelerate device map (half its layers offloaded to disk) gives the same features and the
same steered tokens as the plain load; a map that leaves a layer unloaded is refused."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.gemma.model import load_model, wrap_model
from gemscope_widgets.backend.steering.generation import generate
from gemscope_widgets.errors import ModelLoadError
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae

TEXT = "Paris is the capital of France. The quick brown fox"


def _half_on_disk(n_layers: int) -> dict[str, str]:
    mapping = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    for i in range(n_layers):
        mapping[f"model.layers.{i}"] = "cpu" if i < n_layers // 2 else "disk"
    return mapping


@pytest.fixture(scope="module")
def offloaded(tiny_model_path, tiny_model, tmp_path_factory):
    return load_model(tiny_model_path, device_map=_half_on_disk(tiny_model.n_layers),
                      offload_folder=tmp_path_factory.mktemp("offload"), dtype="float32")


def test_offloaded_layers_really_are_offloaded(offloaded, tiny_model):
    last = offloaded.layers[tiny_model.n_layers - 1]
    assert all(p.device.type == "meta" for p in last.parameters()), "the disk half should not be in memory"
    assert offloaded.device == torch.device("cpu")


def test_features_and_steered_tokens_equal_the_plain_load(offloaded, tiny_model, gemma_scope_folders, tmp_path):
    sae = load_sae_folder(gemma_scope_folders["resid_post"])  # layer 1: in memory
    deep = load_sae_folder(write_gemma_scope_sae(tmp_path / "resid_post/layer_3_width_16k_l0_medium", kind="sae",
                                                 site="resid_post", layer=3, seed=5))  # layer 3: on disk
    plain = prompt_features(tiny_model, [sae, deep], TEXT)
    spread = prompt_features(offloaded, [sae, deep], TEXT)
    for a, b in zip(plain, spread, strict=True):
        torch.testing.assert_close(b.dense(), a.dense(), rtol=1e-5, atol=1e-6)
    for steer_sae in (sae, deep):
        want = generate(tiny_model, TEXT, {7: 40.0}, sae=steer_sae, unit="raw", max_new_tokens=8, stop_at_eos=False)
        got = generate(offloaded, TEXT, {7: 40.0}, sae=steer_sae, unit="raw", max_new_tokens=8, stop_at_eos=False)
        assert got.baseline_ids == want.baseline_ids and got.steered_ids == want.steered_ids
        assert want.steered_ids != want.baseline_ids


def test_a_layer_left_on_meta_is_refused(tiny_model_path):
    gm = load_model(tiny_model_path, device="cpu", dtype="float32")
    gm.layers[1].to("meta")
    with pytest.raises(ModelLoadError, match=r"layers \[1\] are on the meta device"):
        wrap_model(gm.model, gm.tokenizer, gm.name)
