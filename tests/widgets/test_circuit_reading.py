"""What the circuit view's payload carries for reading the graph: the legible subgraph's flags and the scores."""

from __future__ import annotations

import numpy as np
import pytest

from gemscope_widgets.backend.circuits.legible_subgraph import legible_subgraph
from gemscope_widgets.backend.circuits.score_matrix import pinned_scores, score_matrix
from gemscope_widgets.widgets import circuit_payload
from gemscope_widgets.widgets.circuit import Circuit, payload_arrays
from tests.fixtures.graphs import synthetic_graph


def test_payload_focus_flags_are_the_legible_subgraph():
    g = synthetic_graph(n_features=80, n_edges=1500, dense_logits=True, seed=2)
    w = Circuit.build(g, node_threshold=0.7)
    nodes = payload_arrays(w._header, w._data, "nodes", "node")
    focus = payload_arrays(w._header, w._data, "nodes", "focus").astype(bool)
    sub = legible_subgraph(g, 0.7, 0.98)
    assert set(nodes[focus].tolist()) == set(sub.nodes.nonzero().flatten().tolist())
    assert w._header["focus"] == {"logit_token": g.logit_token_strings[0], "n_chosen": sub.n_chosen,
                                  "n_pruned": sub.n_pruned}
    assert w.show_all is False
    assert Circuit.build(g, show_all=True).show_all is True


def test_payload_scores_are_the_graphs_and_fall_back_to_prunes_features(monkeypatch):
    g = synthetic_graph(n_features=80, n_edges=1500, dense_logits=True, seed=2)
    header = Circuit.build(g)._header
    assert [header["scores"][k] for k in ("replacement", "completeness")] == pytest.approx(list(g.scores()))
    w = Circuit.build(g)
    features = payload_arrays(w._header, w._data, "nodes", "node")[
        payload_arrays(w._header, w._data, "nodes", "kind") == 0]
    assert np.array_equal(payload_arrays(w._header, w._data, "scores", "candidates"), np.sort(features))
    # Over budget, only prune()'s features are candidates, and the payload says so.
    monkeypatch.setattr(circuit_payload, "MAX_SCORE_ENTRIES", 10)
    small = Circuit.build(g)
    kept = set(g.prune().node_mask[: g.n_selected].nonzero().flatten().tolist())
    assert set(payload_arrays(small._header, small._data, "scores", "candidates").tolist()) == kept
    assert "prune()" in small._header["scores"]["scope"]
    m = score_matrix(g, sorted(kept))
    assert pinned_scores(m, sorted(kept)[:3]) == pytest.approx(g.scores(pinned=sorted(kept)[:3]), rel=1e-5)
