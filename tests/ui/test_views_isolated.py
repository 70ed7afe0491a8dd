"""Views do not restyle each other: every view shown on one page in a real JupyterLab in Chromium has, element for
element, the computed style it has when its own stylesheet is the only view stylesheet on the page.

Each view carries its CSS in a ``<style>`` inside its root, and a ``<style>`` applies to the whole page; a rule
that is not scoped to its view's root (``.gs-ct-pos`` in both the contrast and the circuit view) restyles the
other view. The static counterpart is js/lib/css_scope.test.ts.
"""

from __future__ import annotations

import pytest

from tests.fixtures.tiny_scope import KERNEL_SETUP

pytestmark = pytest.mark.browser

SETUP = KERNEL_SETUP + """
import json, warnings
warnings.simplefilter("ignore")
import ipywidgets
from tests.helpers import active_feature
from tests.fixtures.graphs import synthetic_graph
from gemscope_widgets.widgets.circuit import Circuit
from gemscope_widgets.widgets.token_view import TokenView
F = active_feature(sae, gm, "Where is the fox? The quick brown fox")
"""
# Every view in one output, so all of them are on the page at once whatever the notebook's windowing does.
ALL_VIEWS = """
hm = scope.heatmap("Paris is the capital of France. The quick brown fox.", top_n=6, progress=False)
_f = hm.top_features(0)[0]
hm.select(prompt=0, token=int(hm.payload.block(0).dense()[:, _f].argmax()), feature=_f)
pane = scope.feature(_f)
steer = scope.steer("The quick brown fox", {F: 2.0}, max_new_tokens=3, stop_at_eos=False)
panel = scope.contrast("The fox runs home.", "The dog jumps over the lazy fox.", span="all", k=5)
chat = scope.chat([{"role": "user", "content": "Where is the fox?"}], features=[F], max_new_tokens=3)
g = synthetic_graph(n_pos=5, n_layers=3, n_features=30, n_edges=200, seed=3)
circuit = Circuit.build(g)
tv = TokenView(["<bos>", "Hello", " world"], special=[True, False, False])
tv.selected_token = 1
_words = ["fox", "dog", "hen", "cow"]
probe = scope.probe([f"The {w} runs home." for w in _words], [f"import {w} as m" for w in _words], k=2, chat=False,
                    progress=False).widget()
ipywidgets.VBox([hm, pane, steer, panel.view, chat, circuit, tv, probe])
"""

ROOTS = ["gs-heatmap", "gs-feature-pane", "gs-steering", "gs-contrast", "gs-chat", "gs-circuit", "gs-token-view",
         "gs-probe"]

# For each view root: every element's computed style with all views' stylesheets on, then with only this view's
# stylesheet on (the others disabled, as if the view were shown alone). Returns the differences.
_COMPARE = r"""(roots) => {
  const PROPS = ["color", "background-color", "background-image", "font-family", "font-size", "font-weight",
    "font-style", "display", "visibility", "opacity", "position", "padding-top", "padding-left", "margin-top",
    "margin-left", "border-top-width", "border-top-style", "border-top-color", "border-bottom-width",
    "border-bottom-style", "border-left-width", "text-align", "white-space", "text-decoration-line",
    "box-shadow", "outline-style", "overflow-x", "overflow-y", "cursor", "vertical-align", "line-height",
    "flex-direction", "text-overflow", "border-collapse", "max-width", "max-height", "min-width"];
  const found = roots.map((c) => document.querySelectorAll(`.gs-root.${c}`).length);
  const views = roots.map((c) => document.querySelector(`.gs-root.${c}`));
  const elements = (root) => [root, ...root.querySelectorAll("*")].filter((n) => n.tagName !== "STYLE");
  const snapshot = (root) => elements(root).map((n) => {
    const s = getComputedStyle(n);
    return PROPS.map((p) => s.getPropertyValue(p));
  });
  const styles = views.map((root) => root.querySelector(":scope > style"));
  const together = views.map(snapshot);
  const diffs = [];
  let compared = 0;
  views.forEach((root, v) => {
    for (const s of styles) if (s !== styles[v]) s.disabled = true;
    const alone = snapshot(root);
    for (const s of styles) s.disabled = false;
    const nodes = elements(root);
    alone.forEach((values, i) => {
      compared += 1;
      values.forEach((value, p) => {
        if (value !== together[v][i][p] && diffs.length < 40) {
          diffs.push(`${roots[v]} <${nodes[i].tagName.toLowerCase()} class="${nodes[i].getAttribute("class") ?? ""}">`
            + ` ${PROPS[p]}: alone ${value}, with the others ${together[v][i][p]}`);
        }
      });
    });
  });
  return { found, compared, diffs };
}"""


def test_every_view_on_one_page_is_styled_as_alone(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "views_isolated.ipynb", [SETUP, ALL_VIEWS])
    circuit = page.locator(".gs-circuit").first
    expect(circuit.locator("canvas")).to_be_visible(timeout=60_000)
    expect(page.locator(".gs-contrast tr.gs-ct-row").first).to_be_visible(timeout=60_000)
    expect(page.locator(".gs-chat .gs-chat-turn").first).to_be_visible(timeout=60_000)
    expect(page.locator(".gs-heatmap .gs-hm-item").first).to_be_visible(timeout=60_000)
    expect(page.locator(".gs-feature-pane .gs-pane-head")).to_be_visible(timeout=60_000)
    expect(page.locator(".gs-steering .gs-steer-row")).to_have_count(1, timeout=60_000)
    expect(page.locator(".gs-probe tr.gs-pr-row").first).to_be_visible(timeout=60_000)
    page.wait_for_function("e => Number(e.dataset.frames) >= 1", arg=circuit.element_handle(), timeout=30_000)

    # Click the circuit's most influential feature: its strongest inputs are listed with signed colours (the
    # list the contrast view's .gs-ct-pos / .gs-ct-neg turned into solid blocks).
    node = int(lab_server.run_code(page, """
import numpy as np
h, d = circuit._header, circuit._data
kind = np.frombuffer(d, "<u2", h["nodes"]["kind"]["length"], h["nodes"]["kind"]["offset"])
rank = np.frombuffer(d, "<f4", h["nodes"]["rank"]["length"], h["nodes"]["rank"]["offset"])
nodes = np.frombuffer(d, "<u4", h["nodes"]["node"]["length"], h["nodes"]["node"]["offset"])
print(int(nodes[int(np.argmin(np.where(kind == 0, rank, 2.0)))]))
"""))
    circuit.locator("canvas").scroll_into_view_if_needed()
    xy = circuit.evaluate(f"e => e.gsCircuit.screen({node})")
    box = circuit.locator("canvas").bounding_box()
    page.mouse.click(box["x"] + xy[0], box["y"] + xy[1])
    signed = circuit.locator(".gs-ct-edges li.gs-ct-pos, .gs-ct-edges li.gs-ct-neg")
    expect(signed.first).to_be_visible(timeout=30_000)

    result = page.evaluate(_COMPARE, ROOTS)
    found = dict(zip(ROOTS, result["found"]))
    assert result["found"] == [1] * len(ROOTS), f"not every view is on the page once: {found}"
    assert result["compared"] > 200, result  # every view drew its elements
    changed = "\n".join(result["diffs"])
    assert result["diffs"] == [], f"a view's look changes when the others are on the page:\n{changed}"

    # The symptom itself: the circuit's signed edge list is text on no background, in the circuit's own colours.
    looks = signed.evaluate_all(
        "els => els.map((e) => { const s = getComputedStyle(e); return [s.backgroundColor, s.color]; })"
    )
    assert looks and all(bg in ("rgba(0, 0, 0, 0)", "transparent") and fg != bg for bg, fg in looks), looks
    lab_server.screenshot(page, "views_isolated")
