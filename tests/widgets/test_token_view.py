"""TokenView's kernel side: traits, validation, the status reply and the bundled front end."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemscope_widgets.errors import GemscopeError, PromptError
from gemscope_widgets.widgets.token_view import TokenView

TOKENS = ["<bos>", "Hello", " world", "\n", "<img src=x onerror=alert(1)>"]
SPECIAL = [True, False, False, False, False]


def test_esm_is_the_built_bundle():
    bundle = Path(__file__).parents[2] / "gemscope_widgets" / "static" / "token_view.js"
    source = bundle.read_text()
    assert TokenView(TOKENS)._esm == source
    assert "export" in source and "render" in source
    # Token text reaches the page through textContent only.
    assert "textContent" in source
    assert "innerHTML" not in source and "insertAdjacentHTML" not in source


def test_defaults_and_synced_state():
    view = TokenView(TOKENS, special=SPECIAL)
    state = view.get_state()
    assert state["tokens"] == TOKENS
    assert state["special"] == SPECIAL
    assert state["selected_token"] == -1
    assert state["status"] == "Click a token to select it."
    assert TokenView(TOKENS).special == []


def test_browser_selection_updates_status():
    view = TokenView(TOKENS, special=SPECIAL)
    seen = []
    view.observe(lambda change: seen.append(change["new"]), "selected_token")
    view.set_state({"selected_token": 2})  # what a click in the browser sends over the comm
    assert view.selected_token == 2
    assert view.status == "selected token 2: ' world'"
    assert seen == [2]
    view.set_state({"selected_token": 3})
    assert view.status == "selected token 3: '\\n'"
    view.selected_token = -1
    assert view.status == "Click a token to select it."


@pytest.mark.parametrize("index", [5, -2, 100])
def test_selection_outside_the_tokens_is_refused(index):
    view = TokenView(TOKENS)
    # A notebook catches it as the package's user-facing error, with the message that says what to do.
    with pytest.raises(GemscopeError, match=rf"selected_token {index} is outside the 5 tokens") as caught:
        view.selected_token = index
    assert isinstance(caught.value, PromptError)
    assert view.selected_token == -1


def test_special_flags_must_match_the_tokens():
    with pytest.raises(PromptError, match="special has 2 flags for 5 tokens"):
        TokenView(TOKENS, special=[True, False])
    view = TokenView(TOKENS, special=SPECIAL)
    with pytest.raises(PromptError, match="set_tokens"):
        view.tokens = ["just", "two"]
    assert view.tokens == TOKENS


def test_set_tokens_replaces_both_and_clears_the_selection():
    view = TokenView(TOKENS, special=SPECIAL)
    view.selected_token = 4
    view.set_tokens(["<bos>", "a", "b"], [True, False, False])
    assert view.tokens == ["<bos>", "a", "b"]
    assert view.special == [True, False, False]
    assert view.selected_token == -1
    assert view.status == "Click a token to select it."


def test_fewer_tokens_drop_a_selection_past_the_end():
    view = TokenView(TOKENS)
    view.selected_token = 4
    view.tokens = ["x", "y"]
    assert view.selected_token == -1
    view.selected_token = 1
    view.tokens = ["p", "q", "r"]
    assert view.status == "selected token 1: 'q'"


def test_from_text_uses_the_model_tokenisation(tiny_model):
    text = "def fibonacci(n):\n    return n"
    prompt = tiny_model.prompt(text)
    view = TokenView.from_text(tiny_model, text)
    assert view.tokens == list(prompt.tokens)
    assert view.special == [bool(s) for s in prompt.special]
    assert view.special[0] is True  # <bos>
    assert "".join(view.tokens[1:]) == text
