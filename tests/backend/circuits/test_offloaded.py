"""Attribution graphs, their interventions and steered generation on a model partly offloaded by accelerate (a
decoder layer on disk; the embedding and its tied unembedding on disk) equal those of the plain load."""

from __future__ import annotations

import pytest
import torch
import transformers

from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.gemma.model import load_model
from gemscope_widgets.backend.gemma.offload import offloaded_modules
from gemscope_widgets.backend.steering.generation import generate
from tests.helpers import hook_ids

PROMPT = "The quick brown fox jumps over the"
PLACES = {"last layer": ("model.layers.{last}",), "embedding and unembedding": ("model.embed_tokens", "lm_head")}


def _device_map(n_layers: int, on_disk: tuple[str, ...]) -> dict[str, str]:
    mapping = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    mapping |= {f"model.layers.{i}": "cpu" for i in range(n_layers)}
    mapping |= {name.format(last=n_layers - 1): "disk" for name in on_disk}
    return mapping


@pytest.fixture(scope="module", params=sorted(PLACES))
def offloaded(request, tiny_model_path, tiny_model, tmp_path_factory):
    mapping = _device_map(tiny_model.n_layers, PLACES[request.param])
    gm = load_model(tiny_model_path, device_map=mapping, offload_folder=tmp_path_factory.mktemp("offload"),
                    dtype="float32")
    assert offloaded_modules(gm.model), "nothing was offloaded"
    try:  # the model's own forward, before any of this package's code
        with torch.no_grad():
            gm.model(input_ids=torch.tensor([[2, 10]]))
    except KeyError as exc:  # older transformers leave a tied unembedding out of the disk offload index
        pytest.skip(f"transformers {transformers.__version__} cannot run this device map itself (KeyError {exc})")
    return gm


def test_attribution_and_intervention_equal_the_plain_load(offloaded, tiny_model, tiny_transcoder_root):
    tset = load_transcoders(tiny_transcoder_root / "affine")
    plain = attribute(tiny_model, tset, PROMPT, progress=False, batch_size=16)
    before = hook_ids(offloaded.model)
    spread = attribute(offloaded, tset, PROMPT, progress=False, batch_size=16)
    assert hook_ids(offloaded.model) == before
    torch.testing.assert_close(spread.adjacency_matrix, plain.adjacency_matrix, rtol=1e-4, atol=1e-6)
    assert spread.logit_tokens.tolist() == plain.logit_tokens.tolist()
    node = int(torch.argmax(plain.node_influence()[: plain.n_selected]))
    want = plain.intervene({node: 0.0})
    got = spread.intervene({node: 0.0})
    torch.testing.assert_close(torch.tensor(got.logit_probabilities_after),
                               torch.tensor(want.logit_probabilities_after), rtol=1e-4, atol=1e-6)
    # Weights went back to the meta device: the model is as offloaded as before.
    assert all(p.device.type == "meta" for name in offloaded_modules(offloaded.model)
               for p in offloaded.model.get_submodule(name).parameters())


def test_steered_generation_equals_the_plain_load(offloaded, tiny_model, gemma_scope_folders):
    sae = load_sae_folder(gemma_scope_folders["resid_post"])
    want = generate(tiny_model, PROMPT, {7: 40.0}, sae=sae, unit="raw", max_new_tokens=6, stop_at_eos=False)
    assert want.steered_ids != want.baseline_ids
    got = generate(offloaded, PROMPT, {7: 40.0}, sae=sae, unit="raw", max_new_tokens=6, stop_at_eos=False)
    assert got.baseline_ids == want.baseline_ids and got.steered_ids == want.steered_ids
