"""The Steer widget in a real JupyterLab: a keyboard-moved slider restreams the steered column only."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

TEXT = "Paris is the capital of France. The quick brown fox"
N = 10

SETUP = f"""
from gemscope_widgets import Scope
from tests.fixtures.tiny_scope import tiny_scope
from tests.helpers import active_feature
scope = tiny_scope()
gm, sae = scope.model, scope.sae()
TEXT = {TEXT!r}
F = active_feature(sae, gm, TEXT)
"""

SHOW = f"""
w = Scope(gm, sae).steer(TEXT, {{F: 0.0}}, max_new_tokens={N}, stop_at_eos=False)
w.set_range(-40, 40)
w
"""


def test_slider_restreams_steered_column_and_marks_divergence(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "steer.ipynb", [SETUP, SHOW])
    root = page.locator(".gs-root").first
    base = root.locator(".gs-baseline .gs-token")
    steered = root.locator(".gs-steered .gs-token")
    expect(base).to_have_count(N, timeout=60_000)
    expect(steered).to_have_count(N, timeout=60_000)
    expect(root.locator(".gs-diverge")).to_have_count(0)
    baseline_text = base.all_text_contents()
    assert steered.all_text_contents() == baseline_text  # strength 0: the same continuation

    slider = root.locator(".gs-slider").first
    expect(slider).to_have_attribute("max", "40")
    slider.focus()
    page.keyboard.press("End")  # the keyboard moves the slider to its maximum: 40× the unit
    # The steered column is cleared and streamed again while the baseline stays on screen.
    expect(base).to_have_count(N)
    expect(root.locator(".gs-diverge")).to_have_count(2, timeout=60_000)
    expect(steered).to_have_count(N, timeout=60_000)
    expect(root.locator(".gs-status")).to_contain_text("diverge at token", timeout=60_000)
    assert base.all_text_contents() == baseline_text
    assert steered.all_text_contents() != baseline_text
    value = root.locator(".gs-steer-value").first.text_content()
    assert value.startswith("40× = ") and value.endswith(" raw")
    unit = root.locator(".gs-steer-unit").first
    expect(unit).to_have_text("unit: p99 of non-zero activations over 16,384 corpus tokens")

    out = lab_server.run_code(page, "print(w.features[0]['multiple'], w.divergence, w.error == '')")
    multiple, divergence, ok = out.split()
    assert float(multiple) == 40.0 and ok == "True"
    d = int(divergence)
    assert root.locator(".gs-diverge").first.get_attribute("data-index") == str(d)
    expected = lab_server.run_code(page, "print(list(w.result.steered_tokens) != list(w.result.baseline_tokens))")
    assert expected.strip() == "True"

    # Next-token view: clicking the divergent steered token explains it.
    steered.nth(d).click()
    table = root.locator(".gs-next table")
    expect(table).to_be_visible(timeout=30_000)
    expect(root.locator(".gs-next .gs-chosen")).to_have_count(1)

    # A change of configuration clears the next-token table that described the old one.
    lab_server.run_code(page, "w.set_strength(F, 100.0)")
    expect(table).to_have_count(0, timeout=30_000)
    # A value outside the range widens it, with a note.
    expect(slider).to_have_attribute("max", "100", timeout=30_000)
    expect(root.locator(".gs-note")).to_contain_text("widened", timeout=30_000)

    # An invalid box value is refused and the box goes back to the last good value.
    max_new = root.locator("input[data-key=max_new_tokens]")
    max_new.fill("0")
    max_new.press("Enter")
    expect(root.locator(".gs-error").first).to_contain_text("max_new_tokens must be a positive integer",
                                                            timeout=30_000)
    expect(max_new).to_have_value(str(N), timeout=30_000)

    # A direction steers beside the features: ablation strengths are fractions.
    lab_server.run_code(page, "import torch; w.add_direction(torch.ones(gm.d_model), name='ones')")
    row = root.locator(".gs-steer-row[data-direction=d0]")
    expect(row.locator(".gs-steer-name")).to_have_text("ones", timeout=30_000)
    expect(row.locator(".gs-steer-value")).to_have_text("100% of the component removed")
    expect(row.locator(".gs-slider")).to_have_attribute("max", "1")

    # Errors reach the view: a feature the SAE does not have.
    root.locator(".gs-steer-settings input[type=number]").first.fill("100000")
    root.locator(".gs-add").click()
    expect(root.locator(".gs-error").first).to_contain_text("Feature 100000 does not exist", timeout=30_000)
    lab_server.screenshot(page, "steer")
