"""Scope: the facade's own logic (SAE lookup, compatibility, strength units)."""

from __future__ import annotations

import pytest

from gemscope_widgets import Scope
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.backend.steering.generation import generate
from gemscope_widgets.backend.steering.spec import SteeringSpec, normalize_steering
from gemscope_widgets.backend.steering.units import strength_unit
from gemscope_widgets.errors import GemscopeError, SAEModelMismatch, SteeringError
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae

TEXT = "Paris is the capital of France. The quick brown fox"


def test_scope_checks_and_names_its_saes(tiny_model, gemma_scope_folders, tmp_path):
    scope = Scope(tiny_model, [str(gemma_scope_folders["resid_post"]), load_sae(gemma_scope_folders["mlp_out"])])
    assert list(scope.saes) == ["resid_post/layer_1_width_16k_l0_medium", "mlp_out/layer_1_width_16k_l0_medium"]
    assert scope.sae() is scope.saes["resid_post/layer_1_width_16k_l0_medium"]
    with pytest.raises(GemscopeError, match="No SAE named 'nope'"):
        scope.sae("nope")
    with pytest.raises(GemscopeError, match="has no SAE"):
        Scope(tiny_model).sae()
    wide = write_gemma_scope_sae(tmp_path / "wide", kind="sae", site="resid_post", layer=1, d_in=32)
    with pytest.raises(SAEModelMismatch):
        Scope(tiny_model, str(wide))


def test_generate_takes_the_widgets_units_by_default(tiny_model, gemma_scope_folders):
    scope = Scope(tiny_model, str(gemma_scope_folders["resid_post"]))
    sae = scope.sae()
    feature = 5
    scale = strength_unit(tiny_model, normalize_steering({feature: 1.0}, sae)[0]).value
    ours = scope.generate(TEXT, {feature: 3.0}, max_new_tokens=6, stop_at_eos=False)
    raw = generate(tiny_model, TEXT, sae=sae, steering=[SteeringSpec(feature, 3.0 * scale)], max_new_tokens=6,
                   stop_at_eos=False)
    assert ours.steered_ids == raw.steered_ids
    as_raw = scope.generate(TEXT, {feature: 3.0 * scale}, unit="raw", max_new_tokens=6, stop_at_eos=False)
    assert as_raw.steered_ids == raw.steered_ids
    with pytest.raises(SteeringError, match="unit="):
        scope.generate(TEXT, {feature: 1.0}, unit="sigma")


def test_units_matter_on_this_fixture(tiny_model, gemma_scope_folders):
    """Guards the test above: a raw strength of 3 and 3 typical maxima steer differently here."""
    sae = load_sae(gemma_scope_folders["resid_post"])
    a = generate(tiny_model, TEXT, sae=sae, steering=[SteeringSpec(5, 3.0)], max_new_tokens=6, stop_at_eos=False)
    scope = Scope(tiny_model, sae)
    b = scope.generate(TEXT, {5: 3.0}, max_new_tokens=6, stop_at_eos=False)
    assert a.steered_ids != b.steered_ids
