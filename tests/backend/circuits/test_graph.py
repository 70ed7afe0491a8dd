"""AttributionGraph: node order, labels, influence/pruning against a closed-form oracle, safetensors round trip."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.circuits.graph import AttributionGraph, GraphError


def random_graph(seed: int = 0, n_layers: int = 3, n_pos: int = 4, n_active: int = 12, n_sel: int = 8):
    """A random graph with the right structure: edges only from earlier layers (or the same layer at earlier
    positions for errors/tokens) into feature and logit rows, so it is acyclic."""
    g = torch.Generator().manual_seed(seed)
    layers = torch.randint(0, n_layers, (n_active,), generator=g)
    pos = torch.randint(0, n_pos, (n_active,), generator=g)
    feats = torch.randint(0, 100, (n_active,), generator=g)
    active = torch.stack([layers, pos, feats], 1)
    selected = torch.randperm(n_active, generator=g)[:n_sel]
    n_logits = 3
    n = n_sel + (n_layers + 1) * n_pos + n_logits
    adj = torch.zeros(n, n)
    # source "layer" of each node: features their layer, errors their layer, tokens -1
    src_layer = torch.cat([layers[selected], torch.arange(n_layers).repeat_interleave(n_pos), torch.full((n_pos,), -1)])
    for t in range(n_sel):
        mask = src_layer < layers[selected[t]]
        adj[t, : len(src_layer)][mask] = torch.randn(int(mask.sum()), generator=g)
    adj[n - n_logits :, : len(src_layer)] = torch.randn(n_logits, len(src_layer), generator=g)
    return AttributionGraph(
        input_string="a b c",
        input_tokens=torch.arange(n_pos) + 2,
        active_features=active,
        activation_values=torch.rand(n_active, generator=g),
        selected_features=selected,
        adjacency_matrix=adj,
        logit_tokens=torch.tensor([7, 8, 9]),
        logit_probabilities=torch.tensor([0.5, 0.3, 0.1]),
        bias_input=torch.randn(n, generator=g),
        n_layers=n_layers,
        input_token_strings=["<bos>", "a", " b", " c"],
        logit_token_strings=[" x", " y", " z"],
        model_name="tiny",
        feature_labels={(int(layers[selected[0]]), int(feats[selected[0]])): "first"},
    )


def test_node_order_and_labels():
    gr = random_graph()
    assert gr.n_nodes == 8 + 4 * 4 + 3
    assert gr.node_kinds() == ["feature"] * 8 + ["error"] * 12 + ["token"] * 4 + ["logit"] * 3
    assert gr.node_info(8 + 1 * 4 + 2) == ("error", 1, 2, -1)
    assert gr.node_info(gr.token_slice.start + 1) == ("token", -1, 1, 3)
    assert gr.node_info(gr.n_nodes - 1) == ("logit", 3, 3, 9)
    assert gr.node_label(0).endswith(": first")
    assert gr.node_label(gr.n_nodes - 3) == "logit ' x' p=0.500"
    assert gr.logit_targets[1] == (" y", 8)
    for i in range(gr.n_nodes):
        assert gr.node_index(gr.node_id(i)) == i or gr.node_id(i).startswith("0_")
    layer, pos, feat = gr.selected_active_features[3].tolist()
    assert gr.node_index((layer, pos, feat)) in {j for j in range(8) if gr.node_info(j)[1:] == (layer, pos, feat)}
    with pytest.raises(GraphError, match="does not exist"):
        gr.node_label(gr.n_nodes)
    with pytest.raises(GraphError, match="not a feature node"):
        gr.node_index((0, 0, 12345))


def test_influence_matches_closed_form():
    gr = random_graph(1)
    a = gr.adjacency_matrix.abs()
    a = a / a.sum(1, keepdim=True).clamp(min=1e-10)
    total = torch.linalg.inv(torch.eye(gr.n_nodes, dtype=torch.float64) - a.double()) - torch.eye(gr.n_nodes)
    expected = gr.logit_weights.double() @ total
    torch.testing.assert_close(gr.node_influence().double(), expected, rtol=1e-5, atol=1e-7)


def test_prune_keeps_tokens_logits_and_influential_nodes():
    gr = random_graph(2)
    res = gr.prune()
    assert res.node_mask[gr.token_slice].all() and res.node_mask[gr.logit_slice].all()
    # Edges only between kept nodes; kept features have incoming and outgoing edges.
    assert not res.edge_mask[~res.node_mask].any() and not res.edge_mask[:, ~res.node_mask].any()
    for i in range(gr.n_selected):
        if res.node_mask[i]:
            assert res.edge_mask[i].any() and res.edge_mask[:, i].any()
    full = gr.prune(1.0, 1.0)
    assert full.node_mask.sum() >= res.node_mask.sum()
    none = gr.prune(0.0, 0.0)
    assert none.node_mask.sum() <= res.node_mask.sum()
    with pytest.raises(GraphError, match="between 0 and 1"):
        gr.prune(1.5)


def test_save_load_round_trip(tmp_path):
    gr = random_graph(3)
    path = gr.save(tmp_path / "g.safetensors")
    back = AttributionGraph.load(path)
    for name in AttributionGraph._TENSORS:
        a, b = getattr(gr, name), getattr(back, name)
        assert (a is None and b is None) or torch.equal(a, b), name
    assert back.input_token_strings == gr.input_token_strings and back.feature_labels == gr.feature_labels
    assert back.node_label(0) == gr.node_label(0)
    with pytest.raises(GraphError, match=r"\.safetensors"):
        gr.save(tmp_path / "g.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(GraphError, match="not a readable"):
        AttributionGraph.load(tmp_path / "bad.safetensors")


def test_bad_shapes_are_refused():
    gr = random_graph()
    with pytest.raises(GraphError, match="adjacency_matrix has shape"):
        AttributionGraph(**{**gr.__dict__, "adjacency_matrix": torch.zeros(3, 3), "replacement": None})


def test_find_threshold_matches_circuit_tracer_formula():
    from gemscope_widgets.backend.circuits.graph import find_threshold

    def full_sort(scores, threshold):  # circuit-tracer's find_threshold, sorting every score
        s = torch.sort(scores, descending=True).values
        cum = torch.cumsum(s, 0) / torch.sum(s)
        return s[min(int(torch.searchsorted(cum, threshold)), len(cum) - 1)]

    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(1, 300, (1,), generator=g))
        scores = torch.rand(n, generator=g) * (torch.rand(n, generator=g) < 0.3)
        if trial % 5 == 0:
            scores = scores.round(decimals=1)
        if scores.sum() == 0:
            continue
        for t in (0.0, 0.3, 0.8, 0.98, 0.999, 1.0):
            assert float(find_threshold(scores, t)) == float(full_sort(scores, t)), (trial, t)
