"""ChatSession: a streamed model turn equals generate on the same conversation and steering; cancel leaves the
model clean and appends nothing; turns are appended in order; bad input gets short errors."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from gemscope_widgets.backend.behaviour.chat_session import ChatListener, ChatSession
from gemscope_widgets.backend.behaviour.conversation import stopping_at_end_of_turn
from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.backend.steering.generation import generate
from gemscope_widgets.backend.steering.spec import DirectionSpec
from gemscope_widgets.errors import GemscopeError, JobCancelled, PromptError, SteeringError
from tests.helpers import active_feature, hook_ids

CONV = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Where is the fox?"},
]


class Recorder(ChatListener):
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.first_token = threading.Event()

    def chat_changed(self, messages):
        self.events.append(("changed", len(messages)))

    def chat_started(self, turn):
        self.events.append(("started", turn))

    def chat_token(self, turn, token_id, token, step):
        self.events.append(("token", turn, token_id, token, step))
        self.first_token.set()

    def chat_done(self, turn, result):
        self.events.append(("done", turn, result.stopped))

    def chat_failed(self, turn, error):
        self.events.append(("failed", turn, str(error)))

    def chat_cancelled(self, turn):
        self.events.append(("cancelled", turn))

    def tokens(self, turn):
        return [e[2] for e in self.events if e[0] == "token" and e[1] == turn]


@pytest.fixture
def sae(gemma_scope_folders):
    from gemscope_widgets.backend.dictionaries.loading import load_sae

    return load_sae(gemma_scope_folders["resid_post"])


@pytest.fixture(autouse=True)
def _quiet_base_model_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def check_streamed_turn_equals_generate(gm, sae, steering, max_new_tokens, unit="typical"):
    rec = Recorder()
    chat = ChatSession(gm, CONV, steering, sae=sae, unit=unit, max_new_tokens=max_new_tokens, listener=rec)
    turn = chat.run()
    result = chat.wait(600)
    # The oracle: backend generate on the same conversation and steering, stopping at <end_of_turn>.
    expected = generate(stopping_at_end_of_turn(gm), CONV, steering, sae=sae, unit=unit,
                        max_new_tokens=max_new_tokens)
    assert result.steered_ids == expected.steered_ids
    assert rec.tokens(turn) == expected.steered_ids  # streamed token by token, in order
    streamed = [e[3] for e in rec.events if e[0] == "token"]
    assert streamed == token_strings(gm.tokenizer, expected.steered_ids)
    assert chat.messages == [*CONV, {"role": "assistant", "content": expected.steered_text}]
    assert rec.events[0] == ("started", turn) and rec.events[-2:] == [("changed", 3), ("done", turn, result.stopped)]
    if result.stopped == "eos":
        assert result.steered_ids[-1] == gm.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    else:
        assert result.stopped == "length" and len(result.steered_ids) == max_new_tokens
    return chat, expected


def test_streamed_turn_equals_generate_steered(tiny_model, sae):
    f = active_feature(sae, tiny_model)
    _, expected = check_streamed_turn_equals_generate(tiny_model, sae, {f: 8.0}, 6)
    assert len(expected.specs) == 1 and expected.specs[0].unit == "raw"  # the steering was applied


@pytest.mark.real_model
def test_real_model_turn_equals_generate(real_model):
    # A residual-stream direction added at layer 6 at twice the residual's typical norm there, in raw units (no
    # SAE or statistics needed).
    ids = real_model.prompt(CONV).input_ids.unsqueeze(0)
    norm = capture(real_model, ids, ["model.layers.6.output"])["model.layers.6.output"][0, 1:].norm(dim=-1).median()
    direction = torch.randn(real_model.d_model, generator=torch.Generator().manual_seed(0))
    steering = [DirectionSpec(direction / direction.norm(), mode="add", strength=2 * float(norm), layer=6)]
    _, expected = check_streamed_turn_equals_generate(real_model, None, steering, 6, unit="raw")
    assert expected.steered_ids != expected.baseline_ids  # the steering changed the reply


def test_user_turn_after_model_turn_in_order(tiny_model, sae):
    chat = ChatSession(tiny_model, [], sae=sae, max_new_tokens=3)
    assert chat.next_role() == "user"
    chat.add_user("Where is the fox?")
    first = chat.generate()
    chat.add_user("And the dog?")
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user"]
    assert chat.messages[1]["content"] == first.steered_text and chat.messages[2]["content"] == "And the dog?"
    second = chat.generate()
    expected = generate(stopping_at_end_of_turn(tiny_model), chat.messages[:3], max_new_tokens=3)
    assert second.steered_ids == expected.steered_ids
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    # A model turn written by hand is accepted after a user turn, as the template expects.
    chat.add_user("And the cat?")
    chat.add_turn("model", "Asleep.")
    assert chat.messages[-1] == {"role": "assistant", "content": "Asleep."}
    # Editing drops what came after the edited message.
    chat.edit(2, "And the hen?")
    assert [m["content"] for m in chat.messages][1:] == [first.steered_text, "And the hen?"]


def test_cancel_leaves_the_model_clean_and_appends_nothing(tiny_model, sae):
    f = active_feature(sae, tiny_model)
    before = hook_ids(tiny_model.model)
    rec = Recorder()
    chat = ChatSession(tiny_model, CONV, {f: 4.0}, sae=sae, max_new_tokens=400, listener=rec)
    turn = chat.run()
    assert rec.first_token.wait(60), "the turn streamed no token"
    chat.cancel()
    assert not chat.running
    with pytest.raises(JobCancelled, match="cancelled"):
        chat.wait(60)
    assert chat.join(60)  # the job itself has ended
    assert hook_ids(tiny_model.model) == before
    assert chat.messages == CONV
    assert ("cancelled", turn) in rec.events and not any(e[0] == "done" for e in rec.events)
    assert len(rec.tokens(turn)) < 400
    # The next turn starts afresh and equals generate: no steering hook was left behind.
    chat.max_new_tokens = 4
    result = chat.generate()
    assert result.steered_ids == generate(stopping_at_end_of_turn(tiny_model), CONV, {f: 4.0}, sae=sae,
                                          max_new_tokens=4).steered_ids
    assert hook_ids(tiny_model.model) == before


def test_latest_run_wins(tiny_model, sae):
    rec = Recorder()
    chat = ChatSession(tiny_model, CONV, sae=sae, max_new_tokens=400, listener=rec)
    first = chat.run()
    assert rec.first_token.wait(60)
    chat.max_new_tokens = 3
    second = chat.run()
    result = chat.wait(60)
    assert len(result.steered_ids) <= 3 and len(chat.messages) == 3  # one reply appended, the latest
    assert ("cancelled", first) in rec.events and ("done", second, result.stopped) in rec.events
    assert chat.join(60)


def test_bad_input_short_errors(tiny_model, sae):
    chat = ChatSession(tiny_model, CONV, sae=sae, max_new_tokens=2)
    with pytest.raises(PromptError, match="empty"):
        chat.add_user("   ")
    with pytest.raises(PromptError, match="expects a model turn next.*run"):
        chat.add_user("Again?")
    with pytest.raises(PromptError, match="must be a string"):
        chat.add_user(None)
    chat.generate()
    with pytest.raises(PromptError, match="nothing to continue"):
        chat.run()
    with pytest.raises(PromptError, match="expects a user turn next"):
        chat.add_turn("model", "More.")
    with pytest.raises(PromptError, match="role"):
        chat.add_turn("bot", "hi")
    with pytest.raises(PromptError, match="does not exist"):
        chat.edit(7, "x")
    assert len(chat.messages) == 3  # no failed call changed the conversation
    with pytest.raises(PromptError, match="expected"):
        ChatSession(tiny_model, [{"role": "assistant", "content": "hi"}])
    with pytest.raises(SteeringError, match="unit"):
        ChatSession(tiny_model, CONV, {1: 1.0}, sae=sae, unit="sigma")
    with pytest.raises(GemscopeError, match="Unknown chat settings"):
        ChatSession(tiny_model, CONV, sae=sae, temprature=0.5)
    with pytest.raises(PromptError, match="No model turn"):
        ChatSession(tiny_model, CONV, sae=sae).wait(1)
    # While a turn runs, adding a turn says to wait or cancel.
    busy = ChatSession(tiny_model, CONV, sae=sae, max_new_tokens=400)
    busy.run()
    with pytest.raises(GemscopeError, match="being generated"):
        busy.add_turn("model", "x")
    busy.close()
    assert busy.join(60)
