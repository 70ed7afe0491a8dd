"""Prompts: one <bos>, chat template without a double <bos>, masks, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemscope_widgets.errors import PromptError


def test_plain_text_has_exactly_one_bos(tiny_model):
    tok = tiny_model.tokenizer
    for text in ("hello", "<bos>hello"):
        p = tiny_model.prompt(text)
        assert p.input_ids[0] == tok.bos_token_id
        assert int((p.input_ids == tok.bos_token_id).sum()) == 1, p.tokens
    p = tiny_model.prompt("hello")
    assert p.masked.tolist() == [True] + [False] * (len(p) - 1)
    assert p.special[0] and not p.special[1:].any()


def test_token_strings_are_faithful(tiny_model):
    text = "a  b\n\tc <img src=x onerror=alert(1)>"
    p = tiny_model.prompt(text)
    assert "".join(p.tokens[1:]) == text


def test_chat_messages_use_the_template_without_double_bos(tiny_model):
    p = tiny_model.prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    bos = tiny_model.tokenizer.bos_token_id
    assert p.input_ids[0] == bos and int((p.input_ids == bos).sum()) == 1
    text = "".join(p.tokens)
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n")
    # Template tokens (turn markers and role lines) are marked; the content is not.
    content = {i for i, t in enumerate(p.tokens) if not p.template[i]}
    assert "".join(p.tokens[i] for i in sorted(content)) == "Be brief.\n\nHi"
    assert p.is_chat


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "empty"),
        ([], "no messages"),
        ([{"role": "user"}], "'role' and 'content'"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"role": "user", "content": "  "}], "empty"),
        (42, r"text \(a string\), chat messages .* or token ids \(a 1-D integer tensor or a list of ints\); got int"),
        (3.5, "text .*chat messages .*token ids"),
        (b"bytes", "text .*chat messages .*token ids"),
        ([1.0, 2.0], "text .*chat messages .*token ids"),
        (torch.tensor([1.0, 2.0]), "must be integers.*text .*chat messages .*token ids"),
        (torch.tensor([[2, 5, 6]]), r"1-D Tensor; got shape \(1, 3\) \(pass ids\[0\]"),
        (torch.tensor([], dtype=torch.long), "no tokens"),
        ([2, 5, -1], "Token id -1 at position 2 is outside the vocabulary"),
        (np.array([2, 10**6]), r"Token id 1000000 at position 1 is outside the vocabulary \(0 to \d+\)"),
    ],
)
def test_bad_prompts_get_clear_errors(tiny_model, prompt, message):
    with pytest.raises(PromptError, match=message):
        tiny_model.prompt(prompt)


def test_too_long_prompt_is_refused(tiny_model):
    with pytest.raises(PromptError, match="limit here is 8"):
        tiny_model.prompt("word " * 50, max_tokens=8)


@pytest.mark.real_model
def test_real_tokenizer_keeps_whitespace_and_marks_specials(real_model):
    text = "def f(x):\n\treturn  x  # <b>"
    p = real_model.prompt(text)
    assert p.tokens[0] == "<bos>" and "".join(p.tokens[1:]) == text
    chat = real_model.prompt([{"role": "user", "content": "Hello"}])
    assert chat.tokens[:2] == ["<bos>", "<start_of_turn>"] and chat.tokens.count("<bos>") == 1


@pytest.mark.parametrize("form", ["tensor", "list", "tuple", "numpy", "numpy ints"])
def test_token_ids_are_a_prompt_and_keep_exactly_the_tokens_given(tiny_model, form):
    """Token ids are the third form of a prompt: the ids given are the ids run, apart from the one-<bos> rule."""
    tok = tiny_model.tokenizer
    bos = tok.bos_token_id
    text = tiny_model.prompt("The quick brown fox")
    body = text.input_ids[1:].tolist()
    weird = [body[2], body[0], body[0], body[1]]  # an order no tokenizer would produce from text
    make = {"tensor": torch.tensor, "list": list, "tuple": tuple, "numpy": np.array,
            "numpy ints": lambda ids: [np.int64(i) for i in ids]}[form]
    p = tiny_model.prompt(make([bos, *weird]))
    assert p.input_ids.tolist() == [bos, *weird] and p.input_ids.dtype == torch.long
    assert p.kind == "ids" and not p.is_chat and p.source == (bos, *weird)
    assert p.tokens == [tok.convert_ids_to_tokens(bos), *(tok.decode([i]) for i in weird)]
    assert p.masked.tolist() == [True, False, False, False, False]
    # The one-<bos> rule: a missing one is prepended, a doubled one collapsed; nothing else changes.
    assert tiny_model.prompt(make(weird)).input_ids.tolist() == [bos, *weird]
    assert tiny_model.prompt(make([bos, bos, bos, *weird])).input_ids.tolist() == [bos, *weird]
    inner = tiny_model.prompt(make([bos, weird[0], bos, weird[1]]))
    assert inner.input_ids.tolist() == [bos, weird[0], bos, weird[1]] and inner.masked.tolist() == [1, 0, 1, 0]
    # The same ids as text give the same Prompt.
    same = tiny_model.prompt(make(text.input_ids.tolist()))
    assert torch.equal(same.input_ids, text.input_ids) and same.tokens == text.tokens
    assert torch.equal(same.special, text.special) and torch.equal(same.masked, text.masked)


def test_token_ids_are_bounded_by_the_models_vocabulary(tiny_model):
    vocab = int(tiny_model.text_config.vocab_size)
    assert tiny_model.prompt([vocab - 1]).input_ids[-1] == vocab - 1
    with pytest.raises(PromptError, match=f"Token id {vocab} at position 0 .*0 to {vocab - 1}"):
        tiny_model.prompt([vocab])
    with pytest.raises(PromptError, match="limit here is 3"):
        tiny_model.prompt([5, 6, 7], max_tokens=3)  # 4 with the <bos>


@pytest.mark.real_model
def test_real_token_ids_round_trip_through_the_real_tokenizer(real_model):
    ids = real_model.tokenizer("Token ids from another tool", add_special_tokens=False)["input_ids"]
    p = real_model.prompt(torch.tensor(ids))
    assert p.input_ids.tolist() == [real_model.tokenizer.bos_token_id, *ids]
    assert "".join(p.tokens[1:]) == "Token ids from another tool"
