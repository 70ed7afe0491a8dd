"""Prompts: one <bos>, chat template without a double <bos>, masks, and clear errors."""

from __future__ import annotations

import pytest

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
        (42, "string or a list"),
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
