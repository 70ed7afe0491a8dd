"""The Steer widget in a real JupyterLab: a keyboard-moved slider restreams the steered column only."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

TEXT = "Paris is the capital of France. The quick brown fox"
N = 10

SETUP = f"""
import pathlib, tempfile
from gemscope_widgets.testing.tiny import TINY_NAME, build_tiny_checkpoint
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae
from tests.helpers import active_feature
from gemscope_widgets.backend.gemma.model import load_model
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets import Scope
_root = pathlib.Path(tempfile.mkdtemp())
gm = load_model(build_tiny_checkpoint(_root / "tiny"), device="cpu", dtype="float32", name=TINY_NAME)
sae = load_sae(write_gemma_scope_sae(_root / "resid_post/layer_1_width_16k_l0_medium", kind="sae", layer=1, seed=10))
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

    lab_server.write_notebook("steer.ipynb", [SETUP, SHOW])
    lab_server.open_notebook(page, "steer.ipynb")
    lab_server.run_all(page)
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
    assert value.startswith("40× = ") and "raw (prompt)" in value

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

    # Errors reach the view: a feature the SAE does not have.
    root.locator(".gs-steer-settings input[type=number]").first.fill("100000")
    root.locator(".gs-add").click()
    expect(root.locator(".gs-error").first).to_contain_text("Feature 100000 does not exist", timeout=30_000)
    lab_server.screenshot(page, "steer")
