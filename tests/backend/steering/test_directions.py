"""Direction steering: ablation leaves no component along the direction anywhere in the residual stream during
generation (Arditi et al. 2024), addition adds exactly ``α·r̂`` at one layer, and the model is untouched after."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

import gemscope_widgets.backend.steering.generation as generation
from gemscope_widgets import Scope
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.gemma.hooks import hooked
from gemscope_widgets.backend.gemma.sites import resolve_site
from gemscope_widgets.backend.steering.generation import generate, next_token_probs
from gemscope_widgets.backend.steering.plan import SteeringPlan, StepState
from gemscope_widgets.backend.steering.spec import DirectionSpec, SteeringSpec, normalize_steering
from gemscope_widgets.errors import SteeringError
from tests.helpers import hook_ids

TEXT = "Paris is the capital of France. The quick brown fox"
N = 8


def mean_residual_direction(gm, layer: int, text: str = TEXT) -> torch.Tensor:
    """A direction the residual stream really has a component along: the mean activation at ``layer``."""
    from gemscope_widgets.backend.gemma.capture import capture

    hp = f"model.layers.{layer}.output"
    acts = capture(gm, gm.prompt(text).input_ids, [hp])[hp][0, 1:].float()
    return acts.mean(dim=0)


@contextlib.contextmanager
def residual_observer(gm):
    """Records, per forward of the decoder, every residual-stream point: each layer's input (``resid_pre``,
    the embedding output for layer 0), the stream between attention and MLP (``resid_mid``: the input of
    ``pre_feedforward_layernorm``) and the last layer's output (the final norm's input)."""
    calls: list[dict[str, torch.Tensor]] = []

    def keep(name):
        def hook(module, args):
            if name == "layers.0.resid_pre":
                calls.append({})
            calls[-1][name] = args[0].detach().float().clone()

        return hook

    handles = []
    for i, layer in enumerate(gm.layers):
        handles.append(layer.input_layernorm.register_forward_pre_hook(keep(f"layers.{i}.resid_pre")))
        handles.append(layer.pre_feedforward_layernorm.register_forward_pre_hook(keep(f"layers.{i}.resid_mid")))
    handles.append(gm.final_norm.register_forward_pre_hook(keep("final")))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def relative_components(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``|x·r̂| / |x|`` per position of ``x`` ``[..., d]``."""
    r = r.float() / r.float().norm()
    return (x @ r).abs() / x.norm(dim=-1).clamp_min(1e-12)


def steered_forwards(calls, per_row: bool):
    """The steered row of every decoder forward: odd calls when rows run one at a time, else row 1."""
    if per_row:
        return [{k: v[0] for k, v in c.items()} for c in calls[1::2]], [{k: v[0] for k, v in c.items()}
                                                                      for c in calls[0::2]]
    return [{k: v[1] for k, v in c.items()} for c in calls], [{k: v[0] for k, v in c.items()} for c in calls]


@pytest.mark.parametrize("per_row", [True, False])
def test_ablation_removes_the_component_everywhere_during_generation(tiny_model, monkeypatch, per_row):
    gm = tiny_model
    monkeypatch.setattr(generation, "rows_one_at_a_time", lambda _: per_row)
    r = mean_residual_direction(gm, 1)
    with residual_observer(gm) as calls:
        result = generate(gm, TEXT, [DirectionSpec(r, mode="ablate")], max_new_tokens=N, stop_at_eos=False)
    assert result.steps == N
    steered, baseline = steered_forwards(calls, per_row)
    assert len(steered) == N  # the prompt, then one forward per new token but the last
    n_points = 2 * gm.n_layers + 1
    assert all(len(f) == n_points for f in steered)
    for forward in steered:
        for name, x in forward.items():
            assert float(relative_components(x, r).max()) < 1e-4, name
    # The baseline row keeps its component: the check above can fail.
    assert max(float(relative_components(x, r).max()) for f in baseline for x in f.values()) > 0.05
    assert result.steered_ids != result.baseline_ids or result.divergence is None


def test_ablation_changes_generation_and_the_model_is_untouched_after(tiny_model, monkeypatch):
    gm = tiny_model
    r = mean_residual_direction(gm, 2)
    ids = gm.prompt(TEXT).input_ids.unsqueeze(0)
    with torch.inference_mode():
        before = gm.model(input_ids=ids, use_cache=False).logits
        hf = gm.model.generate(ids, max_new_tokens=N, do_sample=False, eos_token_id=None, pad_token_id=0)
    hooks = hook_ids(gm.model)
    result = generate(gm, TEXT, [DirectionSpec(r, mode="ablate")], max_new_tokens=N, stop_at_eos=False)
    assert result.baseline_ids == hf[0, ids.shape[1]:].tolist()
    assert result.steered_ids != result.baseline_ids, "ablating the mean direction should change the tiny model"
    assert hook_ids(gm.model) == hooks
    with torch.inference_mode():
        after = gm.model(input_ids=ids, use_cache=False).logits
    assert torch.equal(before, after)


def test_ablation_fraction_scales_the_removed_component(tiny_model):
    gm = tiny_model
    r = mean_residual_direction(gm, 1)
    r_hat = r / r.norm()
    ids = gm.prompt(TEXT).input_ids
    with torch.inference_mode():
        embedded = gm.embed(ids.unsqueeze(0)).float()[0]  # the oracle: the embedding output itself
    for fraction in (0.0, 0.5, 1.0):
        with residual_observer(gm) as calls:
            generate(gm, TEXT, [DirectionSpec(r, mode="ablate", strength=fraction)], max_new_tokens=1)
        got = calls[1]["layers.0.resid_pre"][0]  # the steered row's prompt forward (rows run one at a time)
        expected = embedded - fraction * (embedded @ r_hat).unsqueeze(-1) * r_hat
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_several_ablated_directions_are_all_removed(tiny_model):
    gm = tiny_model
    r1, r2 = mean_residual_direction(gm, 1), mean_residual_direction(gm, 3, "def fibonacci(n): return n")
    specs = [DirectionSpec(r1, mode="ablate"), DirectionSpec(r2, mode="ablate"), DirectionSpec(r1, mode="ablate")]
    with residual_observer(gm) as calls:
        generate(gm, TEXT, specs, max_new_tokens=3, stop_at_eos=False)
    for forward in calls[1::2]:
        for x in forward.values():
            assert float(relative_components(x[0], r1).max()) < 1e-4
            assert float(relative_components(x[0], r2).max()) < 1e-4


def observe(store, key):
    def fn(x):
        store[key] = x.detach().float().clone()

    return fn


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_add_direction_adds_alpha_times_the_unit_vector_at_one_layer(tiny_model, positions):
    gm = tiny_model
    r = torch.randn(gm.d_model, generator=torch.Generator().manual_seed(0))
    alpha, layer = 7.5, 2
    p = gm.prompt(TEXT)
    specs = normalize_steering([DirectionSpec(r, mode="add", strength=alpha, layer=layer, positions=positions)],
                               model=gm)
    state = StepState(prompt_len=len(p), rows=slice(1, 2))
    plan = SteeringPlan(gm, specs, state)
    hp = f"model.layers.{layer}.output"
    before, after = {}, {}
    site = resolve_site(gm, hp)
    pairs = [(site, observe(before, hp)), *plan.pairs(), (site, observe(after, hp))]
    assert [s.hook_point for s, _ in plan.pairs()] == [hp]  # one layer only
    with torch.inference_mode(), hooked(*pairs):
        state.begin(0, (p.special | p.template).unsqueeze(0).expand(2, -1))
        gm.model(input_ids=p.input_ids.unsqueeze(0).expand(2, -1), use_cache=False)
    assert torch.equal(after[hp][0], before[hp][0])  # the baseline row is untouched
    steerable = ~(p.special | p.template)
    if positions == "generated":
        steerable = torch.zeros_like(steerable)
    expected = before[hp][1] + (alpha * steerable).unsqueeze(-1) * (r / r.norm())
    torch.testing.assert_close(after[hp][1], expected, rtol=1e-6, atol=1e-5)


def test_add_direction_changes_generation_and_takes_its_layer_from_a_direction_object(tiny_model):
    gm = tiny_model
    r = mean_residual_direction(gm, 1)
    found = SimpleNamespace(direction=r.numpy(), layer=1, name="mean")  # what a direction finder returns
    spec = normalize_steering(DirectionSpec(found, mode="add", strength=-50.0), model=gm)[0]
    assert spec.layer == 1 and spec.name == "mean" and spec.label == "mean (add)"
    assert abs(float(spec.direction.norm()) - 1) < 1e-6
    result = generate(gm, TEXT, [DirectionSpec(found, mode="add", strength=-50.0)], max_new_tokens=N,
                      stop_at_eos=False)
    assert result.steered_ids != result.baseline_ids
    zero = generate(gm, TEXT, [DirectionSpec(found, mode="add", strength=0.0)], max_new_tokens=N, stop_at_eos=False)
    assert zero.steered_ids == zero.baseline_ids


def test_directions_mix_with_features_in_scope_generate_and_next_token_probs(tiny_model, gemma_scope_folders):
    gm = tiny_model
    sae = load_sae_folder(gemma_scope_folders["resid_post"])
    scope = Scope(gm, sae)
    r = mean_residual_direction(gm, 1)
    mixed = [SteeringSpec(5, 2.0), {"direction": r, "mode": "ablate"}]
    ours = scope.generate(TEXT, mixed, max_new_tokens=4, stop_at_eos=False)
    assert [type(s).__name__ for s in ours.specs] == ["SteeringSpec", "DirectionSpec"]
    direct = generate(gm, TEXT, [ours.specs[0], DirectionSpec(r)], sae=sae, max_new_tokens=4, stop_at_eos=False)
    assert ours.steered_ids == direct.steered_ids
    only = Scope(gm).generate(TEXT, [DirectionSpec(r)], max_new_tokens=4, stop_at_eos=False)  # no SAE needed
    assert only.baseline_ids == ours.baseline_ids
    probs, _, _ = next_token_probs(gm, TEXT, [DirectionSpec(r)])
    assert not torch.equal(probs[0], probs[1])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (DirectionSpec(torch.ones(3)), "has 3 entries"),
        (DirectionSpec(torch.zeros(64)), "zero vector"),
        (DirectionSpec(torch.full((64,), float("nan"))), "NaN"),
        (DirectionSpec(torch.ones(2, 64)), "one vector"),
        (DirectionSpec("up"), "must be a \\[d_model\\] vector"),
        (DirectionSpec(torch.ones(64), layer=2), "every layer"),
        (DirectionSpec(torch.ones(64), strength=1.5), "in \\[0, 1\\]"),
        (DirectionSpec(torch.ones(64), mode="add"), "needs the layer"),
        (DirectionSpec(torch.ones(64), mode="add", layer=4), "out of range"),
        (DirectionSpec(torch.ones(64), mode="add", layer=True), "integer"),
        (DirectionSpec(torch.ones(64), mode="steer"), "Unknown direction mode"),
        (DirectionSpec(torch.ones(64), positions="late"), "Unknown positions"),
        (DirectionSpec(torch.ones(64), mode="add", layer=1, strength=float("inf")), "not finite"),
    ],
)
def test_bad_directions_are_refused_before_the_model_runs(tiny_model, spec, message):
    hooks = hook_ids(tiny_model.model)
    with pytest.raises(SteeringError, match=message):
        generate(tiny_model, TEXT, [spec], max_new_tokens=2)
    assert hook_ids(tiny_model.model) == hooks


def test_real_270m_ablation_is_clean_during_generation_and_undone_after(real_model):
    gm = real_model
    r = mean_residual_direction(gm, 6)
    ids = gm.prompt(TEXT).input_ids.unsqueeze(0)
    with torch.inference_mode():
        before = gm.model(input_ids=ids, use_cache=False).logits
    hooks = hook_ids(gm.model)
    with residual_observer(gm) as calls:
        result = generate(gm, TEXT, [DirectionSpec(r, mode="ablate")], max_new_tokens=4, stop_at_eos=False)
    steered, baseline = steered_forwards(calls, generation.rows_one_at_a_time(gm))
    assert len(steered) == 4
    worst = max(float(relative_components(x, r).max()) for f in steered for x in f.values())
    assert worst < 1e-4
    assert max(float(relative_components(x, r).max()) for f in baseline for x in f.values()) > 0.05
    assert hook_ids(gm.model) == hooks
    with torch.inference_mode():
        after = gm.model(input_ids=ids, use_cache=False).logits
    assert torch.equal(before, after)
    assert result.stopped == "length"
