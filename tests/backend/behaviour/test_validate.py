"""The causal check: intervened generations equal the steering backend's, controls matched in density, bad scorers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemscope_widgets.backend.behaviour.validate import DENSITY_NEIGHBOURS, matched_features, validate
from gemscope_widgets.backend.steering.generation import generate
from gemscope_widgets.backend.steering.spec import DirectionSpec, SteeringSpec
from gemscope_widgets.errors import CausalCheckError
from gemscope_widgets.testing.calibrated import calibrated_sae

PROMPTS = ["The cat sleeps in the", "import numpy as"]


@pytest.fixture(scope="module")
def tiny_sae(tiny_model, tmp_path_factory):
    text = " ".join(PROMPTS) * 8
    return calibrated_sae(tiny_model, 2, width=128, l0=16, folder=tmp_path_factory.mktemp("validate-sae"), text=text,
                          window=16)


def test_matched_features_are_density_neighbours_seeded():
    density = torch.from_numpy(np.random.default_rng(0).random(500)).float()
    chosen = [3, 77, 140, 499]
    control = matched_features(chosen, density, seed=4)
    assert control == matched_features(chosen, density, seed=4)
    assert not set(control) & set(chosen) and len(set(control)) == len(chosen)
    rank = np.argsort(np.argsort(density.numpy(), kind="stable"), kind="stable")
    for f, g in zip(chosen, control):
        # Drawn among the DENSITY_NEIGHBOURS nearest in rank (chosen ones skipped, so a little further at most).
        assert abs(int(rank[f]) - int(rank[g])) <= DENSITY_NEIGHBOURS // 2 + len(chosen) + len(control)


def test_next_token_scorer_reads_the_model(tiny_model, tiny_sae):
    token = 5

    def prob_of_token(probs):
        return probs[token]

    check = validate(tiny_model, PROMPTS, [1, 2], sae=tiny_sae, mode="add", strength=30.0, scorer=prob_of_token,
                     on="next_token", densities=torch.rand(128, generator=torch.Generator().manual_seed(0)),
                     chat=False, progress=False)
    for i, p in enumerate(PROMPTS):
        with torch.no_grad():
            logits = tiny_model.model(input_ids=tiny_model.prompt(p).input_ids[None]).logits[0, -1]
        assert check.effect.baseline[i] == pytest.approx(float(torch.softmax(logits, -1)[token]), rel=1e-4)
    diffs = check.effect.intervened - check.effect.baseline
    assert check.effect.change == pytest.approx(diffs.mean())
    assert check.effect.low <= check.effect.change <= check.effect.high
    assert not np.allclose(check.effect.intervened, check.effect.baseline)  # adding 30 units moves the distribution
    assert check.control is not None and check.control_features and "random, matched density" in check.summary()


def test_bad_input(tiny_model, tiny_sae):
    def broken(text):
        raise KeyError("oops")

    with pytest.raises(CausalCheckError, match="scorer failed on prompt 0: KeyError"):
        validate(tiny_model, PROMPTS, [1], sae=tiny_sae, scorer=broken, control=False, chat=False,
                 max_new_tokens=2, progress=False)
    with pytest.raises(CausalCheckError, match="must return a number"):
        validate(tiny_model, PROMPTS, [1], sae=tiny_sae, scorer=lambda t: "yes", control=False, chat=False,
                 max_new_tokens=2, progress=False)
    with pytest.raises(CausalCheckError, match="Nothing to intervene on"):
        validate(tiny_model, PROMPTS, [], sae=tiny_sae, progress=False)
    with pytest.raises(CausalCheckError, match="densities"):
        validate(tiny_model, PROMPTS, [1], sae=tiny_sae, chat=False, progress=False)
    with pytest.raises(CausalCheckError, match="on='text'"):
        validate(tiny_model, PROMPTS, [1], sae=tiny_sae, on="next_token", control=False, progress=False)


@pytest.fixture(scope="module")
def demo_parts():
    """The embedded 270M and the demo SAE, without waiting for its statistics."""
    from gemscope_widgets.backend.default import load_default

    return load_default(device="cpu", dtype="float32", progress=False, stats=False)


@pytest.mark.real_model
def test_intervened_generations_equal_scope_generate(demo_parts):
    from gemscope_widgets.scope import Scope

    gm, sae = demo_parts
    scope = Scope(gm, sae)
    # Any [width] ranking serves for the equality of generations (density matching is tested above); the demo
    # SAE's thresholds stand in for densities so the test needs no corpus scan.
    density = sae.threshold.detach().float().cpu()
    features = [int(f) for f in torch.argsort(density)[10:12]]
    prompts = ["The capital of France is", "My favourite food is"]
    check = scope.validate(prompts, features, mode="add", strength=40.0, scorer=len, chat=False, max_new_tokens=5,
                           densities=density, progress=False)
    runs = (("chosen", check.effect, features), ("control", check.control, check.control_features))
    for label, effect, chosen in runs:
        specs = [SteeringSpec(f, 40.0, mode="add") for f in chosen]
        for i, p in enumerate(prompts):
            direct = scope.generate(p, specs, unit="raw", max_new_tokens=5)
            assert effect.intervened_texts[i] == direct.steered_text, label
            assert effect.baseline_texts[i] == direct.baseline_text, label
            assert effect.intervened[i] == len(direct.steered_text)
    assert check.effect.intervened_texts != check.effect.baseline_texts  # the push is strong enough to show
    ranks = torch.argsort(torch.argsort(density))
    for f, g in zip(features, check.control_features):
        assert abs(int(ranks[f]) - int(ranks[g])) <= DENSITY_NEIGHBOURS


def test_direction_with_random_direction_control_equals_backend_generate(tiny_model):
    direction = torch.randn(tiny_model.d_model, generator=torch.Generator().manual_seed(1))
    spec = DirectionSpec(direction, mode="add", strength=50.0, layer=1)
    check = validate(tiny_model, PROMPTS, spec, scorer=len, chat=False, max_new_tokens=3, progress=False)
    assert check.features == [] and check.control is not None
    assert check.effect.intervened_texts != check.effect.baseline_texts  # 50 units along a direction show
    (spec,) = check.control.specs
    assert isinstance(spec, DirectionSpec) and spec.strength == 50.0 and spec.layer == 1
    assert abs(float(torch.nn.functional.cosine_similarity(spec.direction, direction, dim=0))) < 0.9
    for effect, used in ((check.effect, check.effect.specs), (check.control, check.control.specs)):
        for i, p in enumerate(PROMPTS):
            direct = generate(tiny_model, p, used, unit="raw", max_new_tokens=3)
            assert effect.intervened_texts[i] == direct.steered_text
            assert effect.baseline_texts[i] == direct.baseline_text
