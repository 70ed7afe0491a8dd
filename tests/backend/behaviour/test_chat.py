"""Conversations: template token ids, turn positions, continuing, and bad conversations."""

from __future__ import annotations

import warnings

import pytest
import torch

from gemscope_widgets.backend.behaviour.chat import chat_prompt, continue_conversation, conversation_features
from gemscope_widgets.backend.behaviour.conversation import check_conversation
from gemscope_widgets.backend.gemma.model import BaseModelChatWarning
from gemscope_widgets.backend.gemma.prompts import GEMMA3_CHAT_TEMPLATE
from gemscope_widgets.errors import PromptError

CONV = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def own_template_ids(gm, messages):
    """Oracle: the tokenizer's own apply_chat_template (Gemma 3's template where the tokenizer ships none)."""
    template = getattr(gm.tokenizer, "chat_template", None) or GEMMA3_CHAT_TEMPLATE
    out = gm.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True,
                                           add_generation_prompt=messages[-1]["role"] == "user")
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


@pytest.fixture(autouse=True)
def _fresh_warning_state(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model, "_warned_chat", False)


def test_tokens_equal_apply_chat_template_and_turns(tiny_model):
    with pytest.warns(BaseModelChatWarning):
        _, prompt, turns = chat_prompt(tiny_model, CONV)
    ids = prompt.input_ids.tolist()
    assert ids == own_template_ids(tiny_model, CONV)
    assert ids.count(tiny_model.tokenizer.bos_token_id) == 1
    assert [t.role for t in turns] == ["user", "model", "user", "model"]
    assert [t.message for t in turns] == [1, 2, 3, -1]
    text = lambda a, b: "".join(prompt.tokens[a:b])  # noqa: E731
    assert text(turns[0].content_start, turns[0].message_start) == "Answer briefly.\n\n"
    assert text(turns[0].message_start, turns[0].content_end) == "What is the capital of France?"
    assert text(turns[1].content_start, turns[1].content_end) == "Paris."
    assert turns[3].content_start == turns[3].content_end == len(prompt)  # the open generation prompt
    # Template tokens are marked, not hidden: every token is present and the role lines are flagged.
    assert all(prompt.template[turns[2].start : turns[2].content_start])
    assert not any(prompt.template[turns[2].content_start : turns[2].content_end])


@pytest.mark.real_model
def test_real_tokenizer_template(real_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BaseModelChatWarning)
        _, prompt, _ = chat_prompt(real_model, CONV)
    assert prompt.input_ids.tolist() == own_template_ids(real_model, CONV)


def test_base_model_warns_once(tiny_model):
    with pytest.warns(BaseModelChatWarning, match="not trained on chat"):
        chat_prompt(tiny_model, CONV)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chat_prompt(tiny_model, CONV)


def test_bad_conversations():
    with pytest.raises(PromptError, match="empty"):
        check_conversation([])
    with pytest.raises(PromptError, match="expected"):
        check_conversation([{"role": "assistant", "content": "hi"}])
    with pytest.raises(PromptError, match="expected"):
        check_conversation([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(PromptError, match="role"):
        check_conversation([{"role": "bot", "content": "a"}])
    with pytest.raises(PromptError, match="only a system"):
        check_conversation([{"role": "system", "content": "a"}])
    with pytest.raises(PromptError, match="nothing to continue"):
        check_conversation(CONV[:3], ending="user")
    assert check_conversation([{"role": "user", "content": "a"}, {"role": "model", "content": "b"}])[1]["role"] == \
        "assistant"


def test_continue_equals_generate_on_templated_text(tiny_model):
    with pytest.warns(BaseModelChatWarning):
        result, after = continue_conversation(tiny_model, CONV, max_new_tokens=6)
    ids = torch.tensor([own_template_ids(tiny_model, CONV)])
    end_turn = tiny_model.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    with torch.no_grad():
        out = tiny_model.model.generate(ids, max_new_tokens=6, do_sample=False,
                                        eos_token_id=[*tiny_model.stop_token_ids, end_turn], pad_token_id=0)
    expected = out[0, ids.shape[1]:].tolist()
    while expected and expected[-1] in (*tiny_model.stop_token_ids, end_turn, 0):
        expected.pop()
    assert result.baseline_ids == result.steered_ids == expected
    assert after[-1] == {"role": "assistant", "content": result.steered_text}
    with pytest.raises(PromptError, match="nothing to continue"):
        continue_conversation(tiny_model, after)


def test_turn_summary(tiny_model, gemma_scope_folders):
    from gemscope_widgets.backend.dictionaries.loading import load_sae

    sae = load_sae(gemma_scope_folders["resid_post"])
    with pytest.warns(BaseModelChatWarning):
        cf = conversation_features(tiny_model, sae, CONV)
    summary = cf.summary(k=3)
    dense = cf.activations[0].dense()
    t = summary[1].turn
    best = dense[t.content_start : t.content_end].max(0).values
    assert summary[1].features.tolist() == torch.argsort(best, descending=True, stable=True)[:3].tolist()
