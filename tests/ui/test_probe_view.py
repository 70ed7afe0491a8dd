"""The probe view in a real JupyterLab: ROC curves drawn from the kernel's points, AUROCs and intervals as the
result says (through formatValue), a latent's click opens its pane and "steer" adds it to the steering widget,
labels follow new statistics and stay inert text."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.tiny_scope import KERNEL_SETUP

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
SETUP = KERNEL_SETUP + f"""
import json, warnings
import numpy as np
from gemscope_widgets.widgets.payload import format_value
warnings.simplefilter("ignore")
XSS = {XSS!r}
POS = [f"The {{a}} sleeps in the warm barn." for a in ("cat", "dog", "bird", "fish", "horse", "cow")]
NEG = [f"import {{a}} as module_{{i}}" for i, a in enumerate(("cat", "dog", "bird", "fish", "horse", "cow"))]
result = scope.probe(POS, NEG, k=3, chat=False, progress=False)
steer = scope.steer("The cat sleeps", max_new_tokens=2)
"""
VIEW = "panel = result.widget(scope=scope, steer=steer)\npanel"


def test_probe_view(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "probe.ipynb", [SETUP, VIEW])
    view = page.locator(".gs-probe").first
    expected = json.loads(lab_server.run_code(page, """
v = panel.view._view
print(json.dumps({
    "features": [f["feature"] for f in v["features"]],
    "auroc": [format_value(d["auroc"]) for d in v["detectors"]],
    "interval": [f"[{format_value(d['low'])}, {format_value(d['high'])}]" for d in v["detectors"]],
    "roc": {c["name"]: c["n"] for c in v["roc"] if c["feature"] == -1},
    "best": v["best"], "best_n": next(c["n"] for c in v["roc"] if c["feature"] == v["best"]),
}))
"""))
    rows = view.locator("tr.gs-pr-row")
    expect(rows).to_have_count(len(expected["features"]), timeout=60_000)
    assert [int(r.get_attribute("data-feature")) for r in rows.all()] == expected["features"]

    # Each probe's ROC curve has the kernel's points; the best single latent's curve (the one the result's summary
    # names) is drawn while none is selected, and the detector table names it so.
    for name, n in expected["roc"].items():
        line = view.locator(f".gs-pr-roc polyline[data-curve='{name}']")
        expect(line).to_have_count(1)
        assert len(line.get_attribute("points").split()) == n
    latent = view.locator(f".gs-pr-roc polyline[data-curve='#{expected['best']}']")
    assert len(latent.get_attribute("points").split()) == expected["best_n"]
    expect(view.locator(f"tr.gs-pr-detector[data-detector='#{expected['best']}']")).to_contain_text(
        f"best single latent #{expected['best']}")
    detectors = view.locator(".gs-pr-detectors tr.gs-pr-detector")
    cells = [detectors.nth(i).locator("td") for i in range(3)]
    assert [c.nth(2).text_content() for c in cells] == expected["auroc"]
    assert [c.nth(3).text_content() for c in cells] == expected["interval"]
    expect(view.locator(".gs-pr-curve polyline")).to_have_count(3)

    # A click selects the latent, redraws its ROC curve and opens its pane; "steer" adds it to the steering widget.
    target = expected["features"][-1]
    rows.last.click()
    expect(rows.last).to_have_class("gs-pr-row gs-selected")
    expect(view.locator(f".gs-pr-roc polyline[data-curve='#{target}']")).to_have_count(1)
    expect(page.locator(".gs-pane").first).to_be_visible(timeout=60_000)
    got = lab_server.run_code(page, "print(panel.view.selected_feature, panel.pane.feature)").split()
    assert got == [str(target), str(target)]
    rows.last.locator(".gs-pr-steer").click()
    added = ""
    for _ in range(60):
        added = lab_server.run_code(page, "print([s.feature for s in steer.specs()])")
        if str(target) in added:
            break
        page.wait_for_timeout(500)
    assert str(target) in added

    # An explanation arriving later relabels the open view; labels are text: the markup shows as characters.
    lab_server.run_code(page, '''
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
scope.stats_holder().set(FeatureStats.from_parts(sae_name=sae.config.name, width=sae.width, source="test",
                                                 explanations={f: XSS for f in result.top_features}))
print("ok")
''')
    labels = view.locator(".gs-pr-features .gs-pr-label")
    expect(labels.first).to_have_text(XSS, timeout=30_000)
    assert labels.count() == len(expected["features"])
    # The label stands apart from the latent's id: a visible gap between "#id" and the label's text.
    gap = labels.first.evaluate("""(label) => {
      const range = document.createRange(); range.selectNodeContents(label.parentElement.firstChild);
      return label.getBoundingClientRect().left + parseFloat(getComputedStyle(label).paddingLeft)
        - range.getBoundingClientRect().right; }""")
    assert gap >= 3, gap
    assert view.locator("img").count() == 0 and page.locator(".jp-OutputArea img[src='x']").count() == 0
