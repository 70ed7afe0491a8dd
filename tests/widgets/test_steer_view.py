"""The Steer view over its session: directions beside features, derived views cleared on change, input kept sane."""

from __future__ import annotations

import pytest

from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.steering.generation import generate
from gemscope_widgets.backend.steering.spec import DirectionSpec
from gemscope_widgets.errors import SteeringError
from gemscope_widgets.scope import Scope

TEXT = "Paris is the capital of France. The quick brown fox"


@pytest.fixture(scope="module")
def scope(tiny_model, gemma_scope_folders):
    return Scope(tiny_model, load_sae_folder(gemma_scope_folders["resid_post"]))


def mean_direction(gm, layer=1):
    from gemscope_widgets.backend.gemma.capture import capture

    hp = f"model.layers.{layer}.output"
    return capture(gm, gm.prompt(TEXT).input_ids, [hp])[hp][0, 1:].float().mean(0)


def test_directions_sit_beside_features_with_baseline_beside_steered(scope, tiny_model):
    r = mean_direction(tiny_model)
    w = scope.steer(TEXT, [DirectionSpec(r, mode="ablate", name="mean")], max_new_tokens=6, stop_at_eos=False)
    try:
        result = w.wait()
        (entry,) = w.directions
        assert entry["key"] == "d0" and entry["label"] == "mean" and entry["kind"] == "direction"
        assert entry["scale_source"] == "fraction" and entry["multiple"] == 1.0 and w.features == []
        direct = generate(tiny_model, TEXT, [DirectionSpec(r)], max_new_tokens=6, stop_at_eos=False)
        assert result.steered_ids == direct.steered_ids and result.baseline_ids == direct.baseline_ids
        assert w.baseline_tokens == direct.baseline_tokens and w.steered_tokens == direct.steered_tokens
        key = w.add_direction(r, 0.5, mode="add", layer=2, name="push")
        assert key == "d1" and w.directions[1]["raw"] == pytest.approx(0.5 * float(r.norm()))
        w._on_custom_msg(w, {"type": "set_direction", "direction": "d0", "key": "multiple", "value": 0.25,
                             "request": 1}, [])
        w.wait()
        assert w.directions[0]["multiple"] == 0.25 and w.error == ""
        w._on_custom_msg(w, {"type": "set_direction", "direction": "d0", "key": "multiple", "value": 2.0,
                             "request": 2}, [])
        assert "[0, 1]" in w.error and w.directions[0]["multiple"] == 0.25
        w._on_custom_msg(w, {"type": "remove_direction", "direction": "d0"}, [])
        w.wait()
        assert [d["key"] for d in w.directions] == ["d1"]
        w.add_feature(5, 1.0)
        w.wait()
        assert [f["feature"] for f in w.features] == [5] and len(w.specs()) == 2
    finally:
        w.close()


def test_a_change_clears_the_next_token_view(scope):
    w = scope.steer(TEXT, {5: 1.0}, max_new_tokens=6, stop_at_eos=False)
    try:
        w.wait()
        w.show_next_token(1)
        assert w.next_token["index"] == 1
        w.set_strength(5, -2.0)
        assert w.next_token == {}  # it described the previous strength
        w.wait()
        w.show_next_token(1)
        w.set_settings(seed=3)
        assert w.next_token == {}
    finally:
        w.close()


def test_an_invalid_box_value_reverts_with_the_error_shown(scope):
    w = scope.steer(TEXT, {5: 1.0}, max_new_tokens=5)
    try:
        w.wait()
        seen = []
        w.observe(lambda ch: seen.append(ch["new"]["max_new_tokens"]), names="settings")
        w._on_custom_msg(w, {"type": "settings", "values": {"max_new_tokens": 0}}, [])
        assert "max_new_tokens must be a positive integer" in w.error
        assert w.settings["max_new_tokens"] == 5 and w.session.settings["max_new_tokens"] == 5
        with pytest.raises(SteeringError):
            w.set_settings(max_new_tokens=-1)
        assert w.settings["max_new_tokens"] == 5
    finally:
        w.close()


def test_out_of_range_strengths_widen_the_range_with_a_note(scope):
    w = scope.steer(TEXT, {5: 1.0}, autorun=False)
    try:
        assert w.strength_range == [-3.0, 3.0] and w.note == ""
        w.set_strength(5, 1e6)
        assert w.strength_range == [-3.0, 1e6] and "widened" in w.note and "1e+06" in w.note
        assert w.features[0]["multiple"] == 1e6
        w.set_range(-5, 5)
        assert w.note == ""
    finally:
        w.close()
    w = scope.steer(TEXT, {5: -12.0}, autorun=False)
    try:
        assert w.strength_range == [-12.0, 3.0] and "-12" in w.note
    finally:
        w.close()


def test_a_scope_without_saes_steers_directions(tiny_model):
    r = mean_direction(tiny_model)
    w = Scope(tiny_model).steer(TEXT, [DirectionSpec(r)], max_new_tokens=3, stop_at_eos=False)
    try:
        assert w.sae_name == "" and w.wait().steps == 3
        with pytest.raises(SteeringError, match="no SAE"):
            w.add_feature(1)
        assert "no SAE" in w.error
    finally:
        w.close()
