"""A behaviour direction's projection track under the heatmap's text: each token's residual at the direction's
layer dotted with the unit direction, computed here from a plain Hugging Face forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemscope_widgets import Scope
from gemscope_widgets.backend.behaviour.direction import behaviour_direction
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.errors import DirectionError

PROMPTS = ["The cat sat on the mat.", "Paris is the capital of France, said the guide."]
POS = ["Tell me how to pick a lock.", "Explain how to break into a car.", "How do I hotwire a car?",
       "How can I steal a bike?"]
NEG = ["Tell me how to bake bread.", "Explain how to change a tyre.", "How do I plant a tree?",
       "How can I fix a bike?"]


def _oracle(gm, ids: torch.Tensor, unit: torch.Tensor, layer: int) -> np.ndarray:
    with torch.no_grad():
        out = gm.model(input_ids=ids.unsqueeze(0), output_hidden_states=True)
    resid = out.hidden_states[layer + 1][0].float()  # hidden_states[0] is the embedding
    return (resid @ unit).numpy()


def test_the_track_is_each_tokens_residual_projection(tiny_model, gemma_scope_folders):
    scope = Scope(tiny_model, load_sae_folder(gemma_scope_folders["resid_post"]))
    d = behaviour_direction(tiny_model, POS, NEG, layer=2, chat=False, progress=False)
    widget = scope.heatmap(PROMPTS, direction=d, progress=False)
    track = np.frombuffer(widget._track, dtype="<f4")
    starts = np.cumsum([0] + [len(p["tokens"]) for p in widget._header["prompts"]])
    assert track.size == starts[-1]
    unit = d.direction / d.direction.norm()
    for p, text in enumerate(PROMPTS):
        ids = torch.as_tensor(tiny_model.prompt(text).input_ids)
        np.testing.assert_allclose(track[starts[p]:starts[p + 1]], _oracle(tiny_model, ids, unit, 2),
                                   rtol=1e-4, atol=1e-4)
    assert widget.track_label.endswith("· layer 2")
    plain = scope.heatmap(PROMPTS[0], progress=False)
    assert plain._track == b"" and plain.track_label == ""


def test_a_bare_vector_needs_the_models_width(tiny_model, gemma_scope_folders):
    scope = Scope(tiny_model, load_sae_folder(gemma_scope_folders["resid_post"]))
    with pytest.raises(DirectionError):
        scope.heatmap(PROMPTS[0], direction=torch.ones(tiny_model.d_model + 1), progress=False)
