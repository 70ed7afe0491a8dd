"""First use of the embedded default: the feature pane opens filled, from statistics made during preparation."""

from __future__ import annotations

import pytest

from gemscope_widgets.backend.stats.feature_stats import FeatureStats

pytestmark = [pytest.mark.real_model, pytest.mark.slow]


def test_default_statistics_exist_before_the_first_pane(demo_scope_parts, monkeypatch):
    from gemscope_widgets import Scope

    gm, sae = demo_scope_parts  # load_default: model, demo SAE and its statistics, as on first use

    def no_scan(*_args, **_kwargs):
        raise AssertionError("the first pane had to scan: preparation did not leave the statistics in the cache")

    monkeypatch.setattr(FeatureStats, "scan", classmethod(no_scan))
    scope = Scope(gm, sae)
    stats = scope.stats()
    assert stats.source == "scan" and stats.n_tokens > 50_000
    feature = int(stats.density.argmax())
    pane = scope.feature(feature)
    assert pane.info["density"] == pytest.approx(float(stats.density[feature]))
    assert pane.info["max_act"] > 0
    assert pane.examples["total"] > 0 and pane.examples["items"]
    assert pane.quantiles["total"] > 0
    assert pane.histogram and len(pane.histogram["counts"]) > 0
