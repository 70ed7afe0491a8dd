"""Supernodes from the circuit view (kernel side): the view's "group" and "ungroup" messages reach graph.group /
graph.ungroup, the groups travel as summed nodes, are saved in qParams.supernodes and in the static HTML."""

from __future__ import annotations

import pytest

from gemscope_widgets.errors import GraphError
from gemscope_widgets.widgets.circuit import Circuit
from tests.fixtures.graphs import synthetic_graph


def _message(w, content):
    w._on_custom_msg(w, content, [])


def test_grouping_and_ungrouping_from_the_view():
    g = synthetic_graph(n_features=40, n_edges=500, dense_logits=True, seed=4)
    w = Circuit.build(g)
    w.selected = [3, 1]
    _message(w, {"type": "group", "name": " say a capital "})
    assert w.supernodes == {"say a capital": [1, 3]} == g.supernodes
    assert w.selected == [] and w.group_message == ""
    assert g.info["neuronpedia"]["qParams"]["supernodes"] == [["say a capital", g.node_id(1), g.node_id(3)]]
    (summary,) = w._groups
    assert summary["influence"] == pytest.approx(float(g.node_influence()[[1, 3]].sum()), rel=1e-6)
    html = w.static_html()
    assert "Supernodes" in html and "say a capital" in html
    # A node of another group, or one node alone: the view is told why, the graph is unchanged.
    w.selected = [3, 5]
    _message(w, {"type": "group", "name": "other"})
    assert "already in supernode 'say a capital'" in w.group_message and set(g.supernodes) == {"say a capital"}
    _message(w, {"type": "ungroup", "name": "say a capital"})
    assert w.supernodes == {} and w._groups == [] and w.group_message == ""
    assert "Supernodes" not in w.static_html()
    with pytest.raises(GraphError, match="at least two nodes"):
        w.group("x", [2])


def test_a_graph_files_supernodes_are_drawn_when_opened(tmp_path):
    g = synthetic_graph(n_features=40, n_edges=500, dense_logits=True, seed=4)
    g.group("pair", [0, 2])
    g.model_name = "google/gemma-3-270m"
    path = g.save_neuronpedia(tmp_path / "g.json")
    back = type(g).from_neuronpedia(path)
    w = Circuit.build(back)
    assert {name: [back.node_id(m) for m in ms] for name, ms in w.supernodes.items()} == {
        "pair": [g.node_id(0), g.node_id(2)]}
    assert [x["name"] for x in w._groups] == ["pair"]


def test_suggested_groups_from_the_view_are_graph_suggest_groups_and_accepting_one_groups_it():
    g = synthetic_graph(n_features=40, n_edges=500, dense_logits=True, seed=5)
    w = Circuit.build(g, node_threshold=0.9)
    _message(w, {"type": "suggest_groups"})
    want = g.suggest_groups(node_threshold=0.9, edge_threshold=0.98)
    assert len(want) >= 2  # this graph has several, one named after a markup-looking logit token
    s = w.suggestions
    assert s["state"] == "done" and s["at"] == [0.9, 0.98] and s["request"] == 1 and s["dropped"] == want.dropped
    assert [(i["name"], i["members"]) for i in s["items"]] == [(x.name, x.members) for x in want]
    assert [i["retention"] for i in s["items"]] == pytest.approx([x.retention for x in want], rel=1e-6)
    assert g.supernodes == {}  # suggesting groups nothing
    _message(w, {"type": "suggest_groups"})  # asked again: a new value, so the view's "suggesting…" ends
    assert w.suggestions["request"] == 2 and w.suggestions["items"] == s["items"]

    first, rest = s["items"][0], s["items"][1:]
    _message(w, {"type": "accept_suggestion", "index": 0})
    assert g.supernodes == {first["name"]: sorted(first["members"])} and w.supernodes == g.supernodes
    assert w.suggestions["items"] == rest and w.group_message == ""
    assert len(w._groups) == 1
    # A stale index is refused with a reason; the graph is unchanged.
    _message(w, {"type": "accept_suggestion", "index": len(rest)})
    assert "no longer listed" in w.group_message and set(g.supernodes) == {first["name"]}


def test_suggestions_that_fail_say_why_in_the_view(monkeypatch):
    g = synthetic_graph(n_features=40, n_edges=500, dense_logits=True, seed=5)
    w = Circuit.build(g)

    def broken(**_kwargs):
        raise GraphError("thresholds must be in [0, 1]")

    monkeypatch.setattr(g, "suggest_groups", broken)
    _message(w, {"type": "suggest_groups"})
    assert w.suggestions["state"] == "error" and "thresholds must be in [0, 1]" in w.suggestions["message"]
    assert w.suggestions["items"] == [] and g.supernodes == {}
