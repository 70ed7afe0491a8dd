"""The circuit view's payload and Python API, on synthetic graphs (the browser side is in tests/ui/)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemscope_widgets.backend.circuits.graph import GraphError, compute_edge_influence
from gemscope_widgets.widgets.circuit import Circuit, CircuitError, encode_graph, intervention_rows
from tests.fixtures.graphs import synthetic_graph


def _array(header, data, group, name):
    ref = header[group][name]
    dtype = {"uint16": "<u2", "uint32": "<u4", "float32": "<f4"}[ref["dtype"]]
    return np.frombuffer(data, dtype=dtype, count=ref["length"], offset=ref["offset"])


def test_payload_nodes_and_edges_match_the_graph():
    g = synthetic_graph(n_features=40, n_edges=400)
    header, data = encode_graph(g, max_node_rank=1.0)
    assert len(data) == header["bytes"]
    nodes = _array(header, data, "nodes", "node")
    kinds = _array(header, data, "nodes", "kind")
    influence = g.node_influence()
    # Every token and logit node is sent; features/errors only when they have influence.
    names = g.node_kinds()
    for k, kind in enumerate(("feature", "error", "token", "logit")):
        sent = {int(n) for n, c in zip(nodes, kinds) if c == k}
        want = {i for i, nk in enumerate(names) if nk == kind and (kind in ("token", "logit") or influence[i] > 0)}
        assert sent == want, kind
    # Edges are COO over local indices; weights are the adjacency entries (row = target, column = source).
    src = _array(header, data, "edges", "source")
    dst = _array(header, data, "edges", "target")
    weight = _array(header, data, "edges", "weight")
    for s, t, w in zip(src, dst, weight):
        assert g.adjacency_matrix[nodes[t], nodes[s]] == pytest.approx(float(w))
    # All influential edges between sent nodes are there, ordered by edge influence (ranks ascending).
    keep = torch.zeros(g.n_nodes, dtype=torch.bool)
    keep[torch.as_tensor(nodes.astype(np.int64))] = True
    scores = g.edge_influence(keep)
    assert len(src) == int((scores > 0).sum())
    rank = _array(header, data, "edges", "rank")
    assert rank[0] == 0 and np.all(np.diff(rank) >= 0) and rank[-1] < 1


def test_node_rank_reproduces_prune_node_threshold():
    # Keeping rank < 0.8 is circuit-tracer's node step: influence >= find_threshold(influence, 0.8).
    from gemscope_widgets.backend.circuits.graph import find_threshold

    g = synthetic_graph(n_features=60, n_edges=600, seed=3)
    header, data = encode_graph(g, max_node_rank=1.0)
    nodes = _array(header, data, "nodes", "node")
    kinds = _array(header, data, "nodes", "kind")
    rank = _array(header, data, "nodes", "rank")
    influence = g.node_influence()
    threshold = find_threshold(influence, 0.8)
    for n, k, r in zip(nodes, kinds, rank):
        if k <= 1:
            assert (r < 0.8) == bool(influence[n] >= threshold), n


def test_max_edges_keeps_the_strongest():
    g = synthetic_graph(n_features=50, n_edges=800, seed=1)
    header, data = encode_graph(g, max_edges=50, max_node_rank=1.0)
    assert header["n_edges"] == 50
    nodes = torch.as_tensor(_array(header, data, "nodes", "node").astype(np.int64))
    keep = torch.zeros(g.n_nodes, dtype=torch.bool)
    keep[nodes] = True
    scores = compute_edge_influence(torch.where(keep[:, None] & keep[None, :], g.adjacency_matrix, 0), g.logit_weights)
    src = nodes[_array(header, data, "edges", "source").astype(np.int64)]
    dst = nodes[_array(header, data, "edges", "target").astype(np.int64)]
    sent = scores[dst, src]
    assert float(sent.min()) >= float(torch.topk(scores.flatten(), 50).values.min()) - 1e-7


def test_widget_traits_validate_and_pin():
    g = synthetic_graph()
    w = Circuit.build(g)
    assert w.node_threshold == 0.8 and w.edge_threshold == 0.98
    with pytest.raises(CircuitError, match="between 0 and 1"):
        w.node_threshold = 1.5
    with pytest.raises(CircuitError, match="do not exist"):
        w.pinned = [g.n_nodes]
    w.pin([0, g.node_id(1)])
    assert w.pinned == [0, 1]
    with pytest.raises(GraphError):
        w.pin(["E_999_999"])
    clicks = []
    w.on_click(clicks.append)
    w.clicked = 3
    assert clicks == [3]


def test_intervention_without_a_model_shows_the_error():
    g = synthetic_graph()
    w = Circuit.build(g)
    w.selected = [0, g.n_selected]  # a feature and an error node: only the feature is intervened on
    w._on_custom_msg(w, {"type": "intervene", "mode": "set", "value": 0.0}, [])
    assert w.intervention["state"] == "error" and w.intervention["message"]
    assert w.intervention["nodes"] == [0]
    w._on_custom_msg(w, {"type": "intervene", "mode": "add", "value": 0.0}, [])
    assert "expected one of" in w.intervention["message"]
    with pytest.raises(CircuitError, match="mode"):
        w.intervene([0], mode="add")
    with pytest.raises(CircuitError, match="at least one"):
        w.intervene([])


def test_intervention_rows_from_an_intervention_result():
    from gemscope_widgets.backend.circuits.intervention import InterventionResult, TopLogit

    result = InterventionResult(
        changes=[],
        top_before=[TopLogit(5, " Paris", 0.5), TopLogit(7, " Rome", 0.2)],
        top_after=[TopLogit(7, " Rome", 0.4), TopLogit(9, " Lyon", 0.3)],
        logit_tokens=[5],
        logit_probabilities_before=[0.5],
        logit_probabilities_after=[0.1],
        compared=[(5, " Paris", 0.5, 0.1), (7, " Rome", 0.2, 0.4), (9, " Lyon", 0.01, 0.3)],
    )
    assert intervention_rows(result) == [[" Paris", 0.5, 0.1], [" Rome", 0.2, 0.4], [" Lyon", 0.01, 0.3]]
