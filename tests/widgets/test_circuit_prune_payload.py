"""The circuit view's payload is the graph ``prune()`` returns: its ``kept`` flags mark exactly prune()'s nodes and
edges (the ones the Neuronpedia JSON holds), nothing is capped unless asked, and a cap says what it left out."""

from __future__ import annotations

import numpy as np
import pytest

from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.testing.transcoders import write_calibrated_set
from gemscope_widgets.widgets.circuit import Circuit, encode_graph
from tests.fixtures.graphs import synthetic_graph


def _array(header, data, group, name):
    ref = header[group][name]
    dtype = {"uint16": "<u2", "uint32": "<u4", "float32": "<f4"}[ref["dtype"]]
    return np.frombuffer(data, dtype=dtype, count=ref["length"], offset=ref["offset"]).astype(np.int64)


def kept_of(header, data) -> tuple[set[int], set[tuple[int, int]]]:
    """The payload's kept nodes and kept (target, source) edges, as graph node indices."""
    nodes = _array(header, data, "nodes", "node")
    node_kept = _array(header, data, "nodes", "kept")
    src = nodes[_array(header, data, "edges", "source")]
    dst = nodes[_array(header, data, "edges", "target")]
    edge_kept = _array(header, data, "edges", "kept")
    return ({int(n) for n, k in zip(nodes, node_kept) if k},
            {(int(t), int(s)) for t, s, k in zip(dst, src, edge_kept) if k})


def prune_of(graph, node_threshold=0.8, edge_threshold=0.98) -> tuple[set[int], set[tuple[int, int]]]:
    result = graph.prune(node_threshold, edge_threshold)
    t, s = (result.edge_mask & (graph.adjacency_matrix != 0)).nonzero(as_tuple=True)
    return set(result.node_mask.nonzero().flatten().tolist()), set(zip(t.tolist(), s.tolist()))


@pytest.mark.parametrize(("seed", "node_threshold", "edge_threshold"), [(0, 0.8, 0.98), (3, 0.5, 0.9), (5, 0.95, 0.99)])
def test_kept_flags_are_exactly_what_prune_keeps(seed, node_threshold, edge_threshold):
    g = synthetic_graph(n_features=80, n_edges=1500, seed=seed, dense_logits=seed == 5)
    header, data = encode_graph(g, node_threshold=node_threshold, edge_threshold=edge_threshold)
    nodes, edges = kept_of(header, data)
    want_nodes, want_edges = prune_of(g, node_threshold, edge_threshold)
    assert nodes == want_nodes and edges == want_edges
    assert header["pruned"] == {"node_threshold": node_threshold, "edge_threshold": edge_threshold,
                                "n_nodes": len(want_nodes), "n_edges": len(want_edges)}
    assert header["left_out"] is None
    # The same graph as the Neuronpedia JSON of the same thresholds.
    g.model_name = "google/gemma-3-270m"
    js = g.to_neuronpedia(node_threshold=node_threshold, edge_threshold=edge_threshold)
    assert {(g.node_index(d["target"]), g.node_index(d["source"])) for d in js["links"]} == edges


def test_a_cap_is_reported_with_what_it_left_out():
    g = synthetic_graph(n_features=80, n_edges=1500, seed=0)
    _, want_edges = prune_of(g)
    header, data = encode_graph(g, max_edges=40)
    _, edges = kept_of(header, data)
    assert header["n_edges"] == 40 and edges < want_edges
    assert header["left_out"]["edges"] == len(want_edges) - len(edges) > 0
    assert "at most 40 edges" in header["left_out"]["reason"]


def test_the_default_budget_sends_prunes_edges_first(monkeypatch):
    from gemscope_widgets.widgets import circuit_payload

    g = synthetic_graph(n_features=80, n_edges=1500, seed=0)
    want_nodes, want_edges = prune_of(g)
    monkeypatch.setattr(circuit_payload, "MAX_EDGES", len(want_edges) + 5)
    header, data = encode_graph(g)
    assert header["n_edges"] == len(want_edges) + 5 and header["left_out"] is None
    assert kept_of(header, data) == (want_nodes, want_edges)
    monkeypatch.setattr(circuit_payload, "MAX_EDGES", len(want_edges) - 7)
    header, data = encode_graph(g)
    assert header["left_out"]["edges"] == 7 and kept_of(header, data)[1] < want_edges


def test_the_view_of_a_real_graph_carries_every_edge_prune_keeps(tiny_model, tmp_path):
    # The view used to send the 20,000 most influential edges ranked on a differently pruned graph.
    root = write_calibrated_set(tiny_model, tmp_path / "set", width=128, l0=8, affine=True, seed=1)
    graph = attribute(tiny_model, load_transcoders(root, "transcoder_all"), "The quick brown fox jumps over the lazy",
                      max_feature_nodes=None, progress=False)
    view = Circuit.build(graph)
    nodes, edges = kept_of(view._header, view._data)
    want_nodes, want_edges = prune_of(graph)
    assert nodes == want_nodes and edges == want_edges and len(edges) > 100
    graph.model_name = "google/gemma-3-270m"
    js = graph.to_neuronpedia()
    assert {(graph.node_index(d["target"]), graph.node_index(d["source"])) for d in js["links"]} == edges
    assert {graph.node_index(n["node_id"]) for n in js["nodes"]} == nodes


def test_threshold_zero_and_one_stay_exact():
    g = synthetic_graph(n_features=40, n_edges=600, seed=2)
    for node_threshold, edge_threshold in ((1.0, 1.0), (0.0, 0.0)):
        header, data = encode_graph(g, node_threshold=node_threshold, edge_threshold=edge_threshold)
        assert kept_of(header, data) == prune_of(g, node_threshold, edge_threshold)


def flags_of(view) -> tuple[set[int], set[tuple[int, int]]]:
    """The view's ``_kept`` flags (a byte per payload node, then per payload edge) as graph nodes and edges."""
    header, data = view._header, view._data
    nodes = _array(header, data, "nodes", "node")
    src = nodes[_array(header, data, "edges", "source")]
    dst = nodes[_array(header, data, "edges", "target")]
    flags = np.frombuffer(view._kept, dtype=np.uint8)
    assert len(flags) == len(nodes) + len(src)
    node_flags, edge_flags = flags[: len(nodes)], flags[len(nodes):]
    return ({int(n) for n, k in zip(nodes, node_flags) if k},
            {(int(t), int(s)) for t, s, k in zip(dst, src, edge_flags) if k})


def test_moving_a_threshold_reprunes_in_the_kernel():
    g = synthetic_graph(n_features=80, n_edges=1500, seed=4)
    view = Circuit.build(g)
    assert flags_of(view) == prune_of(g) and view._kept_at["node_threshold"] == 0.8
    for node_threshold, edge_threshold in ((0.5, 0.98), (0.5, 0.7), (0.95, 0.995)):
        view.node_threshold, view.edge_threshold = node_threshold, edge_threshold
        want_nodes, want_edges = prune_of(g, node_threshold, edge_threshold)
        assert flags_of(view) == (want_nodes, want_edges)
        assert view._kept_at == {"node_threshold": node_threshold, "edge_threshold": edge_threshold,
                                 "n_nodes": len(want_nodes), "n_edges": len(want_edges), "left_out": None}
        # The view's status line: prune()'s feature and error nodes are its count less the tokens and logits
        # (always kept), and the graph's own total is print(graph)'s.
        inner = int(g.prune(node_threshold, edge_threshold).node_mask[: g.token_slice.start].sum())
        header = view._header
        assert view._kept_at["n_nodes"] - len(header["tokens"]) - len(header["logit_tokens"]) == inner
        assert header["n_nodes_total"] == g.n_nodes and f"{g.n_nodes} nodes" in repr(g)


def test_a_pruning_beyond_the_payload_says_what_it_lacks():
    from gemscope_widgets.widgets.circuit_payload import kept_flags

    g = synthetic_graph(n_features=80, n_edges=1500, seed=4)
    header, data = encode_graph(g, max_node_rank=0.5, node_threshold=0.4)
    at, _ = kept_flags(g, header, data, 0.95, 0.99)
    want_nodes, want_edges = prune_of(g, 0.95, 0.99)
    nodes = _array(header, data, "nodes", "node")
    sent_edges = set(zip(nodes[_array(header, data, "edges", "target")].tolist(),
                         nodes[_array(header, data, "edges", "source")].tolist()))
    assert at["n_nodes"] == len(want_nodes) and at["n_edges"] == len(want_edges)
    assert at["left_out"]["nodes"] == len(want_nodes - set(nodes.tolist())) > 0
    assert at["left_out"]["edges"] == len(want_edges - sent_edges) > 0
    assert "max_node_rank" in at["left_out"]["reason"]
