"""The feature pane's search box (Python side): a "search" message shows search_labels' hits; an empty query says
so."""

from __future__ import annotations

import pytest

from gemscope_widgets.backend.analysis.search import search_labels
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from gemscope_widgets.widgets.feature_pane import FeaturePane
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae


@pytest.fixture(scope="module")
def pane(tiny_model, tmp_path_factory):
    folder = write_gemma_scope_sae(tmp_path_factory.mktemp("search_sae") / "resid_post/layer_1_width_16k_l0_medium",
                                   kind="sae", site="resid_post", layer=1, width=48, seed=7, threshold=0.3)
    sae = load_sae_folder(folder)
    stats = FeatureStats.from_parts(sae_name=sae.config.name, width=48, source="neuronpedia test",
                                    explanations={31: "zebra crossings in towns", 12: "quokka habitats"})
    return FeaturePane(tiny_model, sae, stats, feature=0)


def test_search_message_shows_the_hits_of_search_labels(pane):
    pane._on_custom_msg(pane, {"type": "search", "query": "zebra quokka"}, [])
    found = pane.found
    direct = search_labels(pane.labels, "zebra quokka", k=10)
    assert found["query"] == "zebra quokka" and found["error"] == ""
    assert [h["feature"] for h in found["hits"]] == [h.feature for h in direct]
    assert {h["feature"] for h in found["hits"][:2]} == {31, 12}
    assert found["hits"][0]["label"] in ("zebra crossings in towns", "quokka habitats")
    assert found["hits"][0]["source"] == "neuronpedia"
    pane._on_custom_msg(pane, {"type": "open", "feature": found["hits"][0]["feature"]}, [])
    assert pane.feature == found["hits"][0]["feature"]


def test_an_empty_query_says_so(pane):
    pane._on_custom_msg(pane, {"type": "search", "query": "  ?? "}, [])
    assert pane.found["hits"] == [] and "empty" in pane.found["error"]


def test_an_emptied_box_clears_the_last_result(pane):
    pane._on_custom_msg(pane, {"type": "search", "query": "zzqxv"}, [])
    assert pane.found["query"] == "zzqxv"
    before = pane.found["search"]
    pane._on_custom_msg(pane, {"type": "search", "query": " "}, [])
    # no query left: the view shows no "0 features for “zzqxv”", no hits, no error
    assert "query" not in pane.found and pane.found["hits"] == [] and pane.found["error"] == ""
    assert pane.found["search"] == before + 1


def test_the_first_search_says_it_labels_every_feature(tiny_model, pane):
    fresh = FeaturePane(tiny_model, pane.sae, pane.stats, feature=0)
    seen: list[dict] = []
    fresh.observe(lambda change: seen.append(change["new"]), names="found")
    n = fresh.labels.unlabelled()
    assert 0 < n < 48  # the card labelled the shown feature and its related ones
    fresh._on_custom_msg(fresh, {"type": "search", "query": "zebra"}, [])
    assert len(seen) == 2 and seen[0]["progress"].startswith(f"labelling {n} features for the first search")
    assert "progress" not in seen[1] and seen[1]["hits"] and fresh.labels.unlabelled() == 0
    fresh._on_custom_msg(fresh, {"type": "search", "query": "quokka"}, [])
    assert len(seen) == 3 and "progress" not in seen[2]  # labels are kept: no second labelling
