"""The view-with-a-pane composite (PanedView) as Explorer and ContrastPanel use it: one pane per key, made once and
kept, a feature opened from either side, the steer button wired, the saved notebook's HTML of both parts."""

from __future__ import annotations

import pytest

from gemscope_widgets.widgets.explorer import Explorer
from gemscope_widgets.widgets.feature_pane import FeaturePane
from gemscope_widgets.widgets.paned import PanedView, pane_keywords


class FakeSteer:
    def __init__(self) -> None:
        self.added: list[int] = []

    def add_feature(self, feature: int) -> None:
        self.added.append(feature)


@pytest.fixture
def scope(tiny_model, gemma_scope_folders):
    from gemscope_widgets.backend.dictionaries.loading import load_sae
    from gemscope_widgets.scope import Scope

    return Scope(tiny_model, load_sae(gemma_scope_folders["resid_post"]))


def test_explorer_opens_one_kept_pane_and_keeps_one_selection(scope):
    steer = FakeSteer()
    ex = scope.explore("The quick brown fox", steer=steer, related_k=3)
    assert isinstance(ex, Explorer) and isinstance(ex, PanedView) and ex.view is ex.heatmap
    assert ex.pane is None and len(ex.children) == 2  # the placeholder beneath
    assert "Click a feature" in ex.children[1].value
    first, second = ex.heatmap.payload.top_features(0, 0, 2, "max", set())[:2]
    ex.heatmap.select(prompt=0, feature=int(first), token=1)
    pane = ex.pane
    assert isinstance(pane, FeaturePane) and pane.feature == first and pane.related_k == 3
    assert ex.children == (ex.heatmap, pane)
    ex.heatmap.select(feature=int(second))
    assert ex.pane is pane and pane.feature == second and list(ex.panes.values()) == [pane]  # kept, not rebuilt
    pane._on_custom_msg(pane, {"type": "open", "feature": int(first)}, [])  # a related-feature chip
    assert ex.heatmap.selected_feature == first
    pane._on_custom_msg(pane, {"type": "steer"}, [])
    assert steer.added == [first]
    html = ex.static_html()
    assert html.startswith(ex.heatmap.static_html()) and f"Feature {first}" in html


def test_contrast_panel_opens_the_selected_feature_beneath(scope):
    steer = FakeSteer()
    panel = scope.contrast("The fox runs.", "The dog runs.", k=4, steer=steer, page_size=2)
    assert isinstance(panel, PanedView) and panel.pane is None and panel.children == (panel.view,)
    assert panel.static_html() == panel.view.static_html()
    rows = panel.view._view["rows"]
    panel.view.selected_feature = rows[0]["feature"]
    pane = panel.pane
    assert pane is not None and pane.feature == rows[0]["feature"] and pane.page_size == 2
    panel.view.selected_feature = rows[1]["feature"]
    assert panel.pane is pane and pane.feature == rows[1]["feature"]
    pane._on_custom_msg(pane, {"type": "steer"}, [])
    assert steer.added == [rows[1]["feature"]]
    assert panel.result is panel.view.result
    assert f"Feature {rows[1]['feature']}" in panel.static_html()


def test_pane_keywords_leave_the_views_own():
    kwargs = {"k": 3, "related_k": 2, "corpus": ["a"], "span": "all"}
    assert pane_keywords(kwargs) == {"related_k": 2, "corpus": ["a"]} and kwargs == {"k": 3, "span": "all"}
