"""Capture: the right tensors, early exit that really stops, hooks always removed."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.gemma.hooks import hooked
from gemscope_widgets.backend.gemma.sites import resolve_site
from gemscope_widgets.errors import SAEModelMismatch
from tests.helpers import hook_ids

SITES = [
    "model.layers.{L}.output",
    "model.layers.{L}.post_feedforward_layernorm.output",
    "model.layers.{L}.pre_feedforward_layernorm.output",
    "model.layers.{L}.self_attn.o_proj.input",
]


def _hidden_states(gm, ids):
    with torch.inference_mode():
        return gm.model(input_ids=ids[None], output_hidden_states=True).hidden_states


@pytest.mark.parametrize("which", ["tiny_model", "tiny_vlm_model"])
def test_resid_post_equals_hidden_states_and_early_exit_matches(request, which):
    gm = request.getfixturevalue(which)
    ids = gm.prompt("The quick brown fox jumps over the lazy dog.").input_ids
    hs = _hidden_states(gm, ids)
    for layer in range(gm.n_layers - 1):
        got = capture(gm, ids, [f"model.layers.{layer}.output"])[f"model.layers.{layer}.output"]
        torch.testing.assert_close(got[0], hs[layer + 1][0], rtol=0, atol=0)
    points = [s.format(L=2) for s in SITES] + ["model.layers.1.output"]
    early = capture(gm, ids, points, stop_early=True)
    full = capture(gm, ids, points, stop_early=False)
    assert set(early) == set(points)
    for p in points:
        torch.testing.assert_close(early[p], full[p], rtol=0, atol=0)
    assert early["model.layers.2.self_attn.o_proj.input"].shape[-1] == 4 * 24  # heads × head_dim, not d_model


def test_early_exit_runs_no_later_layer_and_no_lm_head(tiny_model):
    calls = []
    handles = [
        tiny_model.layers[3].register_forward_hook(lambda *a: calls.append("layer3")),
        tiny_model.lm_head.register_forward_hook(lambda *a: calls.append("lm_head")),
    ]
    try:
        capture(tiny_model, tiny_model.prompt("hello there").input_ids, ["model.layers.1.output"])
        assert calls == []
        capture(tiny_model, tiny_model.prompt("hello there").input_ids, ["model.layers.1.output"], stop_early=False)
        assert calls == ["layer3"]
    finally:
        for h in handles:
            h.remove()


def test_hooks_are_removed_after_an_exception_and_outputs_are_unchanged(tiny_model):
    ids = tiny_model.prompt("hello there general").input_ids[None]
    with torch.inference_mode():
        before = tiny_model.model(ids).logits.clone()
    hooks_before = hook_ids(tiny_model.model)

    def boom(_):
        raise RuntimeError("boom")

    site = resolve_site(tiny_model, "model.layers.1.output")
    with pytest.raises(RuntimeError, match="boom"), hooked((site, boom)), torch.inference_mode():
        tiny_model.model(ids)
    assert hook_ids(tiny_model.model) == hooks_before
    with torch.inference_mode():
        after = tiny_model.model(ids).logits
    assert torch.equal(before, after)


def test_replacing_hook_changes_output_and_is_undone(tiny_model):
    ids = tiny_model.prompt("hello there").input_ids[None]
    site = resolve_site(tiny_model, "model.layers.0.self_attn.o_proj.input")
    with torch.inference_mode():
        before = tiny_model.model(ids).logits.clone()
        with hooked((site, lambda z: z + 1.0)):
            steered = tiny_model.model(ids).logits
        after = tiny_model.model(ids).logits
    assert not torch.equal(before, steered)
    assert torch.equal(before, after)


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ("model.layers.9.output", "layers 0–3"),
        ("model.layers.1.nonexistent.output", "no submodule"),
        ("blocks.1.hook_resid_post", "Unrecognised hook point"),
    ],
)
def test_bad_hook_points_get_clear_errors(tiny_model, point, message):
    with pytest.raises(SAEModelMismatch, match=message):
        resolve_site(tiny_model, point)


@pytest.mark.real_model
def test_real_model_capture_matches_hidden_states(real_model):
    ids = real_model.prompt("Sparse autoencoders decompose the residual stream into features.").input_ids
    hs = _hidden_states(real_model, ids)
    early = capture(real_model, ids, ["model.layers.9.output", "model.layers.5.output"])
    full = capture(real_model, ids, ["model.layers.9.output", "model.layers.5.output"], stop_early=False)
    for layer in (5, 9):
        key = f"model.layers.{layer}.output"
        torch.testing.assert_close(early[key][0], hs[layer + 1][0], rtol=0, atol=0)
        torch.testing.assert_close(early[key], full[key], rtol=0, atol=0)
    # Gemma's residual stream is large (thousands), the scale Gemma Scope 2 SAEs expect.
    assert early["model.layers.9.output"][0, 1:].norm(dim=-1).mean() > 1000


def test_hooks_only_act_on_the_thread_that_registered_them(tiny_model):
    import threading

    ids = tiny_model.prompt("hello there").input_ids[None]
    site = resolve_site(tiny_model, "model.layers.0.output")
    results = {}

    def other_thread():
        with torch.inference_mode():
            results["other"] = tiny_model.model(ids).logits

    with torch.inference_mode():
        clean = tiny_model.model(ids).logits.clone()
        with hooked((site, lambda x: x * 0.0)):
            results["owner"] = tiny_model.model(ids).logits
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join(30)
    assert torch.equal(results["other"], clean)
    assert not torch.equal(results["owner"], clean)
