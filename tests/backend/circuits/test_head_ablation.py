"""Attention edge ablation against a brute-force forward pass whose softmax pattern is edited inside transformers'
own eager attention (an independent route to the same counterfactual), controls, bad input."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers.models.gemma3 import modeling_gemma3

from gemscope_widgets import ablate_attention_edge, attention_ablation_check
from gemscope_widgets.backend.circuits.replacement import eager_attention
from gemscope_widgets.errors import GraphError

PROMPT = "Michael Jordan plays the sport of"


@contextlib.contextmanager
def edited_pattern(layer_module, head, q, k, renormalise):
    """transformers' eager attention with A[head, q, k] removed in ``layer_module`` only (the oracle)."""
    original = modeling_gemma3.eager_attention_forward

    def patched(module, query, key, value, attention_mask, **kwargs):
        if module is not layer_module:
            return original(module, query, key, value, attention_mask, **kwargs)
        captured = {}
        real_softmax = torch.nn.functional.softmax

        def softmax(x, dim=None, dtype=None, **kw):
            w = real_softmax(x, dim=dim, dtype=dtype, **kw).clone()
            a = w[:, head, q, k].clone()
            w[:, head, q, k] = 0.0
            if renormalise:
                w[:, head, q] = w[:, head, q] / (1.0 - a)
            captured["done"] = True
            return w

        torch.nn.functional.softmax = softmax
        try:
            out = original(module, query, key, value, attention_mask, **kwargs)
        finally:
            torch.nn.functional.softmax = real_softmax
        assert captured
        return out

    modeling_gemma3.eager_attention_forward = patched
    try:
        yield
    finally:
        modeling_gemma3.eager_attention_forward = original


def oracle_logits(gm, layer, head, q, k, renormalise):
    ids = gm.prompt(PROMPT).input_ids.reshape(1, -1)
    with eager_attention(gm.text_model.config), edited_pattern(gm.layers[layer].self_attn, head, q, k, renormalise), \
            torch.no_grad():
        return gm.model(input_ids=ids, use_cache=False).logits[0, -1].float()


@pytest.mark.parametrize("renormalise", [False, True])
@pytest.mark.parametrize(("layer", "head"), [(1, 2), (3, 0)])  # a sliding-window layer and the global one
def test_ablation_equals_an_edited_softmax_inside_the_model(tiny_model, layer, head, renormalise):
    n = tiny_model.prompt(PROMPT).input_ids.numel()
    q, k = n - 1, n - 4  # inside the tiny model's 16-token window
    out = ablate_attention_edge(tiny_model, PROMPT, layer, head, q, k, tokens=[5, 17], renormalise=renormalise)
    expected = oracle_logits(tiny_model, layer, head, q, k, renormalise)
    assert out.logits_after == pytest.approx([float(expected[5]), float(expected[17])], abs=1e-5)
    assert out.logit_change != pytest.approx([0.0, 0.0], abs=1e-7)  # the edit did something
    assert 0.0 < out.pattern < 1.0


def test_controls_are_every_other_head_and_a_matched_key(tiny_model):
    n = tiny_model.prompt(PROMPT).input_ids.numel()
    check = attention_ablation_check(tiny_model, PROMPT, 2, 1, -1, n - 5)
    assert check.ablation.query_pos == n - 1 and check.ablation.key_pos == n - 5
    assert sorted(c.head for c in check.control_heads) == [0, 2, 3]
    assert all(c.key_pos == n - 5 for c in check.control_heads)
    ck = check.control_key
    assert ck is not None and ck.head == 1 and ck.key_pos not in (0, n - 5) and n - 1 - ck.key_pos < 16
    # every control equals its own direct ablation (same clean pass, same targets)
    direct = ablate_attention_edge(tiny_model, PROMPT, 2, ck.head, -1, ck.key_pos, tokens=check.ablation.token_ids)
    assert direct.logits_after == pytest.approx(ck.logits_after, abs=1e-6)
    assert len(check.rows()) == 5 and "control key" in repr(check)


def test_bad_input_is_refused_and_the_model_is_left_as_it_was(tiny_model):
    ids = tiny_model.prompt(PROMPT).input_ids.reshape(1, -1)
    hooks = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in tiny_model.model.named_modules()}
    with torch.no_grad():
        before = tiny_model.model(input_ids=ids, use_cache=False).logits
    for args, match in [((9, 0, -1, 0), "Layer 9 does not exist"), ((0, 7, -1, 0), "Head 7 does not exist"),
                        ((0, 0, 2, 4), "comes after query"), ((0, 0, 99, 0), "Query position 99")]:
        with pytest.raises(GraphError, match=match):
            ablate_attention_edge(tiny_model, PROMPT, *args)
    with torch.no_grad():
        after = tiny_model.model(input_ids=ids, use_cache=False).logits
    assert torch.equal(before, after)
    assert hooks == {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks))
                     for name, m in tiny_model.model.named_modules()}
