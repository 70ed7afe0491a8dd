"""A widget whose kernel is gone (restarted under it) says so, turns its controls off, and its steering slider goes
back to the strength the shown texts were made with."""

from __future__ import annotations

import pytest

from tests.fixtures.tiny_scope import KERNEL_SETUP

pytestmark = pytest.mark.browser

SETUP = KERNEL_SETUP
STEER = 'w = scope.steer("The quick brown fox", {3: 1.0}, max_new_tokens=4, stop_at_eos=False)\nw'
PANE = "pane = scope.feature(3)\npane"


def test_widgets_notice_a_gone_kernel_and_turn_controls_off(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "no_kernel.ipynb", [SETUP, STEER, PANE])
    steer = page.locator(".gs-root:has(.gs-slider)").first
    pane = page.locator(".gs-root:has(.gs-pane)").first
    expect(steer.locator(".gs-steered .gs-token")).to_have_count(4, timeout=60_000)
    value = steer.locator(".gs-steer-value").first
    expect(value).to_contain_text("1× = ", timeout=30_000)
    expect(steer).to_have_attribute("data-kernel", "live", timeout=30_000)
    expect(pane).to_have_attribute("data-kernel", "live", timeout=30_000)
    shown = steer.locator(".gs-steered").text_content()
    label = value.text_content()

    # The kernel restarts under the widgets: their models are gone from it.
    (kernel,) = lab_server.api("GET", "/api/kernels")
    lab_server.api("POST", f"/api/kernels/{kernel['id']}/restart", timeout=60)
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget.sessionContext.kernelDisplayStatus === 'idle'", timeout=60_000
    )

    slider = steer.locator(".gs-slider").first
    slider.focus()
    page.keyboard.press("ArrowRight")
    expect(steer).to_have_attribute("data-kernel", "offline", timeout=15_000)
    expect(steer.locator(".gs-offline-note")).to_contain_text("No answer from the kernel")
    expect(slider).to_be_disabled()
    expect(value).to_have_text(label)  # back to the strength the texts were made with
    assert steer.locator(".gs-steered").text_content() == shown
    assert steer.locator("button:enabled, input:enabled, select:enabled").count() == 0

    pane.locator("textarea").fill("hello")
    pane.locator(".gs-test-run").click()
    expect(pane).to_have_attribute("data-kernel", "offline", timeout=15_000)
    expect(pane.locator(".gs-offline-note")).to_be_visible()
    assert pane.locator("button:enabled, textarea:enabled").count() == 0
