"""The feature pane shows how well the label fits (the label score of the card) in a real JupyterLab. Tiny model."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.browser

SETUP = """
from gemscope_widgets.backend.analysis.label_scores import label_texts
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from tests.fixtures.tiny_scope import tiny_scope
scope = tiny_scope(width=48, seed=7, threshold=0.3)
gm, sae = scope.model, scope.sae()
labels = scope.labels()
labels.texts = label_texts(40)
held = labels.held_out(progress=False)
counts = held.feature.bincount(minlength=48)
feature = int(counts.argmax())
stats = FeatureStats.from_parts(sae_name=sae.config.name, width=48, source="neuronpedia test",
                                explanations={feature: "fires on the word Paris"},
                                explanation_scores={feature: {"eleuther_fuzz (m)": 0.75}})
scope.stats_holder().set(stats)
pane = scope.feature(feature)
pane
"""


def test_pane_shows_the_label_score_and_the_imported_one(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "label_score.ipynb", [SETUP])
    shown = page.locator(".gs-pane .gs-label-score")
    expect(shown).to_be_visible(timeout=60_000)
    score = json.loads(lab_server.run_code(page, "import json; print(json.dumps(pane.info['score']))"))
    direct = json.loads(lab_server.run_code(page, (
        "s = labels.score(feature); print(json.dumps([s.simulation, s.n_active, s.n_tokens]))")))
    assert [score["simulation"], score["n_active"], score["n_tokens"]] == direct
    assert score["n_active"] > 0
    text = shown.text_content()
    formatted = lab_server.run_code(page, (
        "from gemscope_widgets.widgets.payload import format_value\n"
        "print(format_value(pane.info['score']['simulation']))"
    )).strip()
    assert f"label fit r {formatted}" in text
    assert f"of {score['n_tokens']:,} held-out tokens" in text
    assert "eleuther_fuzz (m) 0.75" in text
