"""compare_graphs(a, b).widget(): the comparison view's payload is the backend's comparison, its static HTML escapes."""

from __future__ import annotations

import pytest

from gemscope_widgets import GraphComparisonView, compare_graphs
from gemscope_widgets.widgets.token_text import visible_text
from tests.fixtures.graphs import synthetic_graph


@pytest.fixture(scope="module")
def comparison():
    a = synthetic_graph(n_features=40, n_edges=500, dense_logits=True, seed=1)
    b = synthetic_graph(n_features=40, n_edges=500, dense_logits=True, seed=2)
    return compare_graphs(a, b, k=8)


def test_the_view_carries_the_comparison(comparison):
    view = comparison.widget()
    assert isinstance(view, GraphComparisonView) and view.comparison is comparison
    data = view._comparison
    for name in ("only_a", "only_b", "shared", "largest_changes"):
        assert [c["label"] for c in data[name]] == [
            f"{c.key[0]} “{visible_text(c.key[1])}”" if c.key[0] in ("token", "logit") else c.label
            for c in getattr(comparison, name)]
        assert [c["delta"] for c in data[name]] == pytest.approx([c.delta for c in getattr(comparison, name)])
    assert data["only_a"] and data["only_b"]
    edge = comparison.edges_only_a[0]
    assert data["edges_only_a"][0]["weight_a"] == pytest.approx(edge.weight_a)
    assert data["edges_only_a"][0]["source"] == (
        f"token “{visible_text(edge.source[1])}”" if edge.source[0] == "token" else comparison.labels.get(edge.source))
    # Token ends are named, quoted and made visible, so a leading space reads (“␣Paris”).
    token_edges = [(e, sent) for e, sent in zip(comparison.edges_only_a + comparison.edges_only_b,
                                                data["edges_only_a"] + data["edges_only_b"]) if e.source[0] == "token"]
    assert token_edges
    for e, sent in token_edges:
        assert sent["source"] == f"token “{visible_text(e.source[1])}”"
    assert data["overlap"] == comparison.overlap


def test_static_html_lists_both_sides_as_text(comparison):
    html = comparison.widget().static_html()
    assert "Only in A" in html and "Only in B" in html and "Largest changes" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
