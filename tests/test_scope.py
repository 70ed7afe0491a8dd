"""Scope: the facade's own logic (SAE lookup, compatibility, strength units)."""

from __future__ import annotations

import warnings

import pytest
import torch

from gemscope_widgets import Scope
from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.backend.steering.generation import generate, next_token_probs
from gemscope_widgets.backend.steering.spec import SteeringSpec, normalize_steering
from gemscope_widgets.backend.steering.units import strength_unit
from gemscope_widgets.errors import GemscopeError, SAEModelMismatch, SteeringError
from gemscope_widgets.testing.calibrated import calibrated_sae
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
    raw = generate(tiny_model, TEXT, sae=sae, unit="raw", steering=[SteeringSpec(feature, 3.0 * scale)],
                   max_new_tokens=6, stop_at_eos=False)
    assert ours.steered_ids == raw.steered_ids
    as_raw = scope.generate(TEXT, {feature: 3.0 * scale}, unit="raw", max_new_tokens=6, stop_at_eos=False)
    assert as_raw.steered_ids == raw.steered_ids
    with pytest.raises(SteeringError, match="Unknown steering unit 'sigma': use 'typical' .* or 'raw'"):
        scope.generate(TEXT, {feature: 1.0}, unit="sigma")


def test_units_matter_on_this_fixture(tiny_model, gemma_scope_folders):
    """Guards the test above: a raw strength of 3 and 3 typical maxima steer differently here."""
    sae = load_sae(gemma_scope_folders["resid_post"])
    a = generate(tiny_model, TEXT, sae=sae, unit="raw", steering=[SteeringSpec(5, 3.0)], max_new_tokens=6,
                 stop_at_eos=False)
    scope = Scope(tiny_model, sae)
    b = scope.generate(TEXT, {5: 3.0}, max_new_tokens=6, stop_at_eos=False)
    assert a.steered_ids != b.steered_ids


CONV = [{"role": "user", "content": "Tell me about the weather in Paris."}]


def _chat_reply(scope, messages, n, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the base-model warnings
        chat = scope.chat(messages, max_new_tokens=n, **kwargs)
        chat.continue_(wait=True)
    return chat.result


def _same_reply(chat, generated):
    """The chat reply stops at <end_of_turn>, generate at <eos>: the same tokens up to where the chat stopped."""
    ids = chat.steered_ids
    return len(ids) > 0 and ids == generated.steered_ids[: len(ids)]


def test_a_steering_mapping_means_multiples_of_the_unit_in_every_entry_point(tiny_model, gemma_scope_folders):
    """``{f: x}`` is x × the feature's unit in generate, steer, chat and next_token_probs; raw only with unit="raw"."""
    scope = Scope(tiny_model, str(gemma_scope_folders["resid_post"]))
    sae, feature, x, n = scope.sae(), 5, 3.0, 6
    scale = strength_unit(tiny_model, normalize_steering({feature: 1.0}, sae)[0]).value
    assert abs(scale - 1.0) > 0.1, "the unit must differ from 1 for this test to tell the meanings apart"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        messages = tiny_model.prompt(CONV).source
    typical = scope.generate(messages, {feature: x}, max_new_tokens=n, stop_at_eos=False)
    raw = scope.generate(messages, {feature: x * scale}, unit="raw", max_new_tokens=n, stop_at_eos=False)
    assert typical.steered_ids == raw.steered_ids
    assert typical.specs[0].strength == pytest.approx(x * scale) and typical.specs[0].unit == "raw"
    wrong = scope.generate(messages, {feature: x}, unit="raw", max_new_tokens=n, stop_at_eos=False)
    assert wrong.steered_ids != typical.steered_ids, "x raw and x units must steer differently here"
    # chat: the same mapping, the same reply (before, chat took it raw: the `wrong` reply)
    assert _same_reply(_chat_reply(scope, CONV, n, steering={feature: x}), typical)
    assert _same_reply(_chat_reply(scope, CONV, n, steering={feature: x * scale}, unit="raw"), typical)
    assert _same_reply(_chat_reply(scope, CONV, n, steering=typical.specs), typical)  # specs say their unit
    # the backend's own generate and next_token_probs read a mapping the same way
    assert generate(tiny_model, messages, {feature: x}, sae=sae, max_new_tokens=n,
                    stop_at_eos=False).steered_ids == typical.steered_ids
    probs, _, _ = next_token_probs(tiny_model, TEXT, {feature: x}, sae=sae)
    raw_probs, _, _ = next_token_probs(tiny_model, TEXT, {feature: x * scale}, sae=sae, unit="raw")
    torch.testing.assert_close(probs, raw_probs)
    # steer: the widget's session
    w = scope.steer(messages, {feature: x}, autorun=False, max_new_tokens=n, stop_at_eos=False)
    try:
        assert w.specs()[0].strength == pytest.approx(x * scale)
        assert w.session.generate().steered_ids == typical.steered_ids
    finally:
        w.close()


@pytest.mark.parametrize("call", ["generate", "chat", "steer", "next_token_probs"])
def test_an_unknown_unit_names_the_units_in_every_entry_point(tiny_model, gemma_scope_folders, call):
    scope = Scope(tiny_model, str(gemma_scope_folders["resid_post"]))
    run = {
        "generate": lambda: scope.generate(TEXT, {5: 1.0}, unit="sigma"),
        "chat": lambda: scope.chat(CONV, steering={5: 1.0}, unit="sigma"),
        "steer": lambda: scope.steer(TEXT, {5: 1.0}, unit="sigma", autorun=False),
        "next_token_probs": lambda: next_token_probs(tiny_model, TEXT, {5: 1.0}, sae=scope.sae(), unit="sigma"),
    }[call]
    with pytest.raises(SteeringError, match="Unknown steering unit 'sigma': use 'typical' .* or 'raw'"):
        run()
    with pytest.raises(SteeringError, match="Unknown steering unit 'pct'"):
        scope.generate(TEXT, [SteeringSpec(5, 1.0, unit="pct")])


@pytest.mark.parametrize("form", ["tensor", "list"])
def test_generate_takes_token_ids(tiny_model, gemma_scope_folders, form):
    scope = Scope(tiny_model, str(gemma_scope_folders["resid_post"]))
    ids = tiny_model.prompt(TEXT).input_ids
    given = ids[1:] if form == "tensor" else ids[1:].tolist()  # without its <bos>: one is prepended
    by_ids = scope.generate(given, {5: 2.0}, max_new_tokens=4, stop_at_eos=False)
    by_text = scope.generate(TEXT, {5: 2.0}, max_new_tokens=4, stop_at_eos=False)
    assert by_ids.prompt_tokens == by_text.prompt_tokens and by_ids.steered_ids == by_text.steered_ids
    with pytest.raises(GemscopeError, match="text .*chat messages .*token ids"):
        scope.generate(3.5)


def test_views_take_token_ids_as_one_prompt(tiny_model, gemma_scope_folders):
    """A list of ints is one prompt of token ids (not a list of prompts), in the heatmap as in generate."""
    scope = Scope(tiny_model, str(gemma_scope_folders["resid_post"]))
    ids = tiny_model.prompt(TEXT).input_ids
    by_text, by_ids, by_tensor = (scope.heatmap(p, progress=False) for p in (TEXT, ids.tolist(), ids))
    try:
        assert len(by_ids._header["prompts"]) == len(by_tensor._header["prompts"]) == 1
        assert by_ids._header["prompts"] == by_text._header["prompts"] == by_tensor._header["prompts"]
        assert by_ids._data == by_text._data
    finally:
        for w in (by_text, by_ids, by_tensor):
            w.close()


@pytest.mark.real_model
def test_chat_and_generate_give_the_same_steered_text_on_the_real_270m(real_model, tmp_path):
    """The bug this guards: scope.chat(messages, steering={f: x}) steered at x raw, generate at x × the unit.
    The real 270M with an SAE calibrated on its own layer-6 activations (the strength unit is computed on it)."""
    gm = real_model
    sae = calibrated_sae(gm, layer=6, width=2048, l0=20, max_tokens=512, window=64,
                         folder=tmp_path / "resid_post" / "layer_6_width_2048_l0_20")
    scope = Scope(gm, sae)
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    n = 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acts = prompt_features(gm, sae, messages)[0].dense()
    feature = int(acts.max(dim=0).values.argmax())  # the prompt's strongest feature
    scale = strength_unit(gm, normalize_steering({feature: 1.0}, sae)[0]).value
    steering = {feature: 4.0}
    reply = _chat_reply(scope, messages, n, steering=steering)
    generated = scope.generate(messages, steering, max_new_tokens=n, stop_at_eos=False)
    assert reply.steered_ids != reply.baseline_ids, "the steering should change the reply"
    assert len(reply.steered_ids) >= 4 and _same_reply(reply, generated)
    assert reply.steered_text == generated.steered_text[: len(reply.steered_text)]
    raw = scope.generate(messages, {feature: 4.0 * scale}, unit="raw", max_new_tokens=n, stop_at_eos=False)
    assert raw.steered_ids == generated.steered_ids
    as_before = scope.generate(messages, steering, unit="raw", max_new_tokens=n, stop_at_eos=False)
    assert as_before.steered_ids != generated.steered_ids, "4 raw (the old chat) must read differently"


def test_scope_is_a_facade_over_its_workspace(tiny_model, gemma_scope_folders):
    from gemscope_widgets import Workspace

    scope = Scope(tiny_model, str(gemma_scope_folders["resid_post"]))
    ws = scope.workspace
    assert isinstance(ws, Workspace) and scope.saes is ws.saes and scope.model is ws.model
    assert scope.stats_holder() is ws.stats_holder() and scope.labels() is ws.labels()
    again = Scope(ws)  # a second facade over the same workspace shares its holders and labels
    assert again.workspace is ws and again.labels() is scope.labels()
    pane = scope.feature(3)
    assert pane.holder is ws.stats_holder() and pane.labels is ws.labels()


@pytest.mark.parametrize(("view", "message"), [
    ({"node_threshold": 1.5}, "node_threshold must be between 0 and 1, got 1.5"),
    ({"edge_threshold": -0.1}, "edge_threshold must be between 0 and 1"),
    ({"node_threshold": "high"}, "node_threshold must be a number"),
    ({"max_edges": 0}, "max_edges must be positive"),
])
def test_circuit_refuses_bad_view_settings_before_attributing(tiny_model, monkeypatch, view, message):
    scope = Scope(tiny_model)

    def never(*args, **kwargs):
        raise AssertionError("attribution (or loading transcoders) ran before the view's settings were checked")

    monkeypatch.setattr(scope.workspace, "attribute", never)
    monkeypatch.setattr(scope.workspace, "transcoders", never)
    with pytest.raises(GemscopeError, match=message):
        scope.circuit("Hello world", **view)
