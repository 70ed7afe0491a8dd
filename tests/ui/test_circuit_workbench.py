"""The circuit view as a workbench in a real JupyterLab in Chromium (one page load): it opens on the legible
subgraph and says so, its toolbar wraps between groups of controls, hovering isolates a node's edges, zooming in
labels the nodes, "show all" draws prune()'s graph; supernodes grouped and ungrouped in the view; the pinned
subgraph's scores recomputed in the browser equal graph.scores(pinned=...); the dark theme; and the comparison
view of two graphs (a second page load)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.browser

SYNTHETIC = """
import json
import numpy as np
from tests.fixtures.graphs import synthetic_graph
from gemscope_widgets.backend.circuits.legible_subgraph import legible_subgraph
from gemscope_widgets.widgets.circuit import Circuit

g = synthetic_graph(n_pos=6, n_layers=4, n_features=60, n_edges=700, seed=2)
w = Circuit.build(g)

def top_kept(k):
    # The k most influential feature nodes that prune() keeps at the view's thresholds.
    kept = g.prune(0.8, 0.98).node_mask[: g.n_selected]
    order = np.argsort(-g.node_influence()[: g.n_selected].numpy(), kind="stable")
    return [int(i) for i in order if kept[i]][:k]

def legible():
    sub = legible_subgraph(g)
    top = max((i for i in range(g.token_slice.start) if sub.nodes[i]), key=lambda i: float(g.node_influence()[i]))
    kept = g.prune().edge_mask & (g.adjacency_matrix != 0)
    touching = int((kept[top] & sub.nodes).sum() + (kept[:, top] & sub.nodes).sum())
    return {"nodes": int(sub.nodes.sum()), "pruned": int(g.prune().node_mask.sum()), "top": top, "edges": touching,
            "chosen": sub.n_chosen, "of": sub.n_pruned}

def grouped_edges(name):
    # The oracle: graph.grouped()'s summed weights between the group and every other grouped node.
    gr = g.grouped()
    row = next(i for i, ms in enumerate(gr.members) if ms == g.supernodes[name])
    key = lambda i: gr.labels[i] if len(gr.members[i]) > 1 else str(gr.members[i][0])
    return {"out": {key(i): float(gr.adjacency[i, row]) for i in range(len(gr.members)) if gr.adjacency[i, row] != 0},
            "in": {key(i): float(gr.adjacency[row, i]) for i in range(len(gr.members)) if gr.adjacency[row, i] != 0}}
w
"""

NAME = "<b>say</b> a capital"


def _click(page, widget, node: int, shift: bool = False) -> None:
    widget.locator("canvas").scroll_into_view_if_needed()
    xy = widget.evaluate(f"e => e.gsCircuit.screen({node})")
    box = widget.locator("canvas").bounding_box()
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(box["x"] + xy[0], box["y"] + xy[1])
    if shift:
        page.keyboard.up("Shift")


def _wait_selected(lab_server, page, want: list[int]) -> None:
    for _ in range(50):  # the selection reaches the kernel as a trait change, a moment later
        selected = json.loads(lab_server.run_code(page, "print(json.dumps(w.selected))"))
        if selected == want:
            return
        time.sleep(0.2)
    assert selected == want


def _pinned_scores(page, widget, lab_server) -> tuple[list[float], list[float]]:
    """The view's pinned scores once they are shown, and Python's for the kernel's pins."""
    page.wait_for_function("e => !!e.dataset.pinnedScores", arg=widget.element_handle(), timeout=30_000)
    shown = json.loads(widget.get_attribute("data-pinned-scores"))
    want = json.loads(lab_server.run_code(page, "print(json.dumps(g.scores(pinned=w.pinned)))"))
    return shown, want


def test_grouping_ungrouping_and_pinned_scores_in_the_view(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "circuit_groups.ipynb", [SYNTHETIC])
    widget = page.locator(".gs-circuit").first
    expect(widget.locator("canvas")).to_be_visible(timeout=60_000)
    page.wait_for_function("e => Number(e.dataset.frames) >= 1", arg=widget.element_handle(), timeout=30_000)

    # The toolbar wraps between groups of related controls, never inside one: at 1120 px (and narrower) "show
    # all" stays on the line of "pin", "unpin all" and "fit".
    size = page.viewport_size
    for width in (1120, 860):
        page.set_viewport_size({"width": width, "height": size["height"]})
        tops = widget.evaluate("""e => [...e.querySelectorAll(".gs-ct-toolbar > .gs-ct-tools")].map(g =>
            [...g.children].filter(c => c.offsetParent !== null)
              .map(c => { const r = c.getBoundingClientRect(); return Math.round(r.top + r.height / 2); }))""")
        assert len(tops) == 4 and all(t for t in tops), tops
        assert all(len(set(t)) == 1 for t in tops), (width, tops)
        fit, show_all = (widget.locator(s).bounding_box() for s in (".gs-ct-reset", ".gs-ct-show-all"))
        assert abs(fit["y"] - show_all["y"]) < 2, (width, fit, show_all)
    page.set_viewport_size(size)
    # The view opens on the legible subgraph and says on screen what it leaves out.
    want = json.loads(lab_server.run_code(page, "print(json.dumps(legible()))"))
    assert want["chosen"] < want["of"]
    assert widget.get_attribute("data-focused") == "true"
    assert int(widget.get_attribute("data-visible-nodes")) == want["nodes"] < want["pruned"]
    status = widget.locator(".gs-ct-status").text_content()
    assert f"the {want['chosen']} nodes with the most influence on" in status and f"of the {want['of']}" in status
    assert "show all" in status
    # Hovering a node isolates its edges: only those are drawn.
    widget.locator("canvas").scroll_into_view_if_needed()
    assert widget.get_attribute("data-drawn-edges") == widget.get_attribute("data-visible-edges")
    xy = widget.evaluate(f"e => e.gsCircuit.screen({want['top']})")
    box = widget.locator("canvas").bounding_box()
    page.mouse.move(box["x"] + xy[0], box["y"] + xy[1])
    page.wait_for_function("([e, n]) => e.dataset.drawnEdges === String(n)", arg=[widget.element_handle(),
                           want["edges"]], timeout=10_000)
    assert 0 < want["edges"] < int(widget.get_attribute("data-visible-edges"))
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    # Zooming in labels the nodes (none at the first zoom).
    assert widget.get_attribute("data-node-labels") == "0"
    cx, cy = box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2
    widget.evaluate(f"""e => {{ const c = e.querySelector("canvas"); for (let k = 0; k < 3; k++)
        c.dispatchEvent(new WheelEvent("wheel", {{deltaY: -400, clientX: {cx}, clientY: {cy}, ctrlKey: true,
                                                  bubbles: true, cancelable: true}})); }}""")
    page.wait_for_function("e => Number(e.dataset.nodeLabels) > 0", arg=widget.element_handle(), timeout=10_000)
    widget.locator(".gs-ct-reset").click()
    # "show all": prune()'s whole graph, and the button leads back.
    widget.locator(".gs-ct-show-all").click()
    page.wait_for_function("([e, n]) => e.dataset.visibleNodes === String(n)", arg=[widget.element_handle(),
                           want["pruned"]], timeout=10_000)
    assert widget.get_attribute("data-focused") == "false"
    assert "legible subgraph" not in widget.locator(".gs-ct-status").text_content()
    assert lab_server.run_code(page, "print(w.show_all)").strip() == "True"

    a, b = json.loads(lab_server.run_code(page, "print(json.dumps(top_kept(2)))"))

    # Nothing selected: the view says what to do and asks the kernel nothing.
    widget.locator(".gs-ct-group-name").fill(NAME)
    widget.locator(".gs-ct-group").click()
    expect(widget.locator(".gs-ct-group-message")).to_contain_text("Select at least two nodes")

    # Select two nodes (click, shift-click), name them, group: the kernel's graph has the supernode.
    _click(page, widget, a)
    _click(page, widget, b, shift=True)
    _wait_selected(lab_server, page, [a, b])
    widget.locator(".gs-ct-group-name").fill(NAME)
    widget.locator(".gs-ct-group").click()
    page.wait_for_function("e => e.dataset.groups === '1'", arg=widget.element_handle(), timeout=30_000)
    assert json.loads(lab_server.run_code(page, "print(json.dumps(g.supernodes))")) == {NAME: sorted([a, b])}
    saved = lab_server.run_code(page, "print(json.dumps(g.info['neuronpedia']['qParams']['supernodes']))")
    assert json.loads(saved)[0][0] == NAME
    # The name is text, never markup.
    expect(widget.locator(".gs-ct-group-item bdi")).to_have_text(NAME)
    assert widget.locator(".gs-ct-group-list b").count() == 0
    assert "supernode(s) drawn as one node" in widget.locator(".gs-ct-status").text_content()

    # One node drawn in their place, its edges the kernel's sums over both members (graph.grouped()).
    widget.locator("canvas").scroll_into_view_if_needed()
    (drawn,) = widget.evaluate("e => e.gsCircuit.groups()")
    assert drawn["name"] == NAME
    want = json.loads(lab_server.run_code(page, f"print(json.dumps(grouped_edges({NAME!r})))"))
    assert drawn["out"] or drawn["in"]
    for side in ("out", "in"):
        for other, weight in drawn[side]:
            assert weight == pytest.approx(want[side][str(other)], rel=1e-5), (side, other)
    # The members are not drawn one by one: the group stands at their place.
    widget.locator("canvas").scroll_into_view_if_needed()
    member_xy = widget.evaluate(f"e => e.gsCircuit.screen({a})")
    box = widget.locator("canvas").bounding_box()
    at = [box["x"] + member_xy[0], box["y"] + member_xy[1]]
    assert widget.evaluate("(e, p) => e.gsCircuit.hitNode(p[0], p[1])", at) not in (a, b)
    # Hovering the group shows its card.
    page.mouse.move(box["x"] + drawn["screen"][0], box["y"] + drawn["screen"][1])
    tip = widget.locator(".gs-ct-tip")
    expect(tip).to_contain_text("supernode of 2 nodes", timeout=10_000)
    # The saved notebook's static HTML lists it.
    assert lab_server.run_code(page, "print('say&lt;/b&gt; a capital' in w.static_html())").strip() == "True"

    # Ungroup: the two nodes are drawn again, the graph has no supernode.
    widget.locator(".gs-ct-ungroup").click()
    page.wait_for_function("e => e.dataset.groups === '0'", arg=widget.element_handle(), timeout=30_000)
    assert lab_server.run_code(page, "print(g.supernodes)").strip() == "{}"
    assert widget.evaluate("e => e.gsCircuit.groups().length") == 0
    member_xy = widget.evaluate(f"e => e.gsCircuit.screen({a})")
    box = widget.locator("canvas").bounding_box()  # the list of groups above the graph is gone
    at = [box["x"] + member_xy[0], box["y"] + member_xy[1]]
    assert widget.evaluate("(e, p) => e.gsCircuit.hitNode(p[0], p[1])", at) == a
    lab_server.screenshot(page, "circuit_groups")

    # Suggested groups: "suggest" lists graph.suggest_groups at the view's thresholds (names as text), "accept"
    # groups one; a threshold moved since says the list is of the old ones.
    want = json.loads(lab_server.run_code(page, "print(json.dumps([[s.name, s.members] for s in "
                                                "g.suggest_groups(node_threshold=0.8, edge_threshold=0.98)]))"))
    assert want and "<b>" in want[0][0]
    widget.locator(".gs-ct-suggest").click()
    items = widget.locator(".gs-ct-suggestion")
    expect(items).to_have_count(len(want), timeout=30_000)
    got = [[i.locator("bdi").text_content(), [int(m) for m in i.get_attribute("data-members").split(",")]]
           for i in items.all()]
    assert got == want
    assert widget.locator(".gs-ct-suggestions b").count() == 0
    lab_server.run_code(page, "w.node_threshold = 0.7")
    expect(widget.locator(".gs-ct-suggest-status")).to_contain_text("thresholds changed since", timeout=30_000)
    lab_server.run_code(page, "w.node_threshold = 0.8")
    expect(widget.locator(".gs-ct-suggest-status")).not_to_contain_text("thresholds changed", timeout=30_000)
    items.first.locator(".gs-ct-accept").click()
    page.wait_for_function("e => e.dataset.groups === '1'", arg=widget.element_handle(), timeout=30_000)
    assert json.loads(lab_server.run_code(page, "print(json.dumps(g.supernodes))")) == {want[0][0]: sorted(want[0][1])}
    expect(items).to_have_count(len(want) - 1)
    widget.locator(".gs-ct-ungroup").click()
    page.wait_for_function("e => e.dataset.groups === '0'", arg=widget.element_handle(), timeout=30_000)

    # Pinned scores: nothing pinned, the view invites pinning; then pin three features with the "pin" button.
    expect(widget.locator(".gs-ct-scores")).to_contain_text("pin features to score their subgraph")
    graph_scores = json.loads(lab_server.run_code(page, "print(json.dumps(g.scores()))"))
    assert f"replacement {graph_scores[0]:.3g}"[:16] in widget.locator(".gs-ct-scores").text_content()
    three = json.loads(lab_server.run_code(page, "print(json.dumps(top_kept(3)))"))
    for k, node in enumerate(three):
        _click(page, widget, node, shift=k > 0)
    _wait_selected(lab_server, page, three)
    widget.locator(".gs-ct-pin").click()
    shown, want = _pinned_scores(page, widget, lab_server)
    assert sorted(json.loads(lab_server.run_code(page, "print(json.dumps(w.pinned))"))) == sorted(three)
    assert shown == pytest.approx(want, rel=1e-5)
    assert shown != pytest.approx(graph_scores, rel=1e-3)  # the subgraph's, not the whole graph's
    expect(widget.locator(".gs-ct-scores")).to_contain_text("pinned subgraph (3 features)")
    # Pins set from Python (ten more features) are rescored live, still equal to Python's.
    before = shown
    lab_server.run_code(page, "w.pin(top_kept(13)[3:])")
    page.wait_for_function("e => e.dataset.pinnedScored === '13'", arg=widget.element_handle(), timeout=30_000)
    shown, want = _pinned_scores(page, widget, lab_server)
    assert shown == pytest.approx(want, rel=1e-5) and shown != pytest.approx(before, rel=1e-4)

    # The dark theme: the canvas draws with the theme's colours (light text on a dark ground), the text is light.
    page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
    # No pointer event: the view repaints on the theme switch by itself (and reads the theme at every frame).
    page.wait_for_function("""e => { const c = document.createElement("canvas").getContext("2d");
        c.fillStyle = e.gsCircuit.colors().bg; c.fillRect(0, 0, 1, 1);
        return c.getImageData(0, 0, 1, 1).data[0] < 128; }""", arg=widget.element_handle(), timeout=30_000)
    colors = widget.evaluate("""e => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => {
        const lum = (css) => { const c = document.createElement("canvas").getContext("2d"); c.fillStyle = css;
          c.fillRect(0, 0, 1, 1); const [r, g, b] = c.getImageData(0, 0, 1, 1).data;
          return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255; };
        const k = e.gsCircuit.colors();
        done({fg: lum(k.fg), bg: lum(k.bg), text: lum(getComputedStyle(e.querySelector(".gs-ct-scores")).color)});
      })))""")
    page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})")
    assert colors["fg"] > 0.5 and colors["bg"] < 0.5 and colors["text"] > 0.4, colors
    lab_server.screenshot(page, "circuit_workbench")


COMPARISON = """
import json
from tests.fixtures.graphs import synthetic_graph
from gemscope_widgets import compare_graphs

ga = synthetic_graph(n_features=40, n_edges=500, dense_logits=True, seed=1)
gb = synthetic_graph(n_features=40, n_edges=500, dense_logits=True, seed=2)
c = compare_graphs(ga, gb, k=8)
c.widget()
"""


def test_the_comparison_view_highlights_what_one_graph_keeps(lab_server, page):
    from playwright.sync_api import expect

    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    lab_server.open_and_run(page, "graph_comparison.ipynb", [COMPARISON])
    view = page.locator(".gs-graph-comparison").first
    expect(view.locator(".gs-gc-changes")).to_be_visible(timeout=60_000)
    want = json.loads(lab_server.run_code(page, (
        "print(json.dumps({'a': [x.label for x in c.only_a], 'b': [x.label for x in c.only_b], "
        "'up': sum(x.delta >= 0 for x in c.largest_changes), 'n': len(c.largest_changes)}))")))
    # Only-in-A and only-in-B side by side, each in its graph's colour, labels as text (markup shown, not run).
    assert view.locator(".gs-gc-only-a .gs-gc-label").all_text_contents() == want["a"]
    assert view.locator(".gs-gc-only-b .gs-gc-label").all_text_contents() == want["b"]
    a_colour = view.locator(".gs-gc-only.gs-gc-only-a").evaluate("e => getComputedStyle(e).borderLeftColor")
    b_colour = view.locator(".gs-gc-only.gs-gc-only-b").evaluate("e => getComputedStyle(e).borderLeftColor")
    assert a_colour != b_colour
    # Largest changes: one row each, a bar towards B for every gain, towards A for every loss.
    assert view.locator(".gs-gc-changes tr").count() == want["n"] + 1
    assert view.locator(".gs-gc-bar-b").count() == want["up"]
    assert view.locator(".gs-gc-bar-a").count() == want["n"] - want["up"]
    assert view.locator("script, img").count() == 0 and alerts == []
    lab_server.screenshot(page, "graph_comparison")
