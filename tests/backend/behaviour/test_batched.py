"""Padded batches give what one prompt at a time gives: SAE inputs, probe activations, greedy answers."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.behaviour.batched import greedy_answers, sae_inputs_at
from gemscope_widgets.backend.behaviour.probe import ENCODE_PROMPTS, probe_activations
from gemscope_widgets.testing.calibrated import calibrated_sae

WORDS = ["cat", "river", "seven", "blue", "import", "quietly", "mountain", "the", "of", "glass"]
# Lengths from 2 to 11 words: several length groups, rows padded within a batch, more prompts than ENCODE_PROMPTS.
TEXTS = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(2 + i % 10)) for i in range(ENCODE_PROMPTS + 6)]


@pytest.fixture(scope="module")
def sae(tiny_model, tmp_path_factory):
    return calibrated_sae(tiny_model, 2, width=128, l0=16, folder=tmp_path_factory.mktemp("batched-sae"),
                          text=" ".join(TEXTS), window=32)


def one_at_a_time(gm, text):
    """Oracle: the layer-2 output of one unpadded full forward (Hugging Face hidden states), every token."""
    with torch.no_grad():
        out = gm.model(input_ids=gm.prompt(text).input_ids[None], output_hidden_states=True)
    return out.hidden_states[3][0]


def test_batched_sae_inputs_equal_one_prompt_at_a_time(tiny_model, sae):
    prompts = [tiny_model.prompt(t) for t in TEXTS]
    positions = [torch.arange(len(p.input_ids)) for p in prompts]
    batched = sae_inputs_at(tiny_model, sae, prompts, positions, batch_size=16)
    assert len({len(p.input_ids) for p in prompts}) > 5
    for text, x in zip(TEXTS, batched):
        torch.testing.assert_close(x, one_at_a_time(tiny_model, text), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["mean", "last_prompt_token"])
def test_probe_activations_equal_per_prompt_encoding(tiny_model, sae, position):
    latents, inputs = probe_activations(tiny_model, sae, TEXTS, position=position, chat=False)
    for i, text in enumerate(TEXTS):
        prompt = tiny_model.prompt(text)
        x = one_at_a_time(tiny_model, text)
        x = x[~prompt.masked] if position == "mean" else x[-1:]  # "mean": the tokens that are not special
        assert len(x) >= 1
        torch.testing.assert_close(inputs[i], x.mean(0), atol=1e-5, rtol=1e-5)
        # A JumpReLU jumps at its threshold: a pre-activation within rounding of it may land on either side, which
        # moves the mean by that token's pre-activation / tokens. Anything else must agree to 1e-5.
        pre = x @ sae.w_enc.float() + sae.b_enc.float()
        at_threshold = ((pre - sae.threshold.float()).abs() < 1e-4) * pre.abs()
        allowed = 1e-5 + 1e-5 * latents[i].abs() + at_threshold.sum(0) / len(x)
        assert ((latents[i] - sae.encode(x).mean(0)).abs() <= allowed).all(), i
    assert (latents > 0).any(dim=1).all()  # every prompt activates something: the comparison is not of zeros


def greedy_no_cache(gm, text, n, stop="\n"):
    """Oracle: argmax of a full forward pass per step, no KV cache, no batch, no generate()."""
    ids = gm.prompt(text).input_ids
    out: list[int] = []
    for _ in range(n):
        with torch.no_grad():
            logits = gm.model(input_ids=torch.cat([ids, torch.tensor(out, dtype=torch.long)])[None]).logits
        out.append(int(logits[0, -1].argmax()))
    return gm.tokenizer.decode(out, skip_special_tokens=True).split(stop, 1)[0].strip()


def test_batched_greedy_answers_equal_one_prompt_without_cache(tiny_model):
    texts = TEXTS[:: len(TEXTS) // 12]
    said = greedy_answers(tiny_model, texts, 4, batch_size=5)
    assert said == [greedy_no_cache(tiny_model, t, 4) for t in texts]
    assert any(said)
