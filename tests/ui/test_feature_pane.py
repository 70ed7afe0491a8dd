"""The feature pane in a real JupyterLab: examples with highlighted tokens, the drawn histogram, a heatmap
click opening the pane beneath, and the "test your own text" box. Tiny model only."""

from __future__ import annotations

import ast

import pytest

pytestmark = pytest.mark.browser

SETUP = """
from tests.helpers import SCAN_CORPUS as CORPUS, SCAN_PARAMS as PARAMS
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from tests.fixtures.tiny_scope import tiny_scope
scope = tiny_scope(width=48, seed=7, threshold=0.3)
gm, sae = scope.model, scope.sae()
stats = FeatureStats.scan(gm, sae, CORPUS, cache=False, progress=False, **PARAMS)
scope.stats_holder().set(stats)
ex = scope.explore("The capital of France is Paris. The quick brown fox.", progress=False)
ex
"""

FAMILY = """
import tempfile, pathlib
from gemscope_widgets import family_tree, load_sae
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae
_root = pathlib.Path(tempfile.mkdtemp())
narrow = load_sae(write_gemma_scope_sae(_root / "resid_post/layer_1_width_16k_l0_small", kind="sae",
                                        site="resid_post", layer=1, width=16, seed=3))
tree = family_tree(narrow, sae, 3, progress=False)
fp = scope.feature(3, companion=narrow)
fp
"""


def test_heatmap_click_opens_the_pane_with_examples_histogram_and_test_box(lab_server, page):
    from playwright.sync_api import expect

    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    lab_server.open_and_run(page, "feature_pane.ipynb", [SETUP])

    heads = page.locator(".gs-hm-fhead[data-f]")
    expect(heads.first).to_be_visible(timeout=60_000)
    # Click a feature that has corpus examples, so the pane has something to highlight.
    feature = int(lab_server.run_code(page, (
        "print(next(int(f) for f in ex.heatmap.top_features(0) if stats.n_examples(int(f)) >= 2))"
    )))
    page.locator(f".gs-hm-fhead[data-f='{feature}']").first.click()

    pane = page.locator(".gs-pane")
    expect(pane).to_be_visible(timeout=60_000)
    expect(pane.locator("h3")).to_have_text(f"Feature {feature}", timeout=30_000)
    assert lab_server.run_code(page, "print(ex.pane.feature)").strip() == str(feature)

    # Examples: one row per example of the first page, tokens as text, the peak token highlighted.
    n_shown = int(lab_server.run_code(page, "print(len(ex.pane.examples['items']))"))
    rows = pane.locator(".gs-top .gs-example")
    expect(rows).to_have_count(n_shown, timeout=30_000)
    first_tokens = rows.first.locator(".gs-token").evaluate_all("els => els.map(e => e.textContent)")
    expected = lab_server.run_code(page, "print(repr(''.join(stats.examples(ex.pane.feature)[0].tokens)))")
    shown = "".join(first_tokens).replace("↵", "").replace("→", "")  # newline/tab marks are added for display
    assert shown == ast.literal_eval(expected.strip())
    peak = rows.first.locator(".gs-token.gs-peak")
    expect(peak).to_have_count(1)
    assert peak.evaluate("e => getComputedStyle(e).backgroundColor") not in ("rgba(0, 0, 0, 0)", "transparent")
    value = float(peak.get_attribute("data-value"))
    peak_value = lab_server.run_code(page, "print(stats.examples(ex.pane.feature)[0].value)")
    assert value == pytest.approx(float(peak_value), rel=2e-3)  # windows are stored in float16
    assert ":" in peak.get_attribute("title")  # hover shows the value

    # The histogram is drawn: one SVG bar per bin.
    n_bins = int(lab_server.run_code(page, "print(len(stats.histogram(ex.pane.feature)[1]))"))
    expect(pane.locator("svg.gs-histogram rect.gs-hist-bar")).to_have_count(n_bins, timeout=30_000)

    # Paging asks Python for the next page.
    total = int(lab_server.run_code(page, "print(ex.pane.examples['total'])"))
    if total > n_shown:
        pane.locator(".gs-top .gs-next").click()
        expect(pane.locator(".gs-top .gs-where")).to_contain_text(f"{n_shown + 1}–", timeout=30_000)

    # Test your own text: Python computes the activations, the tokens come back highlighted.
    pane.locator(".gs-test textarea").fill("Paris is the capital of France. <b>bold</b>")
    pane.locator(".gs-test-run").click()
    out = pane.locator(".gs-test-out .gs-token")
    n_tokens = int(lab_server.run_code(page, "print(len(gm.prompt('Paris is the capital of France. <b>bold</b>')))"))
    expect(out).to_have_count(n_tokens, timeout=60_000)
    values = out.evaluate_all("els => els.map(e => Number(e.dataset.value))")
    expected_values = lab_server.run_code(page, (
        "from gemscope_widgets.backend.analysis.features import prompt_features\n"
        "print(prompt_features(gm, [sae], 'Paris is the capital of France. <b>bold</b>')[0]"
        ".feature(ex.pane.feature).tolist())"
    ))
    assert values == pytest.approx(ast.literal_eval(expected_values.strip()), rel=1e-5)
    assert pane.locator("b").count() == 0  # typed markup stays text

    # A related feature switches the pane.
    chip = pane.locator(".gs-related .gs-chip").first
    other = int(chip.get_attribute("data-feature"))
    chip.click()
    expect(pane.locator("h3")).to_have_text(f"Feature {other}", timeout=30_000)

    # The family tree across widths: a narrower SAE of the same site as companion; the tree under the pane shows
    # family_tree's nearest narrow latents with their labels, and a click opens one in the narrow SAE.
    lab_server.run_code(page, FAMILY)
    tree = page.locator(".gs-pane").last.locator(".gs-family-chip")
    expected_rows = ast.literal_eval(lab_server.run_code(page, (
        "print([(b.narrow, fp.cards.companion_labels.labels([b.narrow])[b.narrow]) for b in tree.parents(3)])"
    )).strip())
    expect(tree).to_have_count(len(expected_rows), timeout=60_000)
    assert tree.evaluate_all("els => els.map(e => e.textContent)") == [f"#{f} {label}" for f, label in expected_rows]
    tree.first.click()
    expect(page.locator(".gs-pane").last.locator("h3")).to_have_text(f"Feature {expected_rows[0][0]}",
                                                                     timeout=30_000)
    assert lab_server.run_code(page, "print(fp.info['sae'] == narrow.config.name, fp.family['relation'])").split() \
        == ["True", "wider"]

    assert alerts == []
    lab_server.screenshot(page, "feature_pane")
