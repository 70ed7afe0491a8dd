"""The circuit view in a real JupyterLab in Chromium: renders, prunes live, clicks, stays inert, stays smooth."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.lab import ARTIFACTS

pytestmark = pytest.mark.browser

SYNTHETIC = """
import json
import numpy as np
from tests.fixtures.graphs import synthetic_graph, XSS_TOKENS, LABEL_XSS
from gemscope_widgets.widgets.circuit import Circuit

g = synthetic_graph(n_pos=6, n_layers=4, n_features=60, n_edges=700, seed=2)
w = Circuit.build(g)
w.show_all = True  # all of prune()'s graph (the legible default is tested in test_circuit_workbench.py)
clicks = []
w.on_click(clicks.append)

def expected(node_t, edge_t, pinned=()):
    # The oracle: graph.prune() at these thresholds, plus pinned nodes and the payload's edges between two of them.
    h, d = w._header, w._data
    dt = {"uint16": "<u2", "uint32": "<u4", "float32": "<f4"}
    arr = lambda grp, k: np.frombuffer(
        d, dtype=dt[h[grp][k]["dtype"]], count=h[grp][k]["length"], offset=h[grp][k]["offset"]
    ).astype(np.int64)
    result = g.prune(node_t, edge_t)
    kept_edges = (result.edge_mask & (g.adjacency_matrix != 0)).numpy()
    node = arr("nodes", "node")
    vis = result.node_mask.numpy()[node] | np.isin(node, list(pinned))
    src, dst = node[arr("edges", "source")], node[arr("edges", "target")]
    both = np.isin(src, list(pinned)) & np.isin(dst, list(pinned))
    local = {int(n): i for i, n in enumerate(node)}
    drawn = vis[[local[int(s)] for s in src]] & vis[[local[int(t)] for t in dst]]
    edges = drawn & (kept_edges[dst, src] | both)
    return int(vis.sum()), int(edges.sum())

def top_feature():
    # The most influential feature node (the lowest rank among the payload's feature nodes).
    h, d = w._header, w._data
    kind = np.frombuffer(d, "<u2", h["nodes"]["kind"]["length"], h["nodes"]["kind"]["offset"])
    rank = np.frombuffer(d, "<f4", h["nodes"]["rank"]["length"], h["nodes"]["rank"]["offset"])
    node = np.frombuffer(d, "<u4", h["nodes"]["node"]["length"], h["nodes"]["node"]["offset"])
    j = int(np.argmin(np.where(kind == 0, rank, 2.0)))
    return int(node[j])

def mid_feature():
    # A feature node that prune() keeps at node threshold 0.8 but not at 0.3.
    high, low = g.prune(0.8, 0.98).node_mask, g.prune(0.3, 0.98).node_mask
    return int(np.flatnonzero((high & ~low)[: g.n_selected].numpy())[0])
w
"""

BIG = """
from tests.fixtures.graphs import synthetic_graph
from gemscope_widgets.widgets.circuit import Circuit
big = synthetic_graph(
    n_pos=24, n_layers=18, n_features=2000, n_logits=3, n_edges=8000, labels=False, dense_logits=True, seed=5
)
wb = Circuit.build(big, node_threshold=1.0, edge_threshold=1.0)
wb.show_all = True
wb
"""

# Drives 90 animation frames of panning and zooming and reports frame intervals and the view's own draw times.
PAN_ZOOM = """async (root) => {
  const canvas = root.querySelector("canvas");
  const r = canvas.getBoundingClientRect();
  const cx = r.left + r.width / 2, cy = r.top + r.height / 2;
  const frames = [], draws = [];
  let last = performance.now();
  await new Promise((resolve) => {
    let k = 0;
    const step = (now) => {
      frames.push(now - last); last = now;
      draws.push(Number(root.dataset.lastDrawMs));
      if (k < 45) {
        canvas.dispatchEvent(new WheelEvent("wheel",
          {deltaY: k % 2 ? -40 : 60, clientX: cx, clientY: cy, ctrlKey: true, bubbles: true, cancelable: true}));
      } else {
        const at = {clientX: cx + (k - 45) * 4, clientY: cy + (k - 45) * 2, bubbles: true, button: 0, pointerId: 1};
        if (k === 45) canvas.dispatchEvent(new PointerEvent("pointerdown", {...at, clientX: cx, clientY: cy}));
        canvas.dispatchEvent(new PointerEvent("pointermove", at));
      }
      if (++k < 90) requestAnimationFrame(step); else {
        canvas.dispatchEvent(new PointerEvent("pointerup", {clientX: cx + 180, clientY: cy + 90, bubbles: true}));
        resolve();
      }
    };
    requestAnimationFrame(step);
  });
  return {frames: frames.slice(2), draws: draws.slice(2), edges: Number(root.dataset.visibleEdges)};
}"""


def _counts(widget) -> tuple[int, int]:
    return int(widget.get_attribute("data-visible-nodes")), int(widget.get_attribute("data-visible-edges"))


def _click_node(page, widget, node: int, shift: bool = False) -> None:
    widget.locator("canvas").scroll_into_view_if_needed()
    xy = widget.evaluate(f"e => e.gsCircuit.screen({node})")
    assert xy is not None, f"node {node} is not drawn"
    box = widget.locator("canvas").bounding_box()
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(box["x"] + xy[0], box["y"] + xy[1])
    if shift:
        page.keyboard.up("Shift")
    assert widget.evaluate("(e, p) => e.gsCircuit.hit(p[0], p[1])", [box["x"] + xy[0], box["y"] + xy[1]]) >= 0


def mid_feature_number(lab_server, page, node: int) -> int:
    return int(lab_server.run_code(page, f"print(int(g.selected_active_features[{node}][2]))"))


def test_circuit_renders_prunes_live_clicks_and_keeps_text_inert(lab_server, page):
    from playwright.sync_api import expect

    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    lab_server.open_and_run(page, "circuit_synthetic.ipynb", [SYNTHETIC])
    widget = page.locator(".gs-circuit").first
    expect(widget.locator("canvas")).to_be_visible(timeout=60_000)
    page.wait_for_function("e => Number(e.dataset.frames) >= 1", arg=widget.element_handle(), timeout=30_000)

    # What is drawn at the default thresholds is what graph.prune() keeps.
    want = json.loads(lab_server.run_code(page, "print(json.dumps(expected(0.8, 0.98)))"))
    assert list(_counts(widget)) == want
    assert want[1] > 0

    # Click the most influential feature node: the kernel gets the click, its strongest edges are listed.
    node = int(lab_server.run_code(page, "print(top_feature())"))
    _click_node(page, widget, node)
    expect(widget.locator(".gs-ct-side-title")).to_be_visible(timeout=30_000)
    back = lab_server.run_code(page, "print(w.clicked, w.selected, clicks)").strip()
    assert back == f"{node} [{node}] [{node}]"
    assert widget.locator(".gs-ct-edges li").count() >= 1
    # Each neighbour's label is bidi-isolated, so a right-to-left token cannot swap places with its weight.
    assert widget.locator(".gs-ct-edges li bdi").count() == widget.locator(".gs-ct-edges li").count()

    # Hover shows the node's label as text: markup from tokens and labels is shown, never parsed.
    widget.locator("canvas").scroll_into_view_if_needed()
    xy = widget.evaluate(f"e => e.gsCircuit.screen({node})")
    box = widget.locator("canvas").bounding_box()
    page.mouse.move(box["x"] + xy[0], box["y"] + xy[1])
    tip = widget.locator(".gs-ct-tip")
    expect(tip).to_be_visible(timeout=10_000)
    assert "<script>alert('label')</script>" in tip.text_content()
    assert "activation" in tip.text_content()
    side = widget.locator(".gs-ct-side").text_content()
    assert "alert" in side  # labels/tokens with markup appear as characters
    assert widget.locator("img, script, b").count() == 0

    # A clicked node that the slider prunes away stops being the focus: no highlighted edges left hanging.
    slider = widget.locator(".gs-ct-node-threshold input")
    mid = int(lab_server.run_code(page, "print(mid_feature())"))
    _click_node(page, widget, mid)
    expect(widget.locator(".gs-ct-side-title")).to_contain_text(f"#{mid_feature_number(lab_server, page, mid)}")
    slider.evaluate("(e) => { e.value = '0.3'; e.dispatchEvent(new Event('input', {bubbles: true})); }")
    expect(widget.locator(".gs-ct-side-title")).to_have_count(0)
    # ... nor selected: an intervention acts only on nodes that are drawn.
    assert lab_server.run_code(page, "print(w.selected)").strip() == "[]"
    slider.evaluate("(e) => { e.value = '0.8'; e.dispatchEvent(new Event('input', {bubbles: true})); }")
    _click_node(page, widget, node)
    expect(widget.locator(".gs-ct-side-title")).to_be_visible()

    # The node slider previews at once by rank; the kernel hears of it and sends prune() at 0.3, which is drawn.
    slider.evaluate("(e) => { e.value = '0.3'; e.dispatchEvent(new Event('input', {bubbles: true})); }")
    want_low = json.loads(lab_server.run_code(page, "print(json.dumps(expected(0.3, 0.98)))"))
    page.wait_for_function(
        "([e, n, m]) => Number(e.dataset.visibleNodes) === n && Number(e.dataset.visibleEdges) === m",
        arg=[widget.element_handle(), *want_low], timeout=30_000,
    )
    assert "graph.prune(0.3, 0.98)" in widget.locator(".gs-ct-status").text_content()
    assert want_low[0] < want[0]
    assert lab_server.run_code(page, "print(w.node_threshold)").strip() == "0.3"

    # Pins from Python survive any threshold: at 0 only tokens, logits and pinned nodes remain.
    lab_server.run_code(page, f"w.pin([{node}]); w.node_threshold = 0.0")
    want_pin = json.loads(lab_server.run_code(page, f"print(json.dumps(expected(0.0, 0.98, [{node}])))"))
    page.wait_for_function(
        "([e, n]) => Number(e.dataset.visibleNodes) === n", arg=[widget.element_handle(), want_pin[0]], timeout=30_000
    )
    assert lab_server.run_code(page, "print(w.pinned)").strip() == f"[{node}]"

    # The intervene button asks the kernel; without a model the view says why, as text.
    widget.locator(".gs-ct-clamp").click()
    expect(widget.locator(".gs-ct-result .gs-error")).to_be_visible(timeout=30_000)

    # A tooltip near the bottom of the graph opens above the pointer, inside the graph (which clips overflow).
    token = int(lab_server.run_code(page, "print(g.token_slice.start)"))
    widget.locator("canvas").scroll_into_view_if_needed()
    xy = widget.evaluate(f"e => e.gsCircuit.screen({token})")
    box = widget.locator("canvas").bounding_box()
    page.mouse.move(box["x"] + xy[0], box["y"] + xy[1])
    expect(tip).to_be_visible(timeout=10_000)
    tip_box, stage_box = tip.bounding_box(), widget.locator(".gs-ct-stage").bounding_box()
    assert tip_box["y"] >= stage_box["y"] and tip_box["y"] + tip_box["height"] <= stage_box["y"] + stage_box["height"]

    # The canvas follows the theme, also when it changes while shown: feature nodes are light on a dark theme.
    page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
    page.mouse.move(box["x"] + 2, box["y"] + 2)  # a redraw, away from any node
    node_xy = widget.evaluate(f"e => e.gsCircuit.screen({node})")
    luminance = widget.evaluate(
        """(e, p) => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => {
             const c = e.querySelector("canvas"); const k = c.width / c.clientWidth;
             const [r, g, b] = c.getContext("2d").getImageData(Math.round(p[0] * k), Math.round(p[1] * k), 1, 1).data;
             done((0.2126 * r + 0.7152 * g + 0.0722 * b) / 255);
           })))""",
        node_xy,
    )
    page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})")
    assert luminance > 0.5, f"a feature node is drawn dark ({luminance:.2f}) on the dark theme"

    assert alerts == [], f"text ran as markup: {alerts}"
    lab_server.screenshot(page, "circuit_synthetic")


def test_ten_thousand_edge_graph_pans_and_zooms_smoothly(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "circuit_big.ipynb", [BIG])
    widget = page.locator(".gs-circuit").first
    expect(widget.locator("canvas")).to_be_visible(timeout=60_000)
    page.wait_for_function("e => Number(e.dataset.frames) >= 1", arg=widget.element_handle(), timeout=30_000)
    assert _counts(widget)[1] >= 10_000

    result = widget.evaluate(PAN_ZOOM)
    draws = sorted(result["draws"])
    frames = sorted(result["frames"])
    median_draw = draws[len(draws) // 2]
    p90_frame = frames[int(len(frames) * 0.9)]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "circuit_pan_zoom.json").write_text(json.dumps(
        {"edges": result["edges"], "median_draw_ms": median_draw, "p90_frame_ms": p90_frame,
         "frames_ms": result["frames"], "draws_ms": result["draws"]}, indent=1))
    # A frame at 60 Hz is 16.7 ms: the view's own drawing (wall time of one redraw of every visible edge and
    # node) must fit inside it. The frame intervals also hold the browser's scheduling on a shared machine
    # (seen at 500-800 ms on two busy cores), so they are recorded in test-artifacts, not asserted.
    assert median_draw < 16.7, result
    assert p90_frame > 0
    lab_server.screenshot(page, "circuit_10k_edges")
