"""Probe view: what it sends to the browser equals the ProbeResult (ROC points from scikit-learn), labels follow the
Scope's statistics, "steer" reaches the steering widget, the static HTML escapes labels, bad input leaves no view."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from gemscope_widgets.backend.behaviour.probe import PROBES
from gemscope_widgets.errors import ProbeError

XSS = "<img src=x onerror=alert(1)>"
POS = [f"The {a} sleeps in the warm barn." for a in ("cat", "dog", "bird", "fish", "horse", "cow")]
NEG = [f"import {a} as module_{i}" for i, a in enumerate(("cat", "dog", "bird", "fish", "horse", "cow"))]


@pytest.fixture(scope="module")
def parts(tiny_model, gemma_scope_folders):
    from gemscope_widgets.backend.dictionaries.loading import load_sae
    from gemscope_widgets.scope import Scope

    scope = Scope(tiny_model, load_sae(gemma_scope_folders["resid_post"]))
    result = scope.probe(POS, NEG, k=3, chat=False, progress=False, labels=lambda f: f"{XSS} {f}")
    return scope, result


def test_view_sends_the_result(parts):
    from gemscope_widgets.widgets.probe import ProbeView

    _, r = parts
    view = r.widget()
    assert isinstance(view, ProbeView)
    info = view._view
    assert [d["name"] for d in info["detectors"]] == list(PROBES)
    for d, sent in zip(r.detectors, info["detectors"]):
        assert (sent["auroc"], sent["low"], sent["high"]) == (d.auroc, d.low, d.high)
    assert [f["feature"] for f in info["features"]] == r.top_features
    assert info["curve"]["sizes"] == r.curve_sizes.tolist()
    roc = np.frombuffer(view._roc, dtype=np.float32)
    keys = [*PROBES, *r.top_features]
    assert [c["feature"] for c in info["roc"]] == [-1, -1, -1, *r.top_features]
    held = r.held_out
    for key, c in zip(keys, info["roc"]):
        if isinstance(key, str):
            fpr, tpr, _ = roc_curve(r.labels[held], r.scores[key][held])
        else:
            test, signed = r.feature_scores[key]
            fpr, tpr, _ = roc_curve(r.labels[test], signed)
        o, n = c["offset"], c["n"]
        np.testing.assert_allclose(roc[o : o + n], fpr, atol=1e-7)
        np.testing.assert_allclose(roc[o + n : o + 2 * n], tpr, atol=1e-7)
    html = view.static_html()
    assert XSS not in html and "&lt;img src=x" in html and "<script" not in html
    assert f"{info['detectors'][0]['title']}" in html and "learning curve" in html


def test_view_shows_the_best_single_latent_the_summary_names(parts):
    """Without a selection the view (and its static HTML) draws the latent the result's summary calls the best single
    latent, not merely the first listed (on the real 270M they differ: #2233 listed first, #3171 best)."""
    import re

    _, r = parts
    view = r.widget()
    named = re.search(r"best single latent #(\d+)", str(r))
    assert named, str(r)
    best = int(named[1])
    assert view._view["best"] == best == max(r.features, key=lambda f: f.auroc).feature
    legend = view.static_html().split("ROC on held-out prompts:")[1].split("</div>")[0]
    assert f"#{best}" in legend
    view.selected_feature = other = next(f for f in r.top_features if f != best)
    legend = view.static_html().split("ROC on held-out prompts:")[1].split("</div>")[0]
    assert f"#{other}" in legend and f"#{best}" not in legend


def test_panel_opens_pane_and_steers(parts):
    scope, r = parts
    steer = scope.steer("The cat sleeps", max_new_tokens=2)
    panel = r.widget(scope=scope, steer=steer)
    view = panel.view
    # With a Scope, labels come from its statistics' labeller (no statistics here: automatic labels).
    expected = scope.labels(None).labels(r.top_features)
    assert [f["label"] for f in view._view["features"]] == [expected[f] for f in r.top_features]
    # A scan or an import that brings an explanation relabels the open view (no stale label).
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats

    f = r.top_features[0]
    sae = scope.sae()
    scope.stats_holder().set(FeatureStats.from_parts(sae_name=sae.config.name, width=sae.width, source="test",
                                                     explanations={f: "foxes <i>and</i> barns"}))
    assert view._view["features"][0]["label"] == "foxes <i>and</i> barns"
    view.selected_feature = f
    assert panel.pane is not None and panel.pane.feature == f
    view._on_custom_msg(view, {"type": "steer", "feature": f}, [])
    assert view.error == "" and f in [s.feature for s in steer.specs()]
    alone = r.widget()
    alone._on_custom_msg(alone, {"type": "steer", "feature": f}, [])
    assert "no steering widget" in alone.error
    with pytest.raises(ProbeError, match="draws a ProbeResult"):
        from gemscope_widgets.widgets.probe import ProbeView

        ProbeView("not a result")
