"""The legible subgraph: prune()'s feature and error nodes with the most influence on the top logit alone."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.circuits.legible_subgraph import legible_subgraph
from gemscope_widgets.errors import GraphError
from tests.fixtures.graphs import synthetic_graph


def _influence_on(graph, logit):
    # Oracle: the series A + A² + … written out on the row-normalised |A|, seeded at one logit.
    a = graph.adjacency_matrix.abs()
    a = a / a.sum(1, keepdim=True).clamp(min=1e-10)
    current = torch.zeros(graph.n_nodes)
    current[graph.logit_slice.start + logit] = 1.0
    total = torch.zeros(graph.n_nodes)
    for _ in range(graph.n_nodes):
        current = current @ a
        total += current
    return total


def test_the_chosen_nodes_are_prunes_most_influential_on_the_top_logit():
    g = synthetic_graph(n_features=80, n_edges=1500, dense_logits=True, seed=2)
    sub = legible_subgraph(g, max_nodes=10)
    kept = g.prune().node_mask
    inner = slice(0, g.token_slice.start)
    assert sub.n_pruned == int(kept[inner].sum()) > 10 and sub.n_chosen == 10
    chosen = sub.nodes[inner].nonzero().flatten()
    assert kept[chosen].all()
    influence = _influence_on(g, 0)
    others = (kept[inner] & ~sub.nodes[inner]).nonzero().flatten()
    assert influence[chosen].min() >= influence[others].max() - 1e-6
    assert sub.nodes[g.token_slice].all() and sub.nodes[sub.logit] and sub.logit == g.logit_slice.start
    assert int(sub.nodes[g.logit_slice].sum()) == 1
    # Another logit gives another subgraph.
    assert not torch.equal(legible_subgraph(g, max_nodes=10, logit=1).nodes, sub.nodes)


def test_bad_arguments_are_refused():
    g = synthetic_graph(n_features=20, n_edges=200, seed=0)
    with pytest.raises(GraphError, match="max_nodes"):
        legible_subgraph(g, max_nodes=0)
    with pytest.raises(GraphError, match="logit must be"):
        legible_subgraph(g, logit=g.n_logits)
