"""Chat view as a relay over ChatSession: a user turn from the box, the model's turn equal to the session's
generation, stop, feature selection from Python, and short errors shown in the view."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gemscope_widgets.backend.behaviour.conversation import stopping_at_end_of_turn
from gemscope_widgets.backend.steering.generation import generate
from gemscope_widgets.errors import FeatureIndexError, JobCancelled, PromptError
from tests.helpers import hook_ids

CONV = [{"role": "user", "content": "Where is the fox?"}, {"role": "assistant", "content": "In the wood."}]


@pytest.fixture
def chat(tiny_model, gemma_scope_folders):
    from gemscope_widgets.backend.dictionaries.loading import load_sae
    from gemscope_widgets.scope import Scope

    scope = Scope(tiny_model, load_sae(gemma_scope_folders["resid_post"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        view = scope.chat(CONV, max_new_tokens=4)
        yield view
        view.session.close()


def send(chat, **msg):
    chat._on_custom_msg(chat, msg, [])  # what the view sends


def test_add_user_turn_from_the_box_then_the_model_turn(chat, tiny_model):
    send(chat, type="continue")  # ends on a model turn: a short error, nothing runs
    assert "nothing to continue" in chat.error and not chat.running
    send(chat, type="add", content="   ")
    assert "empty" in chat.error and len(chat.messages) == 2
    send(chat, type="add", content="And the dog?")
    result = chat.wait(60)
    expected = generate(stopping_at_end_of_turn(tiny_model), [*CONV, {"role": "user", "content": "And the dog?"}],
                        max_new_tokens=4)
    assert result.steered_ids == expected.steered_ids
    assert chat.messages == [*CONV, {"role": "user", "content": "And the dog?"},
                             {"role": "assistant", "content": expected.steered_text}]
    assert chat.messages == chat.session.messages
    assert [t["role"] for t in chat._view["turns"]] == ["user", "model", "user", "model"]
    assert chat._view["tokens"] == list(tiny_model.prompt(chat.messages).tokens)
    assert chat.error == "" and not chat.running and chat.streaming == [] and "reply: " in chat.status
    send(chat, type="add", content="And the cat?")
    chat.wait(60)
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 3


def test_stop_appends_nothing_and_leaves_no_hook(chat, tiny_model):
    before = hook_ids(tiny_model.model)
    chat.max_new_tokens = 400
    chat.add_user("Tell me a long story.")
    send(chat, type="stop")
    with pytest.raises(JobCancelled):
        chat.wait(60)
    assert chat.session.join(60)
    assert hook_ids(tiny_model.model) == before
    assert chat.messages[-1] == {"role": "user", "content": "Tell me a long story."}
    assert not chat.running and chat.streaming == [] and "stopped" in chat.status
    assert [t["role"] for t in chat._view["turns"]] == ["user", "model", "user", "model"]  # open generation prompt


def test_select_features_from_python(chat):
    top = chat.turn_features(0, k=2)
    assert top == [int(f) for f in chat.conversation.summary(0, chat.summary_k)[0].features[:2]]
    assert chat.select_features(top) == top == chat.selected_features == chat.features
    heat = np.frombuffer(chat._heat, dtype=np.float32).reshape(len(top), -1)
    np.testing.assert_array_equal(heat[1], chat.conversation.activations[0].feature(top[1]))
    assert all(str(f) in chat._view["labels"] for f in top)
    with pytest.raises(FeatureIndexError):
        chat.select_features([10**6])
    assert chat.selected_features == top  # a failed selection changes nothing
    with pytest.raises(PromptError, match="does not exist"):
        chat.turn_features(9)
    assert chat.select_features([]) == [] and chat._heat == b""
