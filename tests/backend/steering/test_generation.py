"""Baseline + steered generation as a batch of two: equal to plain generation, streamed, cancellable, clean."""

from __future__ import annotations

import dataclasses
import itertools
import threading

import pytest
import torch

from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.steering.generation import generate, next_token_distribution, next_token_probs
from gemscope_widgets.backend.steering.spec import SteeringSpec
from gemscope_widgets.errors import FeatureIndexError, PromptError, SteeringError
from tests.helpers import hook_ids

TEXT = "Paris is the capital of France. The quick brown fox"
N = 12


@pytest.fixture(scope="module")
def sae(gemma_scope_folders):
    return load_sae_folder(gemma_scope_folders["resid_post"])


def plain_logits(gm, text=TEXT):
    with torch.inference_mode():
        return gm.model(input_ids=gm.prompt(text).input_ids.unsqueeze(0), use_cache=False).logits


def test_baseline_row_equals_plain_greedy_generation(tiny_model, sae):
    ids = tiny_model.prompt(TEXT).input_ids
    with torch.inference_mode():
        hf = tiny_model.model.generate(
            ids.unsqueeze(0), max_new_tokens=N, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(ids):].tolist()
    result = generate(tiny_model, TEXT, {7: 40.0}, sae=sae, unit="raw", max_new_tokens=N, stop_at_eos=False)
    assert result.baseline_ids == hf
    assert result.steered_ids != hf, "a strength of 40 should change the tiny model's continuation"
    d = result.divergence
    assert d is not None and result.baseline_ids[:d] == result.steered_ids[:d]
    assert result.baseline_ids[d] != result.steered_ids[d]
    assert result.prompt_tokens == tiny_model.prompt(TEXT).tokens
    assert result.stopped == "length" and result.steps == N
    assert result.baseline_text == tiny_model.tokenizer.decode(hf, skip_special_tokens=True)


@pytest.mark.parametrize("steering", [None, {}, {7: 0.0}, [SteeringSpec(7, 0.0), SteeringSpec(9, 0.0)]])
def test_strength_zero_is_the_baseline(tiny_model, sae, steering):
    result = generate(tiny_model, TEXT, steering, sae=sae, unit="raw", max_new_tokens=N, stop_at_eos=False)
    assert result.steered_ids == result.baseline_ids and len(result.baseline_ids) == N
    assert result.divergence is None


def test_sampling_uses_the_same_draws_for_both_rows(tiny_model, sae):
    kw = dict(sae=sae, unit="raw", max_new_tokens=N, temperature=1.0, top_p=0.95, stop_at_eos=False)
    a = generate(tiny_model, TEXT, {7: 0.0}, seed=1, **kw)
    assert a.steered_ids == a.baseline_ids  # identical distributions + shared draws = identical samples
    again = generate(tiny_model, TEXT, {7: 0.0}, seed=1, **kw)
    assert again.baseline_ids == a.baseline_ids
    other = generate(tiny_model, TEXT, {7: 0.0}, seed=2, **kw)
    assert other.baseline_ids != a.baseline_ids
    greedy = generate(tiny_model, TEXT, None, sae=sae, unit="raw", max_new_tokens=N, stop_at_eos=False)
    assert a.baseline_ids != greedy.baseline_ids, "temperature 1 should not reproduce greedy decoding"
    # Steering changes the steered row only; the baseline of a seeded run does not depend on the steering.
    steered = generate(tiny_model, TEXT, {7: 40.0}, seed=1, **kw)
    assert steered.baseline_ids == a.baseline_ids and steered.steered_ids != a.baseline_ids


def test_frequency_penalty(tiny_model, sae):
    plain = generate(tiny_model, TEXT, None, sae=sae, unit="raw", max_new_tokens=N, stop_at_eos=False)
    assert len(set(plain.baseline_ids)) < N, "the tiny model repeats itself; the penalty test needs that"
    penalised = generate(tiny_model, TEXT, None, sae=sae, unit="raw", max_new_tokens=N, stop_at_eos=False,
                         frequency_penalty=1e3)
    assert len(set(penalised.baseline_ids)) == N


def test_rows_stop_independently_at_stop_tokens(tiny_model, sae):
    free = generate(tiny_model, TEXT, {7: 40.0}, sae=sae, unit="raw", max_new_tokens=N, stop_at_eos=False)
    d = free.divergence
    stop = free.baseline_ids[d]
    gm = dataclasses.replace(tiny_model, stop_token_ids=(stop,))
    result = generate(gm, TEXT, {7: 40.0}, sae=sae, unit="raw", max_new_tokens=N)
    assert result.baseline_ids == free.baseline_ids[:d]  # stopped; the stop token itself is not kept
    assert len(result.steered_ids) > d and stop not in result.steered_ids[: len(result.steered_ids)]
    both = generate(gm, TEXT, None, sae=sae, unit="raw", max_new_tokens=N)
    assert both.stopped == "eos" and both.baseline_ids == both.steered_ids == free.baseline_ids[:d]
    # min_new_tokens ignores stop tokens until then.
    forced = generate(gm, TEXT, None, sae=sae, unit="raw", max_new_tokens=N, min_new_tokens=N)
    assert forced.baseline_ids == free.baseline_ids[:N] or len(forced.baseline_ids) == N


def test_streaming_order_and_callbacks(tiny_model, sae):
    seen = []
    result = generate(
        tiny_model, TEXT, {7: 40.0}, sae=sae, unit="raw", max_new_tokens=N, stop_at_eos=False,
        on_token=lambda step, b, s: seen.append((step, b, s)),
    )
    assert [s for s, _, _ in seen] == list(range(N))
    assert [b for _, b, _ in seen] == result.baseline_ids
    assert [s for _, _, s in seen] == result.steered_ids


def test_cancel_mid_generation_leaves_the_model_clean(tiny_model, sae):
    before_hooks = hook_ids(tiny_model.model)
    before = plain_logits(tiny_model)
    cancel = threading.Event()

    def on_token(step, _b, _s):
        if step == 3:
            cancel.set()

    result = generate(
        tiny_model, TEXT, [SteeringSpec(7, 3.0, mode="clamp")], sae=sae, unit="raw", max_new_tokens=50,
        stop_at_eos=False, on_token=on_token, cancel=cancel, error="replace",
    )
    assert result.stopped == "cancelled" and len(result.baseline_ids) == 4
    assert hook_ids(tiny_model.model) == before_hooks
    assert torch.equal(plain_logits(tiny_model), before)


def test_exception_in_callback_removes_hooks_and_releases_the_model(tiny_model, sae):
    before_hooks = hook_ids(tiny_model.model)
    before = plain_logits(tiny_model)

    def boom(step, _b, _s):
        if step == 2:
            raise RuntimeError("widget went away")

    with pytest.raises(RuntimeError, match="widget went away"):
        generate(tiny_model, TEXT, {7: 40.0}, sae=sae, unit="raw", max_new_tokens=N, on_token=boom)
    assert hook_ids(tiny_model.model) == before_hooks
    assert torch.equal(plain_logits(tiny_model), before)
    again = generate(tiny_model, TEXT, {7: 1.0}, sae=sae, unit="raw", max_new_tokens=2, stop_at_eos=False)
    assert len(again.steered_ids) == 2


def test_cancel_while_waiting_for_another_run(tiny_model, sae):
    from gemscope_widgets.backend.steering.generation import model_lock

    cancel = threading.Event()
    cancel.set()
    with model_lock(tiny_model):
        result = generate(tiny_model, TEXT, {7: 1.0}, sae=sae, unit="raw", cancel=cancel)
    assert result.stopped == "cancelled" and result.steps == 0


def test_chat_prompt(tiny_model, sae):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    result = generate(tiny_model, messages, {7: 0.0}, sae=sae, unit="raw", max_new_tokens=4, stop_at_eos=False)
    assert result.prompt_tokens == tiny_model.prompt(messages).tokens
    assert "".join(result.prompt_tokens).endswith("<start_of_turn>model\n")
    assert result.baseline_ids == result.steered_ids and len(result.baseline_ids) == 4


def test_token_id_prompt(tiny_model, sae):
    ids = tiny_model.prompt(TEXT).input_ids
    by_ids = generate(tiny_model, ids, {7: 40.0}, sae=sae, unit="raw", max_new_tokens=6, stop_at_eos=False)
    by_text = generate(tiny_model, TEXT, {7: 40.0}, sae=sae, unit="raw", max_new_tokens=6, stop_at_eos=False)
    assert by_ids.steered_ids == by_text.steered_ids


def test_next_token_distribution(tiny_model, sae):
    ids = tiny_model.prompt(TEXT).input_ids
    probs, _, position = next_token_probs(tiny_model, TEXT, {7: 0.0}, sae=sae)
    assert position == len(ids) - 1
    assert torch.equal(probs[0], probs[1])
    torch.testing.assert_close(probs[0], torch.softmax(plain_logits(tiny_model)[0, -1], -1))
    view = next_token_distribution(tiny_model, TEXT, {7: 40.0}, sae=sae, unit="raw", k=5, continuation=[5, 6],
                                   position=-2)
    assert view.position == len(ids) and view.context_token == tiny_model.tokenizer.convert_ids_to_tokens(5)
    assert 5 <= len(view.tokens) <= 10 and view.baseline != view.steered
    top_base = max(range(len(view.tokens)), key=view.baseline.__getitem__)
    full, _, _ = next_token_probs(tiny_model, TEXT, {7: 40.0}, sae=sae, unit="raw", continuation=[5, 6], position=-2)
    assert view.token_ids[top_base] == int(full[0].argmax())
    assert max(view.steered) == pytest.approx(float(full[1].max()))


def test_each_steps_next_token_probabilities_from_python(tiny_model, sae):
    """``generate(..., next_token_probs=k)``: each step's top-k of each row equals next_token_probs() after that
    row's own continuation so far (the widget's probabilities, in the same units)."""
    steering = {7: 40.0}
    result = generate(tiny_model, TEXT, steering, sae=sae, unit="raw", max_new_tokens=6, stop_at_eos=False,
                      next_token_probs=4)
    assert [s.step for s in result.next_token_probs] == list(range(6))
    assert result.divergence is not None  # the rows' own continuations differ, so the check covers both
    for s in result.next_token_probs:
        for row, ids, texts, shown in ((0, result.baseline_ids, result.baseline_tokens, s.baseline),
                                       (1, result.steered_ids, result.steered_tokens, s.steered)):
            probs, _, _ = next_token_probs(tiny_model, TEXT, steering, sae=sae, unit="raw",
                                           continuation=ids[: s.step])
            top = probs[row].topk(4)
            assert [t for t, _, _ in shown] == top.indices.tolist()
            torch.testing.assert_close(torch.tensor([p for _, _, p in shown]), top.values, rtol=1e-4, atol=1e-6)
            assert shown[0][0] == ids[s.step]  # greedy: the chosen token is the most likely
            assert shown[0][1] == texts[s.step]  # tokens as the result shows them
    assert generate(tiny_model, TEXT, steering, sae=sae, unit="raw", max_new_tokens=2).next_token_probs == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"next_token_probs": -1}, SteeringError, "next_token_probs"),
        ({"steering": {999: 1.0}}, FeatureIndexError, "Feature 999 does not exist"),
        ({"steering": {3: float("nan")}}, SteeringError, "not finite"),
        ({"steering": [SteeringSpec(3, 1.0, mode="amplify")]}, SteeringError, "Unknown steering mode"),
        ({"steering": {3: 1.0}, "error": "drop"}, SteeringError, "error='drop'"),
        ({"max_new_tokens": 0}, SteeringError, "max_new_tokens"),
        ({"temperature": -1.0}, SteeringError, "temperature"),
        ({"top_p": 0.0}, SteeringError, "top_p"),
        ({"frequency_penalty": float("inf")}, SteeringError, "frequency_penalty"),
        ({"seed": "x"}, SteeringError, "seed"),
        ({"prompt": ""}, PromptError, "empty"),
    ],
)
def test_bad_inputs_fail_before_the_model_runs(tiny_model, sae, kwargs, error, match):
    calls = []
    handle = tiny_model.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        prompt = kwargs.pop("prompt", TEXT)
        with pytest.raises(error, match=match):
            generate(tiny_model, prompt, sae=sae, unit="raw", **kwargs)
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.real_model
def test_real_model_token_direction_raises_its_probability(real_model, tmp_path):
    """A feature whose decoder row is a token's unembedding direction makes that token likelier, monotonically."""
    from gemscope_widgets.backend.gemma.capture import capture
    from tests.fixtures.gemma_scope_files import write_gemma_scope_sae

    gm = real_model
    layer = 14
    folder = write_gemma_scope_sae(
        tmp_path / "token_sae", kind="sae", site="resid_post", layer=layer, d_in=gm.d_model, width=16,
        model_name=gm.name,
    )
    sae = load_sae_folder(folder)
    token = gm.tokenizer.encode(" banana", add_special_tokens=False)[0]
    direction = gm.lm_head.weight[token].detach().float()
    sae.w_dec[0] = direction / direction.norm()
    prompt = "My favourite fruit is the"
    ids = gm.prompt(prompt).input_ids
    # The unit: the median norm of the residual stream at that layer over the prompt (BOS excluded), |w_dec| = 1.
    hp = f"model.layers.{layer}.output"
    scale, source = float(capture(gm, ids, [hp])[hp][0, 1:].float().norm(dim=-1).median()), "site norm"
    multiples = [0.0, 0.005, 0.01, 0.02, 0.04]  # the site-norm unit is large: 0.08× saturates p at ~1
    probs = []
    for m in multiples:
        p, _, _ = next_token_probs(gm, prompt, {0: m * scale}, sae=sae, unit="raw")
        probs.append(float(p[1, token]))
        assert float(p[0, token]) == pytest.approx(probs[0], rel=1e-5)  # the baseline row never moves
    print(f"p(' banana') at {multiples}× {source} scale {scale:.0f}: {probs}")
    assert all(b > a for a, b in itertools.pairwise(probs)), probs
    assert probs[-1] > 10 * probs[0]
    result = generate(gm, prompt, {0: 0.04 * scale}, sae=sae, unit="raw", max_new_tokens=8)
    assert token in result.steered_ids and result.divergence is not None


@pytest.mark.parametrize("mode", ["add", "clamp", "ablate"])
def test_row_by_row_and_batched_decoding_agree(tiny_model, gemma_scope_folders, monkeypatch, mode):
    """CPU decodes the two rows one at a time, GPU as a batch of two: both give the same tokens."""
    import gemscope_widgets.backend.steering.generation as generation
    from gemscope_widgets.backend.dictionaries.loading import load_sae
    from gemscope_widgets.backend.steering.spec import SteeringSpec

    sae = load_sae(gemma_scope_folders["transcoder"])
    spec = [SteeringSpec(3, 4.0, mode=mode)]
    prompt = "Paris is the capital of France. The quick brown fox"
    per_row = generation.generate(tiny_model, prompt, sae=sae, unit="raw", steering=spec, max_new_tokens=8,
                                  stop_at_eos=False)
    monkeypatch.setattr(generation, "rows_one_at_a_time", lambda gm: False)
    batched = generation.generate(tiny_model, prompt, sae=sae, unit="raw", steering=spec, max_new_tokens=8,
                                  stop_at_eos=False)
    assert per_row.baseline_ids == batched.baseline_ids
    assert per_row.steered_ids == batched.steered_ids
    if mode == "add":
        assert per_row.steered_ids != per_row.baseline_ids, "the steering should change the text here"


def test_an_sae_on_another_kind_of_device_is_refused_before_any_hook(tiny_model, gemma_scope_folders):
    # "meta" stands in for an accelerator here: a CPU model with an SAE elsewhere would copy activations at
    # every decoding step, so clamping through it is refused up front and the model is left as it was.
    from gemscope_widgets.errors import DevicePlacementError

    elsewhere = load_sae_folder(gemma_scope_folders["resid_post"]).to("meta")
    hooks_before = hook_ids(tiny_model.model)
    with pytest.raises(DevicePlacementError, match=r"is on meta but the model runs on cpu.*Scope\(model, sae\)"):
        generate(tiny_model, TEXT, [SteeringSpec(7, 3.0, mode="clamp")], sae=elsewhere, unit="raw", max_new_tokens=2)
    assert hook_ids(tiny_model.model) == hooks_before
    # Adding a decoder direction needs the SAE only once, to read the direction: that still works.
    out = generate(tiny_model, TEXT, [SteeringSpec(7, 3.0, mode="add")],
                   sae=load_sae_folder(gemma_scope_folders["resid_post"]), unit="raw", max_new_tokens=2)
    assert out.steered_ids
