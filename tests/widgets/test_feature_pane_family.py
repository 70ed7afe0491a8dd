"""The feature pane's parents and children: rows from latent_family with labels, and a click opens one."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.analysis.card import FeatureCards
from gemscope_widgets.backend.analysis.hierarchy import latent_family
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.stats.cofiring import count_cofiring
from gemscope_widgets.errors import MatryoshkaError
from gemscope_widgets.widgets.feature_pane import FeaturePane
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae
from tests.helpers import SCAN_CORPUS

PARENT, CHILD = 10, 50


@pytest.fixture(scope="module")
def family_sae(tmp_path_factory):
    """A random SAE where latent 50 refines latent 10: the same encoder with a higher threshold (so it fires only
    where 10 fires) and a decoder direction close to 10's."""
    folder = write_gemma_scope_sae(tmp_path_factory.mktemp("family") / "resid_post/layer_1_width_16k_l0_medium",
                                   kind="sae", site="resid_post", layer=1, width=64, seed=7, threshold=0.3)
    sae = load_sae_folder(folder)
    with torch.no_grad():
        sae.w_enc[:, CHILD] = sae.w_enc[:, PARENT]
        sae.b_enc[CHILD] = sae.b_enc[PARENT]
        sae.threshold[CHILD] = sae.threshold[PARENT] + 0.05
        sae.w_dec[CHILD] = sae.w_dec[PARENT] + 0.3 * sae.w_dec[CHILD]
    return sae


@pytest.fixture(scope="module")
def counts(tiny_model, family_sae):
    return count_cofiring(tiny_model, family_sae, None, SCAN_CORPUS, max_doc_tokens=24, progress=False)


def test_cards_carry_parents_and_children(tiny_model, family_sae, counts):
    assert int(counts.fired_a[CHILD]) >= 5  # the planted child fires often enough to be judged
    cards = FeatureCards(tiny_model, family_sae, None, cofiring=counts)
    child = cards.card(CHILD)
    parents = [r for r in child.related if r.kind == "parent"]
    assert PARENT in [r.feature for r in parents]
    want = latent_family(counts, CHILD)
    assert [(r.feature, r.score) for r in parents] == [(p.latent, p.p_implied) for p in want.parents]
    assert all(r.label == cards.labels.auto(r.feature) for r in parents)
    children = [r for r in cards.card(PARENT).related if r.kind == "child"]
    assert CHILD in [r.feature for r in children]
    assert not [r for r in FeatureCards(tiny_model, family_sae).card(CHILD).related if r.kind == "parent"]


def test_pane_shows_them_and_a_click_opens_one(tiny_model, family_sae, counts):
    pane = FeaturePane(tiny_model, family_sae, feature=CHILD, cofiring=counts)
    rows = [r for r in pane.related if r["kind"] == "parent"]
    assert PARENT in [r["feature"] for r in rows] and all(r["explanation"] for r in rows)
    pane._on_custom_msg(pane, {"type": "open", "feature": PARENT}, [])
    assert pane.feature == PARENT
    assert CHILD in [r["feature"] for r in pane.related if r["kind"] == "child"]
    pane.close()


def test_counts_of_another_dictionary_are_refused(tiny_model, family_sae, counts, tmp_path):
    other = load_sae_folder(write_gemma_scope_sae(tmp_path / "resid_post/layer_1_width_16k_l0_small", kind="sae",
                                                  site="resid_post", layer=1, width=32, seed=1))
    with pytest.raises(MatryoshkaError, match="count them"):
        FeatureCards(tiny_model, other, None, cofiring=counts)
