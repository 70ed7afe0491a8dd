"""One selection in the explorer: a related-feature chip in the pane moves the heatmap's selection, and gives the
feature a column when it had none. Real JupyterLab, tiny model."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

SETUP = """
from tests.fixtures.tiny_scope import tiny_scope
scope = tiny_scope(width=48, seed=7, threshold=0.3)
gm, sae = scope.model, scope.sae()
ex = scope.explore("The capital of France is Paris. The quick brown fox.", top_n=3, progress=False)
ex
"""


def test_related_chip_moves_the_heatmap_selection_and_adds_a_column(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "explorer_selection.ipynb", [SETUP])

    heads = page.locator(".gs-hm-fhead[data-f]")
    expect(heads).to_have_count(3, timeout=60_000)
    first = int(heads.first.get_attribute("data-f"))
    heads.first.click()
    pane = page.locator(".gs-pane")
    expect(pane.locator("h3")).to_have_text(f"Feature {first}", timeout=60_000)
    # Columns carry the automatic label after the feature id.
    assert heads.first.text_content().startswith(f"{first} ") and len(heads.first.text_content()) > len(str(first))

    columns = [int(h.get_attribute("data-f")) for h in heads.all()]
    target = int(lab_server.run_code(page, (
        f"print(next(r['feature'] for r in ex.pane.related if r['feature'] not in {columns}))"
    )))
    chip = pane.locator(f".gs-chip[data-feature='{target}']").first
    expect(chip).to_be_visible(timeout=30_000)
    chip.click()

    expect(pane.locator("h3")).to_have_text(f"Feature {target}", timeout=30_000)
    column = page.locator(f".gs-hm-fhead[data-f='{target}']")
    expect(column).to_have_count(1, timeout=30_000)
    expect(column).to_have_class("gs-hm-fhead gs-selected", timeout=30_000)
    expect(page.locator(".gs-hm-fhead.gs-selected")).to_have_count(1)
    assert lab_server.run_code(page, "print(ex.heatmap.selected_feature, ex.pane.feature)").split() == [
        str(target), str(target)
    ]
    assert target in [int(f) for f in lab_server.run_code(page, "print(*ex.heatmap.top_features(0))").split()]
    lab_server.screenshot(page, "explorer-chip-selection")
