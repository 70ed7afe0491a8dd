"""The feature pane's search box in a real JupyterLab: typing a query and Enter lists the matching features (those
of search_labels), clicking one opens it in the pane. Tiny model."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.browser

SETUP = """
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from tests.fixtures.tiny_scope import tiny_scope
scope = tiny_scope(width=48, seed=7, threshold=0.3)
sae = scope.sae()
stats = FeatureStats.from_parts(sae_name=sae.config.name, width=48, source="neuronpedia test",
                                explanations={31: "zebra crossings in towns", 12: "quokka habitats"})
scope.stats_holder().set(stats)
pane = scope.feature(0)
pane
"""


def test_search_box_lists_matches_and_opens_one(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "pane_search.ipynb", [SETUP])
    box = page.locator(".gs-pane .gs-search-input")
    expect(box).to_be_visible(timeout=60_000)
    box.fill("zebra")
    box.press("Enter")
    hits = page.locator(".gs-pane .gs-search-hit")
    expect(hits.first).to_have_text("#31 zebra crossings in towns", timeout=60_000)
    direct = json.loads(lab_server.run_code(page, (
        "import json\nfrom gemscope_widgets import search_labels\n"
        "print(json.dumps([h.feature for h in search_labels(scope.labels(), 'zebra', k=10)]))")))
    assert hits.count() == len(direct) and direct[0] == 31
    status = page.locator(".gs-pane .gs-search-status")
    done = f"{len(direct)} feature{'' if len(direct) == 1 else 's'} for “zebra”"
    expect(status).to_have_text(done)
    # The same query again: "searching…" ends with the answer (the kernel's result equals the last one).
    box.press("Enter")
    expect(status).to_have_text(done, timeout=30_000)
    assert lab_server.run_code(page, "print(pane.found['search'])").strip() == "2"
    hits.first.click()
    expect(page.locator(".gs-pane h3")).to_have_text("Feature 31", timeout=60_000)
    assert lab_server.run_code(page, "print(pane.feature)").strip() == "31"
    expect(page.locator(".gs-pane .gs-explanation")).to_have_text("zebra crossings in towns")
