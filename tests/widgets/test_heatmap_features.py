"""The heatmap's feature notes: densities and labels per column, "specific" ranking, and one shared selection."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets import Scope
from gemscope_widgets.backend.analysis.labels import compose_label, top_logit_tokens
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from gemscope_widgets.widgets.payload import DENSE_ABOVE

TEXT = "def main():\n    return 42  # the answer"


@pytest.fixture(scope="module")
def scope_with_stats(tiny_model, gemma_scope_folders):
    sae = load_sae_folder(gemma_scope_folders["resid_post"])
    scope = Scope(tiny_model, sae)
    plain = scope.heatmap(TEXT, top_n=4, rank_by="max", progress=False)
    by_max = plain.top_features()
    # Make the two strongest features "dense" in the corpus statistics.
    density = torch.full((sae.width,), 0.01)
    density[by_max[:2]] = torch.tensor([0.8, DENSE_ABOVE + 0.01])
    stats = FeatureStats.from_parts(sae_name=sae.config.name, width=sae.width, source="test", density=density)
    scope.stats_holder().set(stats)
    return scope, by_max


def test_specific_ranking_puts_dense_features_last(scope_with_stats):
    scope, by_max = scope_with_stats
    widget = scope.heatmap(TEXT, top_n=4, progress=False)
    assert widget.rank_by == "specific"
    assert widget.dense_features() >= set(by_max[:2])
    columns = widget.top_features()
    assert columns[:2] == by_max[2:4]
    assert not set(columns[:2]) & widget.dense_features()
    widget.rank_by = "max"
    assert widget.top_features() == by_max


def test_columns_carry_density_and_labels(scope_with_stats, tiny_model):
    scope, by_max = scope_with_stats
    widget = scope.heatmap(TEXT, top_n=4, progress=False)
    info = widget.feature_info["0"]
    assert info["density"][str(by_max[0])] == pytest.approx(0.8)
    sae = scope.sae()
    for f in widget.top_features():
        assert widget.label(f) == compose_label([], top_logit_tokens(tiny_model, sae, [f])[f]) != ""


def test_a_selected_feature_outside_the_top_n_gets_a_column(scope_with_stats):
    scope, _ = scope_with_stats
    widget = scope.heatmap(TEXT, top_n=2, progress=False)
    shown = widget.top_features()
    outside = next(f for f in range(scope.sae().width) if f not in shown)
    widget.select(feature=outside)
    assert widget.top_features() == [*shown, outside]


def test_the_saved_static_view_names_each_feature(scope_with_stats):
    import html

    scope, _ = scope_with_stats
    widget = scope.heatmap(TEXT, top_n=3, progress=False)
    static = widget.static_html()
    for f in widget.top_features():
        assert f"#{f} {html.escape(widget.label(f))}" in static


def test_labels_follow_more_columns_and_a_selection_outside_them(scope_with_stats, tiny_model):
    scope, _ = scope_with_stats
    sae = scope.sae()
    widget = scope.heatmap(TEXT, top_n=1, rank_by="max", progress=False)
    outside = next(f for f in range(sae.width) if widget.label(f) == "")
    widget.select(feature=outside)
    assert widget.label(outside) == compose_label([], top_logit_tokens(tiny_model, sae, [outside])[outside]) != ""
    wider = widget.payload.top_features(0, 0, 256, "max", widget.dense_features())
    assert any(widget.label(f) == "" for f in wider), "the test needs columns that are not labelled yet"
    widget.top_n = 256  # every token's list_k strongest features are labelled already: go past them
    assert all(widget.label(f) != "" for f in wider)
