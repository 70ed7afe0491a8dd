"""The circuit view's script-free ``text/html`` (what a notebook saved without widget state shows): what the view
draws under its thresholds and pins, every token and label escaped."""

from __future__ import annotations

import re

import pytest

from gemscope_widgets.backend.circuits.graph import find_threshold
from gemscope_widgets.backend.circuits.legible_subgraph import legible_subgraph
from gemscope_widgets.scope import Scope
from gemscope_widgets.testing.transcoders import write_calibrated_set
from gemscope_widgets.widgets.circuit import Circuit, CircuitExplorer, payload_arrays
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


def _pruned_counts(g, node_threshold, edge_threshold, view=None) -> tuple[int, int]:
    """graph.prune()'s node and edge counts, over the nodes and edges the view's payload holds when ``view``."""
    pruned = g.prune(node_threshold, edge_threshold)
    if view is None:
        return int(pruned.node_mask.sum()), int((pruned.edge_mask & (g.adjacency_matrix != 0)).sum())
    node = payload_arrays(view._header, view._data, "nodes", "node").astype(int)
    src = node[payload_arrays(view._header, view._data, "edges", "source").astype(int)]
    dst = node[payload_arrays(view._header, view._data, "edges", "target").astype(int)]
    return int(pruned.node_mask[node].sum()), int(pruned.edge_mask[dst, src].sum())


def test_static_circuit_draws_what_the_view_draws():
    """At the kernel's thresholds exactly graph.prune()'s nodes and edges (as the live view), only the legible subgraph
    unless show_all (said in the first line), and a rank preview (said so) where the kernel has not pruned."""
    g = synthetic_graph(n_features=60, n_edges=600, seed=3)
    view = Circuit.build(g, node_threshold=0.5, show_all=True)
    html = static_of(view)
    assert drawn_counts(html) == _pruned_counts(g, 0.5, 0.98)
    assert "preview" not in html and "legible subgraph" not in html
    view.node_threshold, view.edge_threshold = 1.0, 1.0  # the kernel prunes again
    assert drawn_counts(static_of(view)) == _pruned_counts(g, 1.0, 1.0, view)  # the payload holds fewer nodes
    view.edge_threshold = 0.0
    assert drawn_counts(static_of(view))[1] == _pruned_counts(g, 1.0, 0.0, view)[1]

    # The preview, where the kernel's pruning is of other thresholds: influence ranks, as the view previews.
    # Oracle: circuit-tracer's node step keeps influence >= find_threshold(influence, t) (with influence > 0).
    view.node_threshold, view.edge_threshold = 0.5, 0.98
    view._kept_at = {**view._kept_at, "node_threshold": 0.3}
    influence = g.node_influence()
    threshold = find_threshold(influence, 0.5)
    want = sum(1 for i, k in enumerate(g.node_kinds())
               if k in ("token", "logit") or (influence[i] > 0 and influence[i] >= threshold))
    html = static_of(view)
    assert drawn_counts(html)[0] == want and "a preview by influence rank" in html

    # The default view: the legible subgraph only, as the live view opens.
    default = Circuit.build(g)
    html = static_of(default)
    sub = legible_subgraph(g)
    assert drawn_counts(html)[0] == int(sub.nodes.sum()) < _pruned_counts(g, 0.8, 0.98)[0]
    assert f"the legible subgraph: the {sub.n_chosen} nodes" in html and "show_all=True" in html


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


def test_static_circuit_header_skips_empty_fields_and_says_it_is_a_saved_copy():
    """A graph without a scan name: the first line has no empty slot between separators; a threshold changed
    after display is in the rendering made now (what a display update would carry)."""
    view = Circuit.build(synthetic_graph(n_features=40, n_edges=400))
    view._header = {**view._header, "model": "google/gemma-3-270m", "scan": ""}
    view.node_threshold = 0.47
    html = static_of(view)
    first = html.split('<div style="opacity:.8;font-size:.9em">', 1)[1].split("</div>", 1)[0]
    assert first.startswith("google/gemma-3-270m · node threshold 0.47, edge threshold"), first
    assert "·  ·" not in html and "· ·" not in html
    assert "later changes in the live view are not in this copy" in html
