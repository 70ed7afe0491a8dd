"""The circuit view's script-free ``text/html`` (what a notebook saved without widget state shows): what the view
draws under its thresholds and pins, every token and label escaped."""

from __future__ import annotations

import re

import pytest

from gemscope_widgets.backend.circuits.graph import find_threshold
from gemscope_widgets.scope import Scope
from gemscope_widgets.testing.transcoders import write_calibrated_set
from gemscope_widgets.widgets.circuit import Circuit, CircuitExplorer
from tests import helpers
from tests.fixtures.graphs import LABEL_XSS, XSS_TOKENS, synthetic_graph


def static_of(widget) -> str:
    html = helpers.static_of(widget)
    assert html.count("<div") == html.count("</div>") and html.count("<table") == html.count("</table>")
    return html


def drawn_counts(html: str) -> tuple[int, int]:
    match = re.search(r"(\d+) of \d+ nodes, (\d+) of \d+ edges drawn", html)
    assert match, html
    return int(match[1]), int(match[2])


def test_static_circuit_escapes_tokens_labels_and_logits():
    g = synthetic_graph(n_features=40, n_edges=400)
    html = static_of(Circuit.build(g))
    for text in [XSS_TOKENS[1], XSS_TOKENS[3], LABEL_XSS, "<b>logit0</b>"]:
        assert text not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;b&gt;logit0&lt;/b&gt;" in html
    assert "&lt;script&gt;alert(&#x27;label&#x27;)&lt;/script&gt;" in html  # feature labels, escaped
    assert "Most influential nodes" in html and "Strongest edges" in html and "Next token" in html


def test_static_circuit_draws_what_the_thresholds_keep():
    g = synthetic_graph(n_features=60, n_edges=600, seed=3)
    view = Circuit.build(g, node_threshold=0.5)
    # Oracle: circuit-tracer's node step keeps influence >= find_threshold(influence, t) (with influence > 0).
    influence = g.node_influence()
    kinds = g.node_kinds()
    threshold = find_threshold(influence, 0.5)
    want = sum(
        1 for i, k in enumerate(kinds)
        if k in ("token", "logit") or (influence[i] > 0 and influence[i] >= threshold)
    )
    nodes, edges = drawn_counts(static_of(view))
    assert nodes == want
    view.node_threshold, view.edge_threshold = 1.0, 1.0
    more_nodes, more_edges = drawn_counts(static_of(view))
    assert more_nodes > nodes and more_edges > edges
    view.edge_threshold = 0.0
    assert drawn_counts(static_of(view))[1] == 0


def test_static_circuit_marks_pins_and_shows_the_last_intervention():
    g = synthetic_graph(n_features=60, n_edges=600, seed=3)
    view = Circuit.build(g, node_threshold=0.0)  # no feature or error node drawn unless pinned
    node = int(g.node_influence()[: g.n_selected].argmax())
    assert "pinned" not in static_of(view)
    view.pinned = [node]
    html = static_of(view)
    layer, pos, feature = g.selected_active_features[node].tolist()
    assert re.search(rf"L{layer} #{feature} @{pos} .*?</td><td[^>]*>[^<]*</td><td[^>]*>[^<]*</td><td[^>]*>pinned", html)
    view.intervention = {
        "state": "done", "nodes": [node], "mode": "set", "value": 0.0,
        "rows": [["<b>logit0</b>", 0.5, 0.25], [" Rome", None, 0.125]],
        "changed": [["L1 #3 @2 “<i>x</i>”", 1.5, 0.0]],
    }
    html = static_of(view)
    assert "Intervention" in html and "set to 0" in html and "&lt;b&gt;logit0&lt;/b&gt;" in html
    assert "L1 #3 @2 “&lt;i&gt;x&lt;/i&gt;” (1.5 → 0)" in html
    assert "-0.25" in html and "—" in html


@pytest.fixture(scope="module")
def explorer(tiny_model, tmp_path_factory):
    root = write_calibrated_set(tiny_model, tmp_path_factory.mktemp("set"), width=64, l0=8, affine=True, seed=2)
    return Scope(tiny_model).circuit("Paris <b>is</b> the capital of", transcoders=root, progress=False)


def test_explorer_static_view_is_the_graph_and_the_open_pane(explorer):
    html = static_of(explorer)
    assert "Attribution graph" in html and " &lt;" in html and "Feature " not in html
    node = int(explorer.graph.node_influence()[: explorer.graph.n_selected].argmax())
    explorer.circuit.clicked = node
    html = static_of(explorer)
    assert f"Feature {explorer.pane.feature}" in html and "Promotes" in html
    assert isinstance(explorer, CircuitExplorer)
