"""The quickstart notebook, as a new user runs it: real JupyterLab, real Chromium, embedded model + demo SAE."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"

pytestmark = [pytest.mark.browser, pytest.mark.real_model, pytest.mark.slow]


def test_quickstart_runs_and_shows_every_widget(lab_server, page, demo_scope_parts):
    from playwright.sync_api import expect

    shutil.copy(QUICKSTART, lab_server.root_dir / "quickstart.ipynb")
    lab_server.open_notebook(page, "quickstart.ipynb")
    lab_server.run_all(page, timeout_ms=600_000)

    # The explorer: heatmap with tokens and feature columns, and the pane beneath it.
    heatmap = page.locator(".gs-hm-block").first
    expect(heatmap).to_be_visible(timeout=60_000)
    assert heatmap.locator(".gs-hm-fhead").count() > 0
    assert "KeyError" in heatmap.locator(".gs-hm-text").evaluate("e => e.textContent")
    expect(page.locator(".gs-pane-head").first).to_be_visible()
    assert page.locator(".gs-logit-list").first.locator(".gs-logit-val").count() > 0

    # Steering: both columns fill with streamed tokens.
    columns = page.locator(".gs-steer-col")
    expect(columns).to_have_count(2, timeout=60_000)
    for i in range(2):
        expect(columns.nth(i).locator("[data-index]").first).to_be_visible(timeout=120_000)

    printed = "\n".join(lab_server.cell_output_text(page, i) for i in range(len(page.locator(".jp-Cell").all())))
    assert "baseline:" in printed and "steered:" in printed
    lab_server.screenshot(page, "quickstart")
