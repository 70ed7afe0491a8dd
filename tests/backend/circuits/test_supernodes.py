"""Supernodes: grouping, summed edges and influence against a brute-force sum, Neuronpedia's qParams format, files,
and interventions on a group equal to intervening on its members."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.graph import AttributionGraph
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.errors import GraphError
from tests.fixtures.graphs import synthetic_graph


@pytest.fixture
def graph():
    return synthetic_graph(n_features=30, n_edges=300, dense_logits=True, seed=4)


def test_grouped_edges_and_influence_are_sums(graph):
    members = graph.group("capital", [0, 1, 2])
    assert members == [0, 1, 2] and graph.supernodes == {"capital": [0, 1, 2]}
    merged = graph.grouped()
    g = merged.labels.index("capital")
    assert merged.members[g] == [0, 1, 2] and len(merged.labels) == graph.n_nodes - 2
    adj = graph.adjacency_matrix
    influence = graph.node_influence()
    for k, ms in enumerate(merged.members):
        if k == g:
            continue
        (i,) = ms
        assert float(merged.adjacency[k, g]) == pytest.approx(float(adj[i, [0, 1, 2]].sum()), abs=1e-5)
        assert float(merged.adjacency[g, k]) == pytest.approx(float(adj[[0, 1, 2], i].sum()), abs=1e-5)
        assert float(merged.influence[k]) == pytest.approx(float(influence[i]), abs=1e-6)
    assert float(merged.influence[g]) == pytest.approx(float(influence[:3].sum()), rel=1e-5)
    assert float(merged.adjacency[g, g]) == 0.0


def test_stored_as_neuronpedia_supernodes_and_kept_by_files(graph, tmp_path):
    pruned = graph.to_neuronpedia(scan="gemma-3-270m")
    assert graph.supernodes == {} and graph.info == {}  # reading supernodes changes nothing
    graph.group("capital", [0, 1, 2])
    # A graph given supernodes is still pruned like any attributed graph (it was not read from a file).
    assert len(graph.to_neuronpedia(scan="gemma-3-270m")["nodes"]) == len(pruned["nodes"])
    exported = graph.to_neuronpedia(node_threshold=1.0, edge_threshold=1.0, scan="gemma-3-270m")
    ids = [graph.node_id(i) for i in (0, 1, 2)]
    assert exported["qParams"]["supernodes"] == [["capital", *ids]]
    imported = AttributionGraph.from_neuronpedia(exported)
    assert [[imported.node_id(i) for i in ms] for ms in imported.supernodes.values()] == [ids]
    again = AttributionGraph.load(graph.save(tmp_path / "g.safetensors"))
    assert again.supernodes == {"capital": [0, 1, 2]}
    graph.ungroup("capital")
    assert graph.supernodes == {} and graph.to_neuronpedia(scan="gemma-3-270m")["qParams"]["supernodes"] == []


def test_bad_groups(graph):
    with pytest.raises(GraphError, match="name"):
        graph.group("", [0, 1])
    with pytest.raises(GraphError, match="at least two"):
        graph.group("one", [3, 3])
    with pytest.raises(GraphError, match="Logit nodes"):
        graph.group("logits", [0, graph.logit_slice.start])
    graph.group("a", [0, 1])
    with pytest.raises(GraphError, match="already in supernode 'a'"):
        graph.group("b", [1, 2])
    with pytest.raises(GraphError, match="No supernode named 'zzz'"):
        graph.ungroup("zzz")


def test_intervening_on_a_supernode_equals_its_members(tiny_model, tiny_transcoder_root):
    tset = load_transcoders(tiny_transcoder_root / "affine")
    graph = attribute(tiny_model, tset, "The quick brown fox jumps over the", progress=False, batch_size=16)
    top = torch.argsort(graph.node_influence()[: graph.n_selected], descending=True)[:3].tolist()
    graph.group("top three", top)
    by_name = graph.intervene({"top three": 0.0})
    by_member = graph.intervene({i: 0.0 for i in top})
    assert by_name.logit_probabilities_after == pytest.approx(by_member.logit_probabilities_after, rel=1e-6)
    assert sorted(c[0] for c in by_name.changes) == sorted(top)
    with pytest.raises(GraphError, match="given twice"):
        graph.intervene({"top three": 0.0, top[0]: 1.0})
    graph.ungroup("top three")
    graph.group("with a token", [top[0], graph.token_slice.start + 1])
    with pytest.raises(GraphError, match="holds a token node"):
        graph.intervene({"with a token": 0.0})
