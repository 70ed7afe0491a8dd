"""Mouse, keyboard and a lost kernel in a real JupyterLab in Chromium.

The wheel over the circuit graph scrolls the notebook (it zooms only with Ctrl held or once the graph is clicked),
and after a zoom a threshold change shows the whole pruned graph again; the heatmap is driven from the keyboard
(arrows move the token and the feature column, Enter opens the feature in the explorer's pane) without a key
reaching the notebook; its token list shows every feature's label across the list; a steering slider widened to
show a strength says so beside it, with the feature's label; a slider moved after the kernel is gone says, beside
it, that nothing was sent.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.tiny_scope import KERNEL_SETUP

pytestmark = pytest.mark.browser

SETUP = KERNEL_SETUP + """
import json, warnings
warnings.simplefilter("ignore")
from tests.helpers import active_feature
from tests.fixtures.graphs import synthetic_graph
from gemscope_widgets.widgets.circuit import Circuit
F = active_feature(sae, gm, "The quick brown fox")
"""
CIRCUIT = """
g = synthetic_graph(n_pos=6, n_layers=4, n_features=60, n_edges=700, seed=2)
w = Circuit.build(g)
w
"""
EXPLORE = """
ex = scope.explore("Paris is the capital of France. The quick brown fox jumps.", top_n=6, progress=False)
ex
"""
STEER = 'st = scope.steer("The quick brown fox", {F: 1e6}, max_new_tokens=2, stop_at_eos=False)\nst'
FILLER = 'print("\\n" * 120)'  # room below, so the page can scroll whatever is in view

_NOTEBOOK_STATE = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  return [nb.activeCellIndex, nb.mode, nb.model.cells.length, nb.model.cells.get(1).type];
}"""
# The scroll offset of the nearest scrolling ancestor (the notebook's panel).
_SCROLL_TOP = """(e) => {
  for (let n = e.parentElement; n; n = n.parentElement) {
    const s = getComputedStyle(n);
    if (n.scrollHeight > n.clientHeight + 1 && ["auto", "scroll"].includes(s.overflowY)) return n.scrollTop;
  }
  return -1;
}"""


def _wheel_over(page, locator, dy: float, ctrl: bool = False) -> None:
    box = locator.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + min(box["height"] / 2, 120))
    if ctrl:
        page.keyboard.down("Control")
    page.mouse.wheel(0, dy)
    if ctrl:
        page.keyboard.up("Control")
    page.wait_for_timeout(300)  # let the scroll land


def test_wheel_scrolls_the_page_and_zoom_keeps_the_graph_in_view(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "wheel.ipynb", [SETUP, CIRCUIT, FILLER])
    widget = page.locator(".gs-circuit").first
    canvas = widget.locator("canvas")
    expect(canvas).to_be_visible(timeout=60_000)
    page.wait_for_function("e => Number(e.dataset.frames) >= 1", arg=widget.element_handle(), timeout=30_000)
    canvas.scroll_into_view_if_needed()

    # A plain wheel over the graph scrolls the notebook and leaves the graph as it was.
    view = widget.evaluate("e => e.gsCircuit.view()")
    top = canvas.evaluate(_SCROLL_TOP)
    assert top >= 0, "no scrolling ancestor"
    _wheel_over(page, canvas, 150)
    assert canvas.evaluate(_SCROLL_TOP) > top, "the wheel over the graph did not scroll the notebook"
    assert widget.evaluate("e => e.gsCircuit.view()") == view
    expect(widget.locator(".gs-ct-hint")).to_contain_text("Ctrl")  # the page says how to zoom

    # Ctrl + wheel zooms (and does not scroll).
    canvas.scroll_into_view_if_needed()
    top = canvas.evaluate(_SCROLL_TOP)
    _wheel_over(page, canvas, -300, ctrl=True)
    zoomed = widget.evaluate("e => e.gsCircuit.view()")
    assert zoomed["kx"] > view["kx"] * 1.2, (view, zoomed)
    assert canvas.evaluate(_SCROLL_TOP) == top

    # A changed threshold after the zoom: the pruned graph is fitted into the view again, nothing left outside.
    slider = widget.locator(".gs-ct-node-threshold input")
    slider.evaluate("(e) => { e.value = '0.5'; e.dispatchEvent(new Event('input', {bubbles: true})); }")
    fitted = widget.evaluate("e => e.gsCircuit.view()")
    assert fitted["kx"] <= 1 and fitted["tx"] == 0 and fitted["ty"] == 0, fitted
    canvas.scroll_into_view_if_needed()
    inside = widget.evaluate("""(e) => {
      const c = e.querySelector("canvas"); const [w, h] = [c.clientWidth, c.clientHeight];
      const g = e.gsCircuit; let n = 0, out = 0;
      for (let node = 0; node < 100000 && n < 400; node++) {
        const xy = g.screen(node); if (!xy) continue; n++;
        if (xy[0] < -1 || xy[0] > w + 1 || xy[1] < -1 || xy[1] > h + 1) out++;
      }
      return [n, out];
    }""")
    assert inside[0] > 0 and inside[1] == 0, f"{inside[1]} of {inside[0]} nodes outside the view after refit"

    # Once clicked, the graph takes the wheel (its hint says so), and the page stays put.
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + 3, box["y"] + 3)
    expect(widget.locator(".gs-ct-hint")).to_contain_text("zooms the graph")
    before = widget.evaluate("e => e.gsCircuit.view()")
    top = canvas.evaluate(_SCROLL_TOP)
    _wheel_over(page, canvas, -200)
    assert widget.evaluate("e => e.gsCircuit.view()")["kx"] > before["kx"]
    assert canvas.evaluate(_SCROLL_TOP) == top


def test_heatmap_keyboard_labels_widened_slider_and_gone_kernel(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "keys_labels.ipynb", [SETUP, EXPLORE, STEER])
    heatmap = page.locator(".gs-heatmap").first
    expect(heatmap.locator(".gs-hm-block")).to_have_count(1, timeout=60_000)
    columns = json.loads(lab_server.run_code(page, "print(json.dumps(ex.heatmap.top_features(0)))"))
    assert len(columns) >= 2

    # A click on a token row gives the grid the keyboard.
    heatmap.locator(".gs-hm-label[data-t='2']").click()
    expect(heatmap.locator(".gs-hm-row.gs-selected .gs-hm-label[data-t='2']")).to_have_count(1, timeout=30_000)
    assert page.evaluate("() => document.activeElement.classList.contains('gs-hm-main')")
    before = page.evaluate(_NOTEBOOK_STATE)
    for key in ("ArrowDown", "ArrowDown", "ArrowUp", "ArrowRight", "ArrowRight", "d", "d", "m", "a"):
        page.keyboard.press(key)
    expect(heatmap.locator(".gs-hm-row.gs-selected .gs-hm-label[data-t='3']")).to_have_count(1)
    expect(heatmap.locator(".gs-hm-fhead.gs-hm-cursor")).to_have_attribute("data-f", str(columns[1]))
    page.keyboard.press("Enter")
    pane = page.locator(".gs-feature-pane")
    expect(pane.locator(".gs-pane-head")).to_contain_text(f"{columns[1]}", timeout=60_000)
    assert page.evaluate(_NOTEBOOK_STATE) == before, "a key pressed in the heatmap reached the notebook"
    got = json.loads(lab_server.run_code(page, "print(json.dumps([ex.heatmap.selected_token, "
                                               "ex.heatmap.selected_feature, ex.pane.feature]))"))
    assert got == [3, columns[1], columns[1]]

    # The token's feature list: every row carries the kernel's label, on a line as wide as the list.
    items = heatmap.locator(".gs-hm-side .gs-hm-item")
    expect(items.first).to_be_visible()
    shown = items.evaluate_all("""els => els.map((e) => {
      const l = e.querySelector(".gs-hm-flabel");
      return [Number(e.dataset.f), l.textContent, l.title, l.getBoundingClientRect().width / e.clientWidth];
    })""")
    labels = json.loads(lab_server.run_code(
        page, f"print(json.dumps({{f: ex.heatmap.label(f) for f in {[f for f, *_ in shown]}}}))"))
    assert len(shown) > 5
    for f, text, title, share in shown:
        assert text == title == labels[str(f)] != "", (f, text, labels[str(f)])
        assert share > 0.8, f"feature {f}'s label gets {share:.0%} of the row"

    # Steering: a strength far outside the range widens the slider, and the row says so; the label is shown.
    steer = page.locator(".gs-steering").first
    row = steer.locator(".gs-steer-row").first
    expect(row.locator(".gs-steer-widened")).to_contain_text("widened", timeout=60_000)
    expect(row.locator(".gs-steer-widened")).to_contain_text("1000000")
    want = lab_server.run_code(page, "print(scope.labels().labels([F])[F])").strip()
    expect(row.locator(".gs-steer-label")).to_have_text(want)
    expect(steer).to_have_attribute("data-kernel", "live", timeout=30_000)

    # The kernel restarts under the view: a slider moved now says beside it that nothing was sent.
    (kernel,) = lab_server.api("GET", "/api/kernels")
    lab_server.api("POST", f"/api/kernels/{kernel['id']}/restart", timeout=60)
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget.sessionContext.kernelDisplayStatus === 'idle'", timeout=60_000
    )
    slider = row.locator(".gs-slider")
    slider.focus()
    page.keyboard.press("ArrowLeft")
    here = steer.locator(".gs-offline-here")
    expect(here).to_contain_text("Not sent", timeout=15_000)
    assert here.evaluate("e => e.previousElementSibling.classList.contains('gs-steer-row')")
    assert slider.get_attribute("title") and "kernel" in slider.get_attribute("title")
