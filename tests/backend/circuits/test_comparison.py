"""compare_graphs: node keys, influence shares and kept sets equal a direct computation from each graph."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.comparison import compare_graphs
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.errors import GraphError
from tests.fixtures.graphs import synthetic_graph


def _direct(graph, node_threshold=0.8, edge_threshold=0.98):
    """Feature (layer, feature) -> (share of influence, kept), computed node by node from the graph's fields."""
    influence = graph.node_influence().double()
    total = float(influence[: graph.n_nodes - graph.n_logits].sum())
    mask = graph.prune(node_threshold, edge_threshold).node_mask
    out: dict[tuple[int, int], list] = {}
    for i in range(graph.n_selected):
        layer, _pos, feature = graph.active_features[graph.selected_features[i]].tolist()
        entry = out.setdefault((layer, feature), [0.0, False])
        entry[0] += float(influence[i]) / total
        entry[1] = entry[1] or bool(mask[i])
    return out


def test_a_graph_against_itself():
    g = synthetic_graph(n_features=40, n_edges=400, dense_logits=True, seed=3)
    c = compare_graphs(g, g, k=1000)
    assert c.only_a == [] and c.only_b == [] and c.edges_only_a == [] and c.edges_only_b == []
    assert c.overlap == 1.0 and c.weighted_overlap == pytest.approx(1.0)
    assert all(x.delta == 0 for x in c.largest_changes)


def test_shares_and_kept_sets_equal_a_direct_computation():
    a = synthetic_graph(n_features=40, n_edges=400, dense_logits=True, seed=1)
    b = synthetic_graph(n_features=40, n_edges=400, dense_logits=True, seed=2)
    c = compare_graphs(a, b, k=1000)
    da, db = _direct(a), _direct(b)
    everything = {x.key[1:]: x for x in c.largest_changes}
    assert set(everything) == set(da) | set(db)
    for key, x in everything.items():
        assert x.influence_a == pytest.approx(da.get(key, [0.0])[0], abs=1e-12)
        assert x.influence_b == pytest.approx(db.get(key, [0.0])[0], abs=1e-12)
        assert x.kept_a == da.get(key, [0, False])[1] and x.kept_b == db.get(key, [0, False])[1]
    assert {x.key[1:] for x in c.only_a} == {k for k, v in da.items() if v[1] and not db.get(k, [0, False])[1]}
    assert {x.key[1:] for x in c.only_b} == {k for k, v in db.items() if v[1] and not da.get(k, [0, False])[1]}
    assert [abs(x.delta) for x in c.largest_changes] == sorted((abs(x.delta) for x in c.largest_changes),
                                                                reverse=True)
    # Labels name what was matched, without a position (the two prompts place a feature differently).
    assert all(x.label.startswith(f"L{x.key[1]} #{x.key[2]}") and "@" not in x.label for x in c.largest_changes)
    kept_a = {k for k, v in da.items() if v[1]}
    kept_b = {k for k, v in db.items() if v[1]}
    assert c.overlap == pytest.approx(len(kept_a & kept_b) / len(kept_a | kept_b))


def test_two_prompts_on_a_model(tiny_model, tiny_transcoder_root):
    tset = load_transcoders(tiny_transcoder_root / "affine")
    a = attribute(tiny_model, tset, "The quick brown fox jumps over the", progress=False, batch_size=16)
    b = attribute(tiny_model, tset, "A slow green turtle walks under the", progress=False, batch_size=16)
    c = compare_graphs(a, b, k=5)
    assert len(c.only_a) <= 5 and c.prompt_a == a.input_string
    da, db = _direct(a), _direct(b)
    for x in c.only_a:
        assert da[x.key[1:]][1] and not db.get(x.key[1:], [0, False])[1]
    assert "only in A" in repr(c)


def test_bad_input():
    a = synthetic_graph(n_layers=4, dense_logits=True)
    with pytest.raises(GraphError, match="different models"):
        compare_graphs(a, synthetic_graph(n_layers=5, dense_logits=True))
    with pytest.raises(GraphError, match="positive integer"):
        compare_graphs(a, a, k=0)
    empty = synthetic_graph(dense_logits=True)
    empty.adjacency_matrix = torch.zeros_like(empty.adjacency_matrix)
    with pytest.raises(GraphError, match="no influence"):
        compare_graphs(empty, a)
