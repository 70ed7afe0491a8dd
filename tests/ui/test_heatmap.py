"""The heatmap in real Chromium: in a real JupyterLab (tiny and real 270M model) and as a standalone HTML file."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.fixtures.lab import ARTIFACTS

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
TEXT = f"Paris is the capital of France. {XSS} The quick brown fox jumps over the lazy dog."

# Run in the kernel after `gm`, `sae` and `TEXT` exist: the backend's own numbers for the busiest token.
EXPECTED_CELL = """
import json, numpy as np
from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.widgets.payload import format_value
(_sa,) = prompt_features(gm, [sae], TEXT)
_d = _sa.dense().numpy().astype(np.float16)
_t = int((_d > 0).sum(1).argmax())
_fs = sorted(np.flatnonzero(_d[_t]), key=lambda f: (-float(_d[_t, f]), int(f)))[:20]
print(json.dumps({"token": _t, "items": [[int(f), format_value(_d[_t, f])] for f in _fs]}))
"""

TINY_SETUP = f"""
import json
from gemscope_widgets import Scope
from tests.fixtures.tiny_scope import tiny_scope
scope = tiny_scope()
gm, sae = scope.model, scope.sae()
TEXT = {TEXT!r}
"""

REAL_SETUP = f"""
import json
from gemscope_widgets.backend.gemma.model import load_model
from gemscope_widgets import Scope
from gemscope_widgets.testing.calibrated import calibrated_sae
gm = load_model("gemma-3-270m", device="cpu", dtype="float32", progress=False)
sae = calibrated_sae(gm, layer=6, width=2048, l0=20, max_tokens=512, window=64)
TEXT = {TEXT!r}
"""

SHOW = """
w = Scope(gm, sae).heatmap(TEXT, top_n=12, progress=False)
events = []
w.on_select(lambda *args: events.append(args))
w
"""


def _token_list(widget) -> list[list]:
    items = widget.locator(".gs-hm-side .gs-hm-item")
    return items.evaluate_all(
        "els => els.map(e => [Number(e.dataset.f), e.querySelector('.gs-hm-value').textContent])"
    )


def _check_heatmap_flow(lab_server, page, setup: str, name: str) -> None:
    from playwright.sync_api import expect

    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    lab_server.open_and_run(page, f"{name}.ipynb", [setup, SHOW])
    widget = page.locator(".gs-heatmap").first
    expect(widget.locator(".gs-hm-cell").first).to_be_visible(timeout=60_000)

    # Tokens in reading order and the grid's feature columns, as Python computed them.
    tokens = json.loads(lab_server.run_code(page, "print(json.dumps(w.payload.tokens(0)))"))
    columns = json.loads(lab_server.run_code(page, "print(json.dumps(w.top_features(0)))"))
    text = widget.locator(".gs-hm-text .gs-token")
    expect(text).to_have_count(len(tokens))
    assert widget.locator(".gs-hm-fhead").evaluate_all("els => els.map(e => Number(e.dataset.f))") == columns
    assert widget.locator(".gs-hm-text .gs-special").count() >= 1, "<bos> is marked special"

    # Model text is data: the XSS prompt's characters show, no element is made from them.
    assert XSS in widget.locator(".gs-hm-text").evaluate("e => e.textContent")
    assert widget.locator("img").count() == 0
    assert page.locator(".jp-OutputArea img[src='x']").count() == 0

    # Click the busiest token: the side list shows the backend's values, formatted the same way.
    expected = json.loads(lab_server.run_code(page, EXPECTED_CELL))
    t = expected["token"]
    text.nth(t).click()
    expect(widget.locator(".gs-hm-side .gs-hm-item").first).to_be_visible(timeout=30_000)
    assert _token_list(widget) == expected["items"]
    assert len(expected["items"]) > 0

    # Click a feature in the list: the text is re-coloured by it and the kernel sees the selection.
    feature = expected["items"][1][0]
    widget.locator(f".gs-hm-side .gs-hm-item[data-f='{feature}']").click()
    expect(widget.locator(".gs-hm-feature-title")).to_have_text(f"Feature #{feature}")
    coloured = text.evaluate_all("els => els.filter(e => e.style.background !== '').length")
    assert coloured >= 1
    back = lab_server.run_code(page, "print(w.selected_prompt, w.selected_token, w.selected_feature, events[-1])")
    assert back.strip() == f"0 {t} {feature} (0, {feature}, {t})"

    # A feature column header selects that feature too.
    head = widget.locator(".gs-hm-fhead").nth(2)
    column = int(head.get_attribute("data-f"))
    head.click()
    expect(head).to_have_class("gs-hm-fhead gs-selected")
    assert lab_server.run_code(page, "print(w.selected_feature)").strip() == str(column)

    # The level slider: Home moves it to the coarsest level; the kernel re-encodes the grid from the first k
    # latents only, and the view draws exactly Python's columns, every one (but the selected) below k.
    levels = json.loads(lab_server.run_code(page, "print(json.dumps(w.levels[0]))"))
    slider = widget.locator(".gs-hm-level")
    slider.focus()
    slider.press("Home")
    k = levels[0]
    expect(widget.locator(".gs-hm-level-text")).to_have_text(f"first {k:,} of {levels[-1]:,} latents", timeout=30_000)
    assert lab_server.run_code(page, "print(w.level)").strip() == str(k)
    # This SAE was not trained nested: the view says its first latents are not a coarse level (a Matryoshka SAE's are).
    note = widget.locator(".gs-hm-level-note")
    assert lab_server.run_code(page, "print(w.nested[0])").strip() == "False"
    expect(note).to_be_visible()
    expect(note).to_contain_text("not a Matryoshka SAE")
    lab_server.run_code(page, "w.nested = [True] + w.nested[1:]")
    expect(note).to_be_hidden(timeout=30_000)
    lab_server.run_code(page, "w.nested = [False] + w.nested[1:]")
    expect(note).to_be_visible(timeout=30_000)
    cut = json.loads(lab_server.run_code(page, "print(json.dumps(w.top_features(0)))"))
    heads = widget.locator(".gs-hm-fhead")
    expect(heads).to_have_count(len(cut), timeout=30_000)
    assert heads.evaluate_all("els => els.map(e => Number(e.dataset.f))") == cut
    assert all(f < k for f in cut if f != column) and cut != columns
    refused = lab_server.run_code(
        page, "try:\n    w.level = 10**6\nexcept Exception as e:\n    print(type(e).__name__, e)")
    assert refused.startswith("MatryoshkaError") and "outside" in refused
    slider.press("End")  # back to all latents
    expect(widget.locator(".gs-hm-level-text")).to_have_text(f"all {levels[-1]:,} latents", timeout=30_000)
    expect(note).to_be_hidden()
    assert lab_server.run_code(page, "print(w.level)").strip() == "0"

    # Python -> browser: a selection made in the kernel shows up in the view.
    lab_server.run_code(page, f"w.select(token={t - 1})")
    expect(text.nth(t - 1)).to_have_class(re.compile(r"\bgs-selected\b"), timeout=30_000)

    assert alerts == [], f"token text ran as markup: {alerts}"
    widget.scroll_into_view_if_needed()
    lab_server.screenshot(page, name)


def test_heatmap_in_jupyterlab_tiny_model(lab_server, page):
    _check_heatmap_flow(lab_server, page, TINY_SETUP, "heatmap_tiny")


@pytest.mark.real_model
@pytest.mark.slow
def test_heatmap_in_jupyterlab_real_model(lab_server, page):
    _check_heatmap_flow(lab_server, page, REAL_SETUP, "heatmap_real_270m")


def test_exported_html_renders_with_no_kernel_and_no_network(browser, tiny_model, gemma_scope_folders, tmp_path):
    from playwright.sync_api import expect

    from gemscope_widgets.backend.dictionaries.loading import load_sae
    from gemscope_widgets.scope import Scope
    from gemscope_widgets.widgets.export import export_html

    scope = Scope(tiny_model, [load_sae(gemma_scope_folders["resid_post"]), load_sae(gemma_scope_folders["mlp_out"])])
    long_text = " ".join(["The quick brown fox jumps over the lazy dog."] * 160)
    w = scope.heatmap([TEXT + " </script><!--", long_text], top_n=10, progress=False)
    path = export_html(w, tmp_path / "heatmap.html")

    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(path.as_uri())
        page.wait_for_function("document.body.dataset.rendered", timeout=30_000)
        assert page.evaluate("document.body.dataset.rendered") == "true", page.inner_text("body")[:500]
        # A standalone page has no kernel by design: the view does not call it gone.
        expect(page.locator(".gs-heatmap")).to_have_attribute("data-kernel", "live")
        blocks = page.locator(".gs-hm-block")
        expect(blocks).to_have_count(2)

        first = blocks.nth(0)
        assert (TEXT + " </script><!--") in first.locator(".gs-hm-text").evaluate("e => e.textContent")
        assert page.locator("img").count() == 0
        heads = first.locator(".gs-hm-fhead").evaluate_all("els => els.map(e => Number(e.dataset.f))")
        assert heads == w.top_features(0)

        # The long prompt (>1,500 tokens) draws only the rows near the viewport.
        n_long = len(w.payload.tokens(1))
        assert n_long > 1500
        grid_rows = blocks.nth(1).locator(".gs-vr-body .gs-hm-row")
        assert 0 < grid_rows.count() < 80
        blocks.nth(1).locator(".gs-hm-grid").evaluate("e => { e.scrollTop = e.scrollHeight; }")
        expect(blocks.nth(1).locator(f".gs-hm-row[data-t='{n_long - 1}']")).to_have_count(1)
        assert grid_rows.count() < 80

        # Clicking works with no kernel: a cell selects its token, the list matches Python's numbers.
        busiest = int(np.argmax(np.diff(w.payload.block(0, 0).indptr.astype(int))))
        first.locator(f".gs-hm-text .gs-token[data-index='{busiest}']").click()
        expected = [[f, text] for f, _, text in w.token_features(busiest)]
        assert _token_list(page) == expected

        # The SAE selector switches without a kernel (both SAEs are in the file).
        page.locator(".gs-hm-sae").select_option("1")
        w.sae_index = 1
        heads = first.locator(".gs-hm-fhead").evaluate_all("els => els.map(e => Number(e.dataset.f))")
        assert heads == w.top_features(0)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "heatmap_export.png"), full_page=True)
    finally:
        context.close()
    assert errors == []
    assert all(u.startswith(("file:", "blob:", "data:")) for u in requests), requests
