"""One observable source of statistics per SAE in a Scope: every view follows it."""

from __future__ import annotations

import gc

import pytest
import torch

from gemscope_widgets import Scope
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from gemscope_widgets.backend.stats.holder import StatsHolder


def _stats(sae, value: float) -> FeatureStats:
    return FeatureStats(sae_name=sae.config.name, width=sae.width, source="test",
                        max_act=torch.full((sae.width,), value), density=torch.full((sae.width,), 0.5))


class _View:
    def __init__(self, holder):
        self.seen = []
        holder.subscribe(self.changed)

    def changed(self, stats):
        self.seen.append(stats)


def test_subscribers_see_every_change_and_die_with_their_view(tiny_model, scan_sae):
    holder = StatsHolder(tiny_model, scan_sae)
    view = _View(holder)
    plain = []
    stop = holder.subscribe(plain.append)
    first = _stats(scan_sae, 1.0)
    holder.set(first)
    assert view.seen == [first] and plain == [first] and holder.stats is first
    stop()
    del view
    gc.collect()
    holder.set(None)
    assert plain == [first] and len(holder._subscribers) == 0


def test_a_failing_subscriber_warns_and_the_others_still_update(tiny_model, scan_sae):
    holder = StatsHolder(tiny_model, scan_sae)

    def broken(_stats):
        raise RuntimeError("boom")

    seen = []
    holder.subscribe(broken)
    holder.subscribe(seen.append)
    with pytest.warns(UserWarning, match="boom"):
        holder.set(_stats(scan_sae, 2.0))
    assert len(seen) == 1


def test_a_scan_in_one_pane_updates_every_view_of_that_sae(tiny_model, scan_sae, stats_cache, scan_corpus,
                                                             scan_params):
    scope = Scope(tiny_model, scan_sae, check=False)
    a, b = scope.feature(3), scope.feature(5)
    heat = scope.heatmap("The lazy dog sleeps.", feature_max="stats")
    assert a.stats is None and b.info["density"] is None
    assert heat.payload.feature_max(0) is None
    a.run_scan(scan_corpus, wait=True, **scan_params)
    assert a.scan["state"] == "done", a.scan
    stats = scope.stats_holder().stats
    assert stats is not None and a.stats is stats and b.stats is stats
    assert b.info["density"] == pytest.approx(float(stats.density[5]))
    maxima = heat.payload.feature_max(0)
    assert maxima and all(v == pytest.approx(float(stats.max_act[f])) for f, v in maxima.items())
    # A new Scope on the same model and SAE finds the scan on disk without scanning.
    other = Scope(tiny_model, scan_sae, check=False)
    pane = other.feature(3, corpus=scan_corpus)
    assert pane.stats is None  # other parameters than the defaults: not the same scan
    found = FeatureStats.cached(tiny_model, scan_sae, scan_corpus, **scan_params)
    assert found is not None and torch.equal(found.max_act, stats.max_act)
