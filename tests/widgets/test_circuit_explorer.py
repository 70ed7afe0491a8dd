"""``scope.circuit`` and ``graph.widget()``: attribution on the tiny Gemma 3, the view, the pane of a clicked feature
(per-layer transcoders and a CLT), interventions."""

from __future__ import annotations

import pytest

from gemscope_widgets.backend.circuits.graph import AttributionGraph
from gemscope_widgets.scope import Scope
from gemscope_widgets.testing.transcoders import write_calibrated_set
from gemscope_widgets.widgets.circuit import Circuit, CircuitError, CircuitExplorer
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("set")
    for layer in range(4):
        write_gemma_scope_sae(
            root / "transcoder_all" / f"layer_{layer}_width_64_l0_small_affine", kind="transcoder", layer=layer,
            width=64, affine=True, seed=layer,
        )
    return root


@pytest.fixture(scope="module")
def explorer(tiny_model, tiny_set):
    return Scope(tiny_model).circuit("Paris is the capital of", transcoders=tiny_set, progress=False)


def test_circuit_builds_graph_view_and_opens_the_clicked_features_pane(explorer):
    assert isinstance(explorer, CircuitExplorer) and isinstance(explorer.circuit, Circuit)
    graph = explorer.graph
    assert graph.n_selected > 0
    header = explorer.circuit._header
    assert header["n_nodes_total"] == graph.n_nodes and header["n_edges"] > 0
    assert explorer.pane is None
    node = int(graph.node_influence()[: graph.n_selected].argmax())
    explorer.circuit.clicked = node  # what a click in the view sets
    pane = explorer.pane
    _, layer, _, feature = graph.node_info(node)
    assert pane is not None and pane.feature == feature
    assert pane.sae.config.layer == layer and pane.sae.config.kind == "transcoder"
    assert pane.info["dictionary"] == "transcoder"  # the pane's text names what it shows, not "SAE"
    with pytest.raises(CircuitError, match="only feature nodes"):
        explorer.show_feature(graph.token_slice.start)


def test_intervening_from_the_view_reports_logit_changes(explorer):
    graph = explorer.graph
    view = explorer.circuit
    view.selected = list(range(min(3, graph.n_selected)))
    view._on_custom_msg(view, {"type": "intervene", "mode": "set", "value": 0.0}, [])
    record = view.intervention
    assert record["state"] == "done", record
    assert record["nodes"] == view.selected and record["mode"] == "set"
    tokens = graph.logit_token_strings
    rows = record["rows"]
    assert [r[0] for r in rows[: len(tokens)]] == tokens
    before = [r[1] for r in rows[: len(tokens)]]
    assert before == pytest.approx(graph.logit_probabilities.tolist(), abs=1e-4)
    assert all(r[1] is not None and r[2] is not None for r in rows)  # tokens new to the top list keep their before
    # The record names what was changed: each feature, its activation on the prompt and the value it was set to.
    changed = record["changed"]
    assert len(changed) == len(view.selected)
    for node, (label, act, target) in zip(view.selected, changed, strict=True):
        layer, pos, feature = graph.selected_active_features[node].tolist()
        assert label.startswith(f"L{layer} #{feature} @{pos} “") and target == 0.0
        assert act == pytest.approx(float(graph.selected_activation_values[node]))


def test_scaling_by_one_changes_nothing(explorer):
    view = explorer.circuit
    view.intervene([0], mode="scale", value=1.0)
    rows = view.intervention["rows"]
    assert rows
    for _, before, after in rows:
        assert after == pytest.approx(before, abs=1e-5)


def test_graph_widget_is_the_explorer_when_the_model_is_attached(explorer):
    graph = explorer.graph
    view = graph.widget(node_threshold=0.5)
    assert isinstance(view, CircuitExplorer) and view.circuit.node_threshold == 0.5
    node = int(graph.node_influence()[: graph.n_selected].argmax())
    view.circuit.clicked = node
    assert view.pane is not None and view.pane.feature == graph.node_info(node).feature


def test_graph_widget_without_a_model_is_the_view_alone(explorer, tmp_path):
    loaded = AttributionGraph.load(explorer.graph.save(tmp_path / "g.safetensors"))
    view = loaded.widget()
    assert isinstance(view, Circuit) and view._header["n_nodes_total"] == loaded.n_nodes
    assert not view._header["top_logits"], "no model: no promoted tokens on the hover cards"


@pytest.fixture(scope="module")
def clt_explorer(tiny_model, tmp_path_factory):
    root = write_calibrated_set(tiny_model, tmp_path_factory.mktemp("clt"), width=256, l0=8, kind="clt", seed=3)
    return Scope(tiny_model).circuit("Paris is the capital of", transcoders=root, progress=False)  # finds clt/


def test_clicking_a_clt_feature_opens_the_clt_pane_at_its_index_across_layers(clt_explorer):
    graph, tset = clt_explorer.graph, clt_explorer.transcoders
    assert tset.clt is not None
    layers = sorted({graph.node_info(i).layer for i in range(graph.n_selected)})
    assert len(layers) > 1, "the test needs features of two layers"
    panes = []
    for layer in layers[:2]:
        node = next(i for i in range(graph.n_selected) if graph.node_info(i).layer == layer)
        feature = graph.node_info(node).feature
        clt_explorer.circuit.clicked = node  # what a click in the view sets
        pane = clt_explorer.pane
        assert pane is not None and pane.sae is tset.clt
        assert pane.feature == tset.clt._starts[layer] + feature
        assert tset.clt.feature_layer(pane.feature) == layer
        panes.append(pane)
    assert panes[0] is panes[1], "one pane for the whole CLT"
    # Hover cards of CLT features carry the tokens their decoders (summed over target layers) promote.
    assert clt_explorer.circuit._header["top_logits"]


def test_a_transcoder_layer_scanned_from_one_view_fills_that_layers_pane_in_every_circuit_view(tiny_model, tiny_set):
    """A scan of one layer's transcoder (here from a script, as the pane's "run scan" does through the same holder)
    reaches the open pane of that layer and the pane of the same layer in a circuit view built afterwards."""
    from gemscope_widgets.backend.stats.holder import shared_holder

    scope = Scope(tiny_model)
    first = scope.circuit("Paris is the capital of", transcoders=tiny_set, progress=False)
    graph = first.graph
    node = int(graph.node_influence()[: graph.n_selected].argmax())
    pane = first.show_feature(node)
    assert pane.stats is None and not pane.info.get("source")  # nothing scanned yet: "No corpus statistics"
    holder = shared_holder(tiny_model, pane.sae)
    assert pane.holder is holder
    stats = holder.load_or_scan(["The cat sat on the mat.", "Rome is the capital of Italy."], progress=False)
    assert pane.stats is stats and pane.info["source"]  # the open pane follows the scan
    second = scope.circuit("Berlin is the capital of", progress=False)  # the same set, as a user's next call
    layer = graph.node_info(node)[1]
    other = next(i for i in range(second.graph.n_selected) if second.graph.node_info(i)[1] == layer)
    assert second.show_feature(other).stats is stats


def test_scope_opens_a_graph_and_a_comparison_of_two_prompts_or_graphs(tiny_model, tiny_set):
    from gemscope_widgets import compare_graphs
    from gemscope_widgets.errors import GemscopeError
    from gemscope_widgets.widgets.graph_comparison import GraphComparisonView

    scope = Scope(tiny_model)
    first = scope.circuit("Paris is the capital of", transcoders=tiny_set, progress=False)
    again = scope.circuit(first.graph)  # a graph opens as it is, over the kept set
    assert again.graph is first.graph and again.transcoders is first.transcoders
    with pytest.raises(GemscopeError, match="do not apply to a graph"):
        scope.circuit(first.graph, max_feature_nodes=10)
    view = scope.compare(first.graph, "Berlin is the capital of", progress=False)
    assert isinstance(view, GraphComparisonView)
    expected = compare_graphs(first.graph, scope.workspace.attribute("Berlin is the capital of", progress=False))
    assert view.comparison.prompt_a == expected.prompt_a and view.comparison.prompt_b == expected.prompt_b
    assert [c.key for c in view.comparison.only_a] == [c.key for c in expected.only_a]
    assert view.comparison.overlap == pytest.approx(expected.overlap)
