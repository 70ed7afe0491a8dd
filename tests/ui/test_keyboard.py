"""Keyboard inside widgets in a real JupyterLab: keys typed in a widget never reach the notebook, arrows move a
steering slider (Left/Down decrease, Right/Up increase), Enter commits the heatmap's "top" box."""

from __future__ import annotations

import pytest

from tests.fixtures.tiny_scope import KERNEL_SETUP

pytestmark = pytest.mark.browser

SETUP = KERNEL_SETUP
STEER = 'w = scope.steer("The quick brown fox", {3: 0.0}, max_new_tokens=3, stop_at_eos=False)\nw'
HEATMAP = 'hm = scope.heatmap("Paris is the capital of France.", top_n=12, progress=False)\nhm'

_NOTEBOOK_STATE = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  return [nb.activeCellIndex, nb.mode, nb.model.cells.length, nb.model.cells.get(1).type];
}"""


def test_keys_stay_in_widgets_arrows_move_sliders_enter_commits(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "keyboard.ipynb", [SETUP, STEER, HEATMAP])
    steer = page.locator(".gs-root:has(.gs-slider)").first
    value = steer.locator(".gs-steer-value").first
    expect(value).to_contain_text("raw", timeout=60_000)
    slider = steer.locator(".gs-slider").first
    step = float(slider.get_attribute("step"))

    # Put the notebook in command mode on the steering cell, as a click into its output does.
    slider.click(position={"x": 1, "y": 1})  # near the far left
    slider.focus()
    page.keyboard.press("Home")  # exactly the minimum, wherever the click landed on the step grid
    expect(value).to_contain_text("-3× = ", timeout=30_000)
    assert float(slider.input_value()) == -3.0
    before = page.evaluate(_NOTEBOOK_STATE)

    expected = -3.0
    for key, sign in (("ArrowRight", 1), ("ArrowUp", 1), ("ArrowRight", 1), ("ArrowLeft", -1), ("ArrowDown", -1)):
        page.keyboard.press(key)
        expected += sign * step
        shown = f"{float(f'{expected:.12g}'):g}"
        expect(value).to_contain_text(f"{shown}× = ", timeout=30_000)  # the kernel's answer, not the local label
    # Letters that are JupyterLab command-mode shortcuts (d d deletes a cell, m makes it markdown, a/b insert).
    add_box = steer.locator(".gs-steer-settings input[type=number]").first
    add_box.focus()
    for key in ("d", "d", "m", "a", "b", "ArrowUp", "ArrowDown"):
        page.keyboard.press(key)
    assert page.evaluate(_NOTEBOOK_STATE) == before, "a key pressed in a widget reached the notebook"
    assert page.evaluate("() => document.activeElement.tagName") == "INPUT"

    # Enter in the heatmap's "top" box applies it at once, with the box still focused.
    heatmap = page.locator(".gs-heatmap").first
    top = heatmap.locator(".gs-hm-topn")
    top.fill("5")
    top.press("Enter")
    expect(heatmap.locator(".gs-hm-block").first.locator(".gs-hm-fhead")).to_have_count(5, timeout=30_000)
    assert page.evaluate("() => document.activeElement.classList.contains('gs-hm-topn')")
    # An invalid value reverts to the last good one.
    top.fill("0")
    top.press("Enter")
    expect(top).to_have_value("5")

    out = lab_server.run_code(page, "print(w.features[0]['multiple'], hm.top_n)")
    multiple, top_n = out.split()
    assert float(multiple) == pytest.approx(expected) and top_n == "5"
