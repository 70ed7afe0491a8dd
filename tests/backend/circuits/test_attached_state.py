"""The per-graph state that graph.qk and the head loadings re-make from the attached model: made once and shared by
both, made again after a new attach or forget(), refused without a model; results unchanged by a cold start."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.circuits.attached_state import attached_state, forget
from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.graph import AttributionGraph, GraphError
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders

PROMPT = "The quick brown fox jumps over the lazy dog"


def test_one_state_per_attach_shared_by_qk_and_head_loadings(tiny_model, tiny_transcoder_root, tmp_path):
    tset = load_transcoders(tiny_transcoder_root / "affine", "transcoder_all")
    graph = attribute(tiny_model, tset, PROMPT, max_feature_nodes=None, progress=False)
    last = graph.n_pos - 1
    first = graph.qk(3, 0, last, 1)
    state = attached_state(graph, "test")
    loadings = graph.head_loadings(progress=False)
    assert attached_state(graph, "test") is state  # head loadings used the state qk made
    assert state.derived("head_loadings", dict)[(0.8, 0.98)] is loadings
    assert graph.head_loadings(progress=False) is loadings

    forget(graph)
    fresh = attached_state(graph, "test")
    assert fresh is not state and fresh.derived("head_loadings", dict) == {}
    again = graph.qk(3, 0, last, 1)
    assert torch.equal(again.pairs, first.pairs) and again.score == first.score

    graph.attach(tiny_model, tset)  # a new replacement: the state is made again
    assert attached_state(graph, "test") is not fresh

    loaded = AttributionGraph.load(graph.save(tmp_path / "g.safetensors"))
    with pytest.raises(GraphError, match="Computing head loadings re-runs the model.*no model attached.*graph.attach"):
        attached_state(loaded, "head loadings")
