"""The family tree across widths under the feature pane: what it shows equals family_tree, and a click opens the
companion's latent (two random SAEs of one site, in the Gemma Scope 2 layout)."""

from __future__ import annotations

import pytest

from gemscope_widgets.backend.analysis.card import FeatureCards
from gemscope_widgets.backend.analysis.width_family import family_tree
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.errors import MatryoshkaError
from gemscope_widgets.widgets.feature_pane import FeaturePane
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("widths")
    narrow = load_sae_folder(write_gemma_scope_sae(root / "resid_post/layer_1_width_16k_l0_small", kind="sae",
                                                   site="resid_post", layer=1, width=24, seed=1))
    wide = load_sae_folder(write_gemma_scope_sae(root / "resid_post/layer_1_width_262k_l0_small", kind="sae",
                                                 site="resid_post", layer=1, width=96, seed=2))
    return narrow, wide


def shown(pane):
    return [(r["feature"], r["cosine"], r["explanation"]) for r in pane.family["rows"]]


def test_pane_shows_the_family_tree_and_a_click_opens_the_other_width(tiny_model, pair):
    narrow, wide = pair
    tree = family_tree(narrow, wide, 3, progress=False)
    pane = FeaturePane(tiny_model, wide, feature=5, companion=narrow)
    fam = pane.family
    assert (fam["sae"], fam["width"], fam["relation"], fam["total"]) == (narrow.config.name, 24, "narrower", 3)
    labels = pane.cards.companion_labels
    assert shown(pane) == [(b.narrow, b.cosine, labels.labels([b.narrow])[b.narrow]) for b in tree.parents(5)]
    assert all(label for _, _, label in shown(pane))

    # A click on the nearest narrow latent opens it: the pane shows the narrow SAE, its wide children listed.
    target = fam["rows"][0]["feature"]
    pane._on_custom_msg(pane, {"type": "open_across", "feature": target}, [])
    assert (pane.feature, pane.info["sae"], pane.info["width"]) == (target, narrow.config.name, 24)
    children = tree.children(target)
    assert pane.family["relation"] == "wider" and pane.family["total"] == len(children) >= 1
    assert [r[:2] for r in shown(pane)] == [(b.wide, b.cosine) for b in children[: pane.related_k]]
    assert 5 in [r["feature"] for r in pane.family["rows"]]  # the way back
    pane._on_custom_msg(pane, {"type": "open_across", "feature": 5}, [])
    assert (pane.feature, pane.info["sae"]) == (5, wide.config.name)

    plain = FeaturePane(tiny_model, wide, feature=5)
    assert plain.family == {}
    plain._on_custom_msg(plain, {"type": "open_across", "feature": 1}, [])
    assert "no companion" in plain.error


def test_companions_of_another_site_or_the_same_width_are_refused(tiny_model, pair, tmp_path):
    narrow, wide = pair
    layer2 = load_sae_folder(write_gemma_scope_sae(tmp_path / "resid_post/layer_2_width_16k_l0_small", kind="sae",
                                                   site="resid_post", layer=2, width=24, seed=1))
    twin = load_sae_folder(write_gemma_scope_sae(tmp_path / "resid_post/layer_1_width_16k_l0_medium", kind="sae",
                                                 site="resid_post", layer=1, width=24, seed=5))
    with pytest.raises(MatryoshkaError, match="same site"):
        FeatureCards(tiny_model, wide, companion=layer2)
    with pytest.raises(MatryoshkaError, match="same width"):
        FeatureCards(tiny_model, narrow, companion=twin)
    with pytest.raises(MatryoshkaError, match="family_tree"):  # a tree of another pair
        FeatureCards(tiny_model, wide, companion=narrow, family=family_tree(twin, wide, 2, progress=False))
    tree = family_tree(narrow, wide, 2, progress=False)
    assert FeatureCards(tiny_model, wide, companion=narrow, family=tree).card(3).across_widths.total == 2
