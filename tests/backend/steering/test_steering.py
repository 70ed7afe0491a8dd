"""Steering hooks do exactly the documented arithmetic at every Gemma Scope 2 site; bad requests fail early."""

from __future__ import annotations

import math

import pytest
import torch

from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.gemma.hooks import hooked
from gemscope_widgets.backend.gemma.sites import resolve_site
from gemscope_widgets.backend.steering.plan import SteeringPlan, StepState
from gemscope_widgets.backend.steering.spec import SteeringSpec, normalize_steering
from gemscope_widgets.backend.steering.units import typical_scales
from gemscope_widgets.errors import FeatureIndexError, SteeringError
from tests.helpers import active_feature, hook_ids

TEXT = "Paris is the capital of France. The quick brown fox"
SITES = ("resid_post", "mlp_out", "attn_out", "transcoder", "transcoder_affine", "clt")


@pytest.fixture(scope="module")
def saes(gemma_scope_folders):
    return {kind: load_sae_folder(gemma_scope_folders[kind]) for kind in (*SITES, "crosscoder")}


def _observe(fn_store, key):
    def fn(x):
        fn_store[key] = x.detach().clone()

    return fn


def run_steered(gm, sae, specs, *, error="keep", steer_special=False, prompt=TEXT):
    """One forward of a batch of two (row 1 steered); returns activations before/after the steering hooks."""
    p = gm.prompt(prompt)
    specs = normalize_steering(specs, sae)
    state = StepState(prompt_len=len(p), rows=slice(1, 2))
    plan = SteeringPlan(gm, specs, state, error=error)
    writes = {hp for s in specs for hp in s.sae.write_directions(s.feature)}
    before, after, reads = {}, {}, {}
    pairs = [(resolve_site(gm, hp), _observe(before, hp)) for hp in writes]
    pairs += [(resolve_site(gm, hp), _observe(reads, hp)) for hp in sae.read_hook_points]
    pairs += plan.pairs()
    pairs += [(resolve_site(gm, hp), _observe(after, hp)) for hp in writes]
    ids = p.input_ids.unsqueeze(0).expand(2, -1)
    with torch.inference_mode(), hooked(*pairs):
        special = None if steer_special else (p.special | p.template).unsqueeze(0).expand(2, -1)
        state.begin(0, special)
        gm.model(input_ids=ids, use_cache=False)
    return p, before, after, reads


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("mode", ["add", "clamp", "ablate"])
def test_hook_arithmetic_matches_formula(tiny_model, saes, site, mode):
    sae = saes[site]
    f = active_feature(sae, tiny_model)
    strength = 3.5
    p, before, after, reads = run_steered(tiny_model, sae, [SteeringSpec(f, strength, mode=mode)])
    steerable = ~(p.special | p.template)
    directions = sae.write_directions(f)
    assert len(directions) == (4 - sae.config.layers_in[sae.feature_slot(f)[0]] if site == "clt" else 1)
    for hp, w in directions.items():
        x0, x1 = before[hp][1].float(), after[hp][1].float()
        # Row 0 (baseline) is untouched by the hook.
        assert torch.equal(after[hp][0], before[hp][0])
        if mode == "add":
            coef = torch.full((len(p),), strength)
        else:
            target = strength if mode == "clamp" else 0.0
            a_f = sae.feature_activation(f, {h: reads[h][1] for h in sae.read_hook_points})
            coef = target - a_f
            if mode == "ablate":
                assert (a_f[steerable] > 0).any()
        expected = x0 + (coef * steerable).unsqueeze(-1) * w.float()
        torch.testing.assert_close(x1, expected, rtol=1e-5, atol=1e-4)
        # BOS is a special token: never steered by default.
        assert torch.equal(after[hp][1][0], before[hp][1][0])
        assert not torch.equal(x1[steerable], x0[steerable])


def test_clt_writes_every_later_layer(tiny_model, saes):
    sae = saes["clt"]
    f = sae.slot_widths[0] + 1  # a layer-1 feature writes to layers 1, 2 and 3
    assert sae.feature_layer(f) == 1
    _, before, after, _ = run_steered(tiny_model, sae, {f: 2.0})
    assert sorted(after) == [f"model.layers.{j}.post_feedforward_layernorm.output" for j in (1, 2, 3)]
    for hp in after:
        assert not torch.equal(after[hp][1], before[hp][1])


@pytest.mark.parametrize("site", ["resid_post", "transcoder_affine"])
def test_error_replace_splices_the_reconstruction(tiny_model, saes, site):
    sae = saes[site]
    f = active_feature(sae, tiny_model)
    p, before, after, reads = run_steered(tiny_model, sae, [SteeringSpec(f, 1.5, mode="clamp")], error="replace")
    hp = sae.config.hook_out
    x_in = reads[sae.config.hook_in][1].float()
    recon = sae.decode(sae.encode(x_in), x_in)
    a_f = sae.feature_activation(f, x_in)
    steerable = ~(p.special | p.template)
    delta = ((1.5 - a_f) * steerable).unsqueeze(-1) * sae.write_directions(f)[hp]
    expected = torch.where(steerable.unsqueeze(-1), recon + delta, before[hp][1].float())
    torch.testing.assert_close(after[hp][1].float(), expected, rtol=1e-5, atol=1e-4)
    # The reconstruction error really is gone: it differs from keeping it.
    _, _, kept, _ = run_steered(tiny_model, sae, [SteeringSpec(f, 1.5, mode="clamp")])
    assert not torch.allclose(kept[hp][1], after[hp][1])


def test_special_tokens_and_positions(tiny_model, saes):
    sae = saes["resid_post"]
    hp = sae.config.hook_out
    _, before, after, _ = run_steered(tiny_model, sae, {5: 2.0}, steer_special=True)
    torch.testing.assert_close(after[hp][1][0], before[hp][1][0] + 2.0 * sae.w_dec[5])
    # "generated" never touches the prompt; "prompt" does.
    _, before, after, _ = run_steered(tiny_model, sae, [SteeringSpec(5, 2.0, positions="generated")])
    assert torch.equal(after[hp], before[hp])
    _, before, after, _ = run_steered(tiny_model, sae, [SteeringSpec(5, 2.0, positions="prompt")])
    assert not torch.equal(after[hp][1], before[hp][1])


def test_chat_template_tokens_not_steered(tiny_model, saes):
    sae = saes["resid_post"]
    hp = sae.config.hook_out
    messages = [{"role": "user", "content": "Paris is the capital of France."}]
    p, before, after, _ = run_steered(tiny_model, sae, {5: 2.0}, prompt=messages)
    template = p.special | p.template
    assert template.sum() >= 4
    assert torch.equal(after[hp][1][template], before[hp][1][template])
    assert not torch.equal(after[hp][1][~template], before[hp][1][~template])


def test_hooks_ignore_other_threads(tiny_model, saes):
    """A forward run elsewhere while a steered run holds its hooks is not steered."""
    import threading

    sae = saes["resid_post"]
    p = tiny_model.prompt(TEXT)
    ids = p.input_ids.unsqueeze(0).expand(2, -1)
    with torch.inference_mode():
        plain = tiny_model.model(input_ids=ids, use_cache=False).logits
    state = StepState(prompt_len=len(p), rows=slice(1, 2))
    plan = SteeringPlan(tiny_model, normalize_steering({5: 50.0}, sae), state)
    seen = {}
    with torch.inference_mode(), hooked(*plan.pairs()):
        state.begin(0, None)
        t = threading.Thread(target=lambda: seen.update(x=tiny_model.model(input_ids=ids, use_cache=False).logits))
        t.start()
        t.join()
        mine = tiny_model.model(input_ids=ids, use_cache=False).logits
    assert torch.equal(seen["x"], plain)
    assert not torch.equal(mine[1], plain[1])


@pytest.mark.parametrize(
    ("steering", "error", "match"),
    [
        ({128: 1.0}, FeatureIndexError, r"Feature 128 does not exist.*0\.\.127"),
        ({-1: 1.0}, FeatureIndexError, "does not exist"),
        ({1.5: 1.0}, FeatureIndexError, "not an integer"),
        ({3: math.nan}, SteeringError, "not finite"),
        ({3: math.inf}, SteeringError, "not finite"),
        ({3: "lots"}, SteeringError, "not a number"),
        ([SteeringSpec(3, 1.0, mode="boost")], SteeringError, "Unknown steering mode 'boost'"),
        ([SteeringSpec(3, 1.0, positions="middle")], SteeringError, "Unknown positions 'middle'"),
        ([{"feature": 3, "strenght": 1.0}], SteeringError, "Bad steering entry"),
        ("feature 3", SteeringError, "steering must be"),
    ],
)
def test_bad_steering_is_refused(saes, steering, error, match):
    with pytest.raises(error, match=match):
        normalize_steering(steering, saes["resid_post"])


def test_steering_needs_an_sae():
    with pytest.raises(SteeringError, match="needs an SAE"):
        normalize_steering({3: 1.0}, None)


def test_crosscoder_clamp_refused_add_allowed(tiny_model, saes):
    sae = saes["crosscoder"]
    with pytest.raises(SteeringError, match="crosscoder"):
        normalize_steering([SteeringSpec(3, 1.0, mode="clamp")], sae)
    _, before, after, _ = run_steered(tiny_model, sae, {3: 2.0})
    assert len(after) == 4
    for hp, w in sae.write_directions(3).items():
        torch.testing.assert_close(after[hp][1][1:], before[hp][1][1:] + 2.0 * w)


def test_typical_scales(tiny_model, saes):
    from gemscope_widgets.backend.gemma.capture import capture
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats

    sae = saes["resid_post"]
    ids = tiny_model.prompt(TEXT).input_ids
    f = active_feature(sae, tiny_model)
    max_act = torch.zeros(sae.width)
    max_act[f] = 123.0
    stats = FeatureStats(sae_name=sae.config.name, width=sae.width, source="test", max_act=max_act)
    assert typical_scales(tiny_model, sae, [f], ids, stats=stats)[f] == (123.0, "stats")
    # Without statistics: the feature's maximum over the prompt (BOS excluded).
    acts = capture(tiny_model, ids, [sae.config.hook_in])[sae.config.hook_in][0, 1:]
    value, source = typical_scales(tiny_model, sae, [f], ids)[f]
    assert source == "prompt"
    assert value == pytest.approx(float(sae.feature_activation(f, acts).max()), rel=1e-6)
    # A feature silent on the prompt falls back to the median site norm over |w_dec[f]|.
    silent = [g for g in range(sae.width) if float(sae.feature_activation(g, acts).max()) == 0]
    assert silent, "every feature fires; cannot test the fallback"
    g = silent[0]
    value, source = typical_scales(tiny_model, sae, [g], ids, stats=stats)[g]
    assert source == "site norm"
    assert value == pytest.approx(float(acts.norm(dim=-1).median()) / float(sae.w_dec[g].norm()), rel=1e-5)


def test_plan_leaves_no_hooks(tiny_model, saes):
    before = hook_ids(tiny_model.model)
    run_steered(tiny_model, saes["clt"], [SteeringSpec(5, 1.0, mode="clamp")], error="replace")
    assert hook_ids(tiny_model.model) == before
