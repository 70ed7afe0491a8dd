"""The graph summarised for a reader, from a script: prune()'s flags on exactly its nodes and edges, ranks that
reproduce prune()'s node threshold, a budget that says what it left out, and each feature's top logits equal to
the logit lens of its transcoder feature."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.analysis.logit_lens import logit_lens
from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.node_summary import (
    feature_dictionary,
    feature_top_logits,
    group_summaries,
    kept_on,
    summarise_nodes,
)
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.errors import CircuitError
from tests.fixtures.graphs import synthetic_graph


def test_summary_flags_are_prunes_nodes_and_edges():
    g = synthetic_graph(n_features=80, n_edges=1500, seed=3)
    s = summarise_nodes(g, 0.5, 0.9, max_edges=10_000)
    pruned = g.prune(0.5, 0.9)
    kept_edges = pruned.edge_mask & (g.adjacency_matrix != 0)
    assert set(s.nodes[s.kept].tolist()) == set(pruned.node_mask.nonzero().flatten().tolist())
    pairs = {(int(s.nodes[t]), int(s.nodes[u])) for t, u, k in zip(s.target, s.source, s.edge_kept) if k}
    assert pairs == set(zip(*(x.tolist() for x in kept_edges.nonzero(as_tuple=True))))
    assert s.left_out_edges == 0 and s.n_kept_edges == len(pairs)
    # Ranks reproduce prune()'s first cut: feature nodes ranked under the threshold are those prune() starts from.
    influence = g.node_influence()
    for j, node in enumerate(s.nodes.tolist()):
        if s.kinds[j] == "feature" and s.kept[j]:
            assert s.rank[j] < 0.5 + 1e-6 and influence[node] > 0
    # Edges come strongest first, weights as in the adjacency matrix.
    assert (s.edge_rank[1:] >= s.edge_rank[:-1]).all()
    assert torch.equal(torch.from_numpy(s.weight), g.adjacency_matrix[s.nodes[s.target], s.nodes[s.source]])
    # kept_on reads another pruning on the same arrays.
    nodes, edges, n_nodes, n_edges = kept_on(g, s.nodes, s.source, s.target, 0.3, 0.9)
    assert n_nodes == int(g.prune(0.3, 0.9).node_mask.sum()) and nodes.sum() <= n_nodes and edges.sum() <= n_edges


def test_a_budget_keeps_prunes_edges_first_and_counts_the_rest():
    g = synthetic_graph(n_features=80, n_edges=1500, seed=0)
    full = summarise_nodes(g, max_edges=100_000)
    capped = summarise_nodes(g, max_edges=full.n_kept_edges - 5)
    assert capped.left_out_edges == 5 and capped.edge_kept.all()
    with pytest.raises(CircuitError, match="max_edges must be positive"):
        summarise_nodes(g, max_edges=0)


def test_feature_top_logits_are_the_logit_lens_of_each_feature(tiny_model, tiny_transcoder_root):
    tset = load_transcoders(tiny_transcoder_root / "affine")
    graph = attribute(tiny_model, tset, "The quick brown fox jumps", progress=False, batch_size=16)
    nodes = list(range(min(graph.n_selected, 6)))
    got = feature_top_logits(graph, tiny_model, tset, nodes, k=4)
    for node, top in zip(nodes, got):
        _, layer, _, feature = graph.node_info(node)
        dictionary, index = feature_dictionary(tset, layer, feature)
        want, _ = logit_lens(tiny_model, dictionary, index, k=4)
        assert [t for t, _ in top] == [t for t, _ in want]
        assert [v for _, v in top] == pytest.approx([v for _, v in want], rel=1e-4, abs=1e-5)
    # Without a model nothing is computed.
    assert feature_top_logits(graph, None, tset, nodes) == [[] for _ in nodes]


def test_group_summaries_are_the_grouped_graphs_sums():
    g = synthetic_graph(n_features=40, n_edges=500, dense_logits=True, seed=4)
    # Group a: a feature-to-feature edge's source and two others; group b: its target and one other.
    t, u = (g.adjacency_matrix[: g.n_selected, : g.n_selected] != 0).nonzero()[0].tolist()
    rest = [i for i in range(g.n_selected) if i not in (t, u)]
    members_a, members_b = sorted([u, *rest[:2]]), sorted([t, rest[2]])
    g.group("a", members_a)
    g.group("b", members_b)
    s = summarise_nodes(g, max_edges=100_000)
    summaries = {x["name"]: x for x in group_summaries(g, s.nodes)}
    grouped = g.grouped()
    row = {tuple(ms) if len(ms) > 1 else ms[0]: i for i, ms in enumerate(grouped.members)}
    a, b = row[tuple(members_a)], row[tuple(members_b)]
    assert summaries["a"]["influence"] == pytest.approx(float(grouped.influence[a]), rel=1e-5)
    assert summaries["a"]["to"]["b"] == pytest.approx(float(grouped.adjacency[b, a]), rel=1e-5)
    assert grouped.adjacency[b, a] != 0
    outputs = dict(map(tuple, summaries["a"]["outputs"]))
    inputs = dict(map(tuple, summaries["b"]["inputs"]))
    checked = 0
    for j, node in enumerate(s.nodes.tolist()):
        if node in row and node not in (*members_a, *members_b):
            assert outputs.get(j, 0.0) == pytest.approx(float(grouped.adjacency[row[node], a]), abs=1e-6)
            assert inputs.get(j, 0.0) == pytest.approx(float(grouped.adjacency[b, row[node]]), abs=1e-6)
            checked += bool(outputs.get(j) or inputs.get(j))
    assert checked > 0
    assert all(j not in outputs for j, n in enumerate(s.nodes.tolist()) if n in (*members_a, *members_b))
