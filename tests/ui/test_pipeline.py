"""The whole front-end pipeline in a real JupyterLab: built TS -> bundled ESM -> rendered -> round trip."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
TOKENS = ["<bos>", "Hello", " world", "\n", XSS, "\tindented", "  two spaces", "<start_of_turn>"]
SPECIAL = [True, False, False, False, False, False, False, True]
CLICKED = 2


def test_token_view_renders_and_round_trips(lab_server, page, record_property):
    from playwright.sync_api import expect

    started = time.monotonic()
    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    cells = [
        "from gemscope_widgets.widgets.token_view import TokenView\n"
        f"w = TokenView({TOKENS!r}, special={SPECIAL!r})\n"
        "w",
        "print('PY_SELECTED', w.selected_token)",
    ]
    lab_server.open_and_run(page, "token_view.ipynb", cells)
    widget = page.locator(".gs-root").first
    spans = widget.locator(".gs-token")
    expect(spans).to_have_count(len(TOKENS), timeout=60_000)
    first_render = time.monotonic() - started

    # Text: spans hold the token text, with visible markers in front of newlines and tabs.
    texts = spans.evaluate_all("els => els.map(e => e.textContent)")
    assert texts[1:3] == ["Hello", " world"]
    assert texts[3] == "↵\n"
    assert texts[5] == "→\tindented"
    assert texts[6] == "  two spaces"
    assert [s.get_attribute("data-index") for s in spans.all()] == [str(i) for i in range(len(TOKENS))]
    special = spans.evaluate_all("els => els.map(e => e.classList.contains('gs-special'))")
    assert special == SPECIAL
    # Leading spaces are not collapsed: "  two spaces" is wider than "two spaces" in the same place.
    extra_width = spans.nth(6).evaluate(
        """e => { const probe = e.cloneNode(); probe.textContent = e.textContent.trimStart(); e.after(probe);
                  const w = probe.getBoundingClientRect().width; probe.remove();
                  return e.getBoundingClientRect().width - w; }"""
    )
    assert extra_width > 8, f"leading spaces collapsed (width difference {extra_width}px)"

    # Model text is data, never markup.
    assert texts[4] == XSS
    assert widget.locator("img").count() == 0
    assert page.locator(".jp-OutputArea img[src='x']").count() == 0

    # The kernel's initial status reached the DOM.
    status = widget.locator(".gs-status")
    expect(status).to_have_text("Click a token to select it.")

    # Round trip: click -> Python trait -> Python observer sets status -> DOM.
    spans.nth(CLICKED).click()
    expect(status).to_have_text(f"selected token {CLICKED}: {TOKENS[CLICKED]!r}", timeout=30_000)
    expect(spans.nth(CLICKED)).to_have_class("gs-token gs-clickable gs-selected")
    assert lab_server.run_code(page, "print(w.selected_token)").strip() == str(CLICKED)
    assert lab_server.run_cell(page, 1).strip() == f"PY_SELECTED {CLICKED}"

    # And the other way: Python sets the selection, the DOM follows.
    lab_server.run_code(page, "w.selected_token = 4")
    expect(spans.nth(4)).to_have_class("gs-token gs-clickable gs-selected", timeout=30_000)
    expect(status).to_have_text(f"selected token 4: {XSS!r}", timeout=30_000)
    expect(spans.nth(CLICKED)).to_have_class("gs-token gs-clickable")

    assert alerts == [], f"a token's text ran as markup: {alerts}"
    lab_server.screenshot(page, "token_view")
    record_property("lab_server_start_s", round(lab_server.start_seconds, 2))
    record_property("first_widget_render_s", round(first_render, 2))
    record_property("test_s", round(time.monotonic() - started, 2))
    print(
        f"server start {lab_server.start_seconds:.1f} s, first widget render {first_render:.1f} s, "
        f"test {time.monotonic() - started:.1f} s"
    )


def test_notebook_helpers_report_kernel_errors(lab_server, page):
    lab_server.write_notebook("errors.ipynb", ["x = 41", "raise ValueError('broken cell')"])
    lab_server.open_notebook(page, "errors.ipynb")
    with pytest.raises(AssertionError, match=r"cell 1: ValueError: broken cell"):
        lab_server.run_all(page)
    assert lab_server.run_code(page, "print(x + 1)") == "42\n"
    with pytest.raises(AssertionError, match=r"NameError: name 'y' is not defined"):
        lab_server.run_code(page, "print(y)")
    assert "ValueError: broken cell" in lab_server.cell_output_text(page, 1)


def test_bundle_works_outside_jupyterlab(browser):
    """Another anywidget host (VS Code, Colab) has no JupyterLab theme: text takes the host's colours."""
    from gemscope_widgets.widgets.token_view import TokenView

    page = browser.new_page(viewport={"width": 700, "height": 300})
    try:
        page.set_content("<body style='background:#1e1e1e;color:rgb(221, 221, 221)'><div id=el></div></body>")
        calls = page.evaluate(
            """async (src) => {
              const url = URL.createObjectURL(new Blob([src], {type: 'text/javascript'}));
              const widget = (await import(url)).default;
              const state = {tokens: ['<bos>', 'Hello', ' world'], special: [true, false, false],
                             selected_token: -1, status: 'ready'};
              const calls = [];
              const model = {get: (k) => state[k], set: (k, v) => { calls.push([k, v]); state[k] = v; },
                             save_changes: () => calls.push(['save']), on() {}, off() {}};
              widget.render({model, el: document.getElementById('el')});
              document.querySelectorAll('.gs-token')[2].click();
              return calls;
            }""",
            TokenView(["x"])._esm,
        )
        assert calls == [["selected_token", 2], ["save"]]
        colours = page.locator(".gs-token").evaluate_all("els => els.map(e => getComputedStyle(e).color)")
        assert colours[1] == colours[2] == "rgb(221, 221, 221)"
        assert colours[0] != colours[1], "special tokens should look different"
        assert page.locator(".gs-status").text_content() == "ready"
    finally:
        page.close()
