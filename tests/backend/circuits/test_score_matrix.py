"""The reduced score matrix gives graph.scores(pinned=...) for any pinned set of its candidates (the computation the
circuit view repeats in the browser as the user pins)."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.circuits.score_matrix import pinned_scores, score_matrix
from gemscope_widgets.errors import GraphError
from tests.fixtures.graphs import synthetic_graph


@pytest.mark.parametrize("seed", [0, 4])
def test_pinned_scores_from_the_reduced_graph_equal_the_graphs(seed):
    g = synthetic_graph(n_features=60, n_edges=900, dense_logits=True, seed=seed)
    influence = g.node_influence()[: g.n_selected]
    order = torch.argsort(influence, descending=True).tolist()
    candidates = order[:30]
    m = score_matrix(g, candidates)
    assert m.n_candidates == 30 and m.size == 30 + g.n_nodes - g.n_selected
    for pinned in ([], order[:1], order[:5], order[3:20:2], candidates):
        got = pinned_scores(m, pinned)
        want = g.scores(pinned=pinned) if pinned else g.scores(pinned=[g.token_slice.start])
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), pinned
    # Pinning features changes the scores (the test can fail): more pinned features, less error.
    assert pinned_scores(m, candidates)[0] > pinned_scores(m, [])[0]


def test_an_error_node_without_edges_removes_its_features_unmerged():
    g = synthetic_graph(n_features=40, n_edges=500, dense_logits=True, seed=1)
    layer, pos = (int(x) for x in g.selected_active_features[0, :2])
    error = g.error_slice.start + layer * g.n_pos + pos
    g.adjacency_matrix[error] = 0
    g.adjacency_matrix[:, error] = 0  # as a file whose pruning dropped the error node
    m = score_matrix(g, range(10))
    assert m.candidate_error[0] == -1
    assert pinned_scores(m, [1, 2]) == pytest.approx(g.scores(pinned=[1, 2]), rel=1e-5)


def test_candidates_must_be_features():
    g = synthetic_graph(n_features=20, n_edges=200, seed=0)
    with pytest.raises(GraphError, match="feature nodes"):
        score_matrix(g, [g.n_nodes - 1])
