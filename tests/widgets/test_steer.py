"""The Steer widget: same results as the backend, last change wins, stale runs never shown, errors surfaced."""

from __future__ import annotations

import math
import threading
import time

import pytest

from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.steering.generation import generate
from gemscope_widgets.errors import FeatureIndexError, SteeringError
from gemscope_widgets.scope import Scope
from tests.helpers import hook_ids

TEXT = "Paris is the capital of France. The quick brown fox"


@pytest.fixture(scope="module")
def sae(gemma_scope_folders):
    return load_sae_folder(gemma_scope_folders["resid_post"])


@pytest.fixture(scope="module")
def scope(tiny_model, sae):
    return Scope(tiny_model, sae)


@pytest.fixture(scope="module")
def feature(tiny_model, sae):
    from tests.helpers import active_feature

    return active_feature(sae, tiny_model, TEXT)


def test_widget_matches_backend_generation(scope, tiny_model, sae, feature):
    w = scope.steer(TEXT, {feature: 3.0}, max_new_tokens=8)
    try:
        result = w.wait()
        entry = w.features[0]
        assert entry["scale_source"] == "quantile" and entry["scale"] > 0
        assert entry["unit_source"].startswith("p99 of non-zero activations over")
        assert entry["raw"] == pytest.approx(3.0 * entry["scale"])
        direct = generate(tiny_model, TEXT, {feature: 3.0 * entry["scale"]}, sae=sae, unit="raw", max_new_tokens=8)
        assert result.steered_ids == direct.steered_ids and result.baseline_ids == direct.baseline_ids
        assert w.baseline_tokens == direct.baseline_tokens and w.steered_tokens == direct.steered_tokens
        assert w.divergence == (-1 if direct.divergence is None else direct.divergence)
        assert w.prompt_tokens == tiny_model.prompt(TEXT).tokens and w.prompt_special[0] is True
        assert not w.running and "tokens/s" in w.status
    finally:
        w.close()


def test_strength_zero_shows_identical_columns(scope, feature):
    w = scope.steer(TEXT, {feature: 0.0}, max_new_tokens=6, stop_at_eos=False)
    try:
        w.wait()
        assert w.steered_tokens == w.baseline_tokens and len(w.baseline_tokens) == 6
        assert w.divergence == -1
    finally:
        w.close()


def test_concurrent_slider_updates_end_with_the_last_value(scope, tiny_model, sae, feature):
    w = scope.steer(TEXT, {feature: 0.0}, max_new_tokens=40, stop_at_eos=False)
    seen: list[tuple[int, list[str]]] = []
    w.observe(lambda ch: seen.append((w.generation_id, list(ch["new"]))), names="steered_tokens")
    try:
        values = [0.5 * i for i in range(-6, 7)]
        threads = [threading.Thread(target=w.set_strength, args=(feature, v)) for v in values]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        last = 40.0
        final_id = w.set_strength(feature, last) or w.generation_id
        result = w.wait()
        scale = w.features[0]["scale"]
        direct = generate(tiny_model, TEXT, {feature: last * scale}, sae=sae, unit="raw", max_new_tokens=40,
                          stop_at_eos=False)
        assert result.steered_ids == direct.steered_ids
        assert w.steered_tokens == direct.steered_tokens
        assert w.generation_id == final_id
        # Every update shown under the final id is a prefix of the final continuation (nothing stale).
        final = [tokens for gid, tokens in seen if gid == final_id]
        assert final and all(tokens == w.steered_tokens[: len(tokens)] for tokens in final)
    finally:
        w.close()


def test_runs_in_the_background_and_cancels_promptly(scope, tiny_model, feature):
    before = hook_ids(tiny_model.model)
    w = scope.steer(TEXT, {feature: 1.0}, max_new_tokens=400, stop_at_eos=False, autorun=False)
    try:
        started = time.perf_counter()
        first_id = w.run()
        assert time.perf_counter() - started < 0.5 and w.running  # the caller is not blocked
        deadline = time.monotonic() + 30
        while len(w.steered_tokens) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(w.steered_tokens) >= 3
        changed = time.perf_counter()
        w.set_strength(feature, -1.0)
        new_id = w.generation_id
        assert new_id > first_id
        while not w.steered_tokens and time.monotonic() < deadline:
            time.sleep(0.005)
        latency = time.perf_counter() - changed
        assert w.steered_tokens and latency < 5.0, latency
        w.set_settings(max_new_tokens=4)
        w.wait()
        assert len(w.result.steered_ids) == 4
    finally:
        w.close()
    time.sleep(0.2)
    assert hook_ids(tiny_model.model) == before


def test_add_remove_modes_and_messages(scope, feature, sae):
    w = scope.steer(TEXT, None, max_new_tokens=4)
    try:
        w.wait()
        w._on_custom_msg(w, {"type": "add", "feature": feature}, [])
        w.wait()
        assert [e["feature"] for e in w.features] == [feature]
        changed: list[str] = []
        w.observe(lambda change: changed.append(change["name"]), names=["features", "applied_request"])
        w._on_custom_msg(w, {"type": "set", "feature": feature, "key": "mode", "value": "clamp", "request": 7}, [])
        w._on_custom_msg(w, {"type": "set", "feature": feature, "key": "positions", "value": "generated",
                             "request": 8}, [])
        w.wait()
        assert w.features[0]["mode"] == "clamp" and w.features[0]["positions"] == "generated"
        # Each request is reported handled after its echo, so the view never takes an older echo for the answer.
        assert changed == ["features", "applied_request"] * 2 and w.applied_request == 8
        spec = w.specs()[0]
        assert (spec.mode, spec.positions, spec.strength) == ("clamp", "generated", pytest.approx(w.features[0]["raw"]))
        # Bad values from the view land in `error`, not as a traceback.
        w._on_custom_msg(w, {"type": "set", "feature": feature, "key": "mode", "value": "boost", "request": 9}, [])
        assert "Unknown steering mode 'boost'" in w.error and w.features[0]["mode"] == "clamp"
        assert w.applied_request == 9  # refused, and handled: the view shows the kernel's value again
        w._on_custom_msg(w, {"type": "set", "feature": feature, "key": "mode", "value": "add"}, [])
        assert "request" in w.error and w.features[0]["mode"] == "clamp" and w.applied_request == 9
        w._on_custom_msg(w, {"type": "add", "feature": sae.width}, [])
        assert f"Feature {sae.width} does not exist" in w.error
        w._on_custom_msg(w, {"type": "settings", "values": {"temperature": -2}}, [])
        assert "temperature" in w.error and w.settings["temperature"] == 0.0
        w._on_custom_msg(w, {"type": "remove", "feature": feature}, [])
        w.wait()
        assert w.features == [] and w.error == ""
    finally:
        w.close()


def test_python_api_errors(scope, feature, sae):
    w = scope.steer(TEXT, {feature: 1.0}, max_new_tokens=4, autorun=False)
    try:
        with pytest.raises(FeatureIndexError, match="does not exist"):
            w.add_feature(sae.width + 5)
        assert "does not exist" in w.error
        with pytest.raises(SteeringError, match="finite"):
            w.set_strength(feature, math.nan)
        with pytest.raises(SteeringError, match="already steered"):
            w.add_feature(feature)
        with pytest.raises(SteeringError, match="not steered here"):
            w.set_strength(feature + 1, 1.0)
        with pytest.raises(SteeringError, match="min < max"):
            w.set_range(2, -2)
        with pytest.raises(SteeringError, match="Unknown generation settings"):
            w.set_settings(beam_width=3)
    finally:
        w.close()
    with pytest.raises(FeatureIndexError):
        scope.steer(TEXT, {sae.width: 1.0})
    with pytest.raises(SteeringError, match="Unknown generation settings"):
        scope.steer(TEXT, {feature: 1.0}, beams=2)


def test_next_token_view(scope, tiny_model, feature):
    w = scope.steer(TEXT, {feature: 40.0}, max_new_tokens=6, stop_at_eos=False)
    try:
        result = w.wait()
        d = result.divergence
        assert d is not None
        view = w.show_next_token(d, "steered")
        assert view["chosen"] == w.steered_tokens[d]
        assert view["chosen"] in view["tokens"]
        i = view["tokens"].index(view["chosen"])
        # Greedy: the steered row's chosen token is the steered distribution's argmax.
        assert view["steered"][i] == max(view["steered"])
        assert view["baseline"] != view["steered"]
        assert sum(view["steered"]) <= 1.0 + 1e-6
        w._on_custom_msg(w, {"type": "next", "index": 99, "column": "steered"}, [])
        assert "No token 99" in w.error
    finally:
        w.close()


def test_raw_units_and_the_unit_source(scope, sae, feature):
    w = scope.steer(TEXT, {feature: 2.0}, autorun=False)
    try:
        entry = w.features[0]
        raw = entry["raw"]
        assert entry["scale_source"] == "quantile" and entry["unit_source"].startswith("p99")
        w._on_custom_msg(w, {"type": "unit", "value": "raw"}, [])
        assert w.generation_id == 0  # the steering did not change: nothing to regenerate
        entry = w.features[0]
        assert w.unit == "raw" and entry["scale_source"] == "raw" and entry["unit_source"] == "raw"
        assert entry["multiple"] == pytest.approx(raw) and entry["raw"] == pytest.approx(raw)
        assert w.strength_range[1] >= raw and "widened" in w.note  # the value is shown, not pinned at the end
        assert w.specs()[0].strength == pytest.approx(raw)
    finally:
        w.close()
    # unit="raw": the values given are raw activations.
    w = scope.steer(TEXT, {feature: 250.0}, unit="raw", autorun=False)
    try:
        assert w.features[0]["multiple"] == 250.0 and w.features[0]["raw"] == 250.0
        assert w.strength_range == [-3.0, 250.0] and "250" in w.note
    finally:
        w.close()
