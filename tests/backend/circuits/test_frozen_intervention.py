"""graph.intervene with frozen attention and constrained layers: the graph's own claim about its direct edges.

With every layer constrained (attention patterns, norm scales and every transcoder activation held at the prompt's
values except the intervened features'), clamping a source feature from a to a + δ must change each target's input
by δ / a × adjacency_matrix[target, source]: measured on the model by hooks, predicted by attribution's pull-back.
"""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.graph import AttributionGraph
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.errors import GraphError
from tests.helpers import hook_ids

PROMPT = "The quick brown fox jumps"


@pytest.fixture(scope="module")
def graphs(tiny_model, tiny_transcoder_root):
    out = {}
    for which, site in (("affine", "transcoder_all"), ("plain", "transcoder_all"), ("clt", "clt")):
        tset = load_transcoders(tiny_transcoder_root / which, site)
        out[which] = attribute(tiny_model, tset, PROMPT, max_feature_nodes=None, progress=False)
    return out


def _target_rows(graph: AttributionGraph) -> list[int]:
    """Rows with an input: feature nodes and (token) logit nodes."""
    return [*range(graph.n_selected), *range(graph.logit_slice.start, graph.logit_slice.stop)]


def _relative_error(graph, result, sources, factor):
    """max |measured change − (factor − 1) × Σ_s adjacency[:, s]| / max |predicted| over every target row."""
    rows = _target_rows(graph)
    predicted = (factor - 1.0) * graph.adjacency_matrix[:, sources].sum(1)[rows]
    measured = result.node_input_changes[rows]
    assert float(predicted.abs().max()) > 1e-2  # a real effect, not noise against noise
    return float((measured - predicted).abs().max() / predicted.abs().max())


def _strongest_sources(graph, k=1):
    """The feature nodes with the largest total outgoing |edge| weight."""
    out = graph.adjacency_matrix[:, : graph.n_selected].abs().sum(0)
    return torch.argsort(out, descending=True)[:k].tolist()


@pytest.mark.parametrize("which", ["affine", "plain", "clt"])
def test_constrained_clamp_moves_direct_targets_by_edge_weights(tiny_model, graphs, which):
    graph = graphs[which]
    (source,) = _strongest_sources(graph)
    hooks = hook_ids(tiny_model.model)
    result = graph.intervene({source: 3.0}, mode="scale", constrained_layers=range(graph.n_layers))
    assert hook_ids(tiny_model.model) == hooks
    assert _relative_error(graph, result, [source], 3.0) < 1e-4
    torch.testing.assert_close(result.predicted_input_changes, 2.0 * graph.adjacency_matrix[:, source])
    assert result.info == {"mode": "scale", "freeze_attention": True, "constrained_layers": list(range(4))}
    # Before the intervention the measured inputs are the graph's own node inputs.
    rows = _target_rows(graph)
    torch.testing.assert_close(result.node_inputs_before[rows], graph.node_inputs[rows], rtol=1e-4, atol=1e-4)
    # Without the constraint, effects propagate through other features and norms: the claim no longer holds.
    free = graph.intervene({source: 3.0}, mode="scale")
    assert _relative_error(graph, free, [source], 3.0) > 1e-3
    partial = graph.intervene({source: 3.0}, mode="scale", constrained_layers=range(0, 2))
    assert partial.info["constrained_layers"] == [0, 1]


def test_constrained_ablation_of_a_supernode_is_the_sum_of_its_members(graphs):
    graph = graphs["affine"]
    sources = _strongest_sources(graph, 3)
    graph.group("strong", sources)
    try:
        result = graph.intervene(["strong"], mode="ablate", constrained_layers=range(graph.n_layers))
        assert _relative_error(graph, result, sources, 0.0) < 1e-4
        as_dict = graph.intervene({"strong": 0.0}, constrained_layers=range(graph.n_layers))
        torch.testing.assert_close(as_dict.node_inputs_after, result.node_inputs_after)
        scaled = graph.intervene({"strong": 0.5}, mode="scale", constrained_layers=range(graph.n_layers))
        assert _relative_error(graph, scaled, sources, 0.5) < 1e-4
    finally:
        graph.ungroup("strong")


def test_frozen_attention_reproduces_the_model_and_defaults_are_unchanged(tiny_model, graphs):
    graph = graphs["affine"]
    (source,) = _strongest_sources(graph)
    act = float(graph.selected_activation_values[source])
    # Clamping a feature to its own value with patterns frozen at their own values changes nothing.
    same = graph.intervene({source: act}, freeze_attention=True)
    torch.testing.assert_close(torch.tensor(same.logit_probabilities_after),
                               torch.tensor(same.logit_probabilities_before), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(same.node_inputs_after, same.node_inputs_before, rtol=1e-5, atol=1e-5)
    # The defaults are the iterative intervention of before (no freezing), equal to naming them.
    default = graph.intervene({source: 0.0})
    explicit = graph.intervene({source: 0.0}, freeze_attention=False, constrained_layers=None)
    assert default.logit_probabilities_after == explicit.logit_probabilities_after
    assert default.info == {"mode": "set", "freeze_attention": False, "constrained_layers": None}
    frozen = graph.intervene({source: 0.0}, freeze_attention=True)
    assert frozen.logit_probabilities_after != default.logit_probabilities_after


def test_bad_constraints_and_freezing_without_a_model(tiny_model, tiny_transcoder_root, graphs, tmp_path):
    graph = graphs["affine"]
    for bad in ([graph.n_layers], [-1], ["a"], "0-3", 3.5):
        with pytest.raises(GraphError, match="constrained_layers"):
            graph.intervene({0: 0.0}, constrained_layers=bad)
    with pytest.raises(GraphError, match="empty"):
        graph.intervene({0: 0.0}, constrained_layers=[])
    with pytest.raises(GraphError, match="Unknown intervention mode"):
        graph.intervene({0: 0.0}, mode="zero")
    loaded = AttributionGraph.load(graph.save(tmp_path / "g.safetensors"))
    with pytest.raises(GraphError, match=r"attach\(model, transcoders\).*frozen"):
        loaded.intervene({0: 0.0}, freeze_attention=True)
    loaded.attach(tiny_model, load_transcoders(tiny_transcoder_root / "affine"))
    a = loaded.intervene({0: 0.0}, constrained_layers=range(graph.n_layers))
    b = graph.intervene({0: 0.0}, constrained_layers=range(graph.n_layers))
    torch.testing.assert_close(a.node_inputs_after, b.node_inputs_after)


@pytest.mark.real_model
def test_constrained_clamp_real_270m_demo_transcoders(real_model):
    from gemscope_widgets.backend.default_transcoders import load_demo_transcoders

    tset = load_transcoders(load_demo_transcoders(real_model, progress=False))
    graph = attribute(real_model, tset, "The capital of France is", max_feature_nodes=256, progress=False)
    sources = _strongest_sources(graph, 2)
    for source in sources:
        result = graph.intervene({source: 2.0}, mode="scale", constrained_layers=range(graph.n_layers))
        assert _relative_error(graph, result, [source], 2.0) < 1e-4
