"""The conversation view in a real JupyterLab: a user turn typed in the box (Enter sends, Shift+Enter a new line)
appends that turn and the model's turn streams in; every control that is off says why beside it; text from the
conversation (the user's and the model's) stays text."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.tiny_scope import KERNEL_SETUP

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
SETUP = KERNEL_SETUP + f"""
import json, warnings
warnings.simplefilter("ignore")
from gemscope_widgets.backend.gemma.prompts import token_strings
XSS = {XSS!r}
CONV = [{{"role": "user", "content": "Where is the fox?"}}, {{"role": "assistant", "content": "In the wood. " + XSS}}]
"""
CHAT = "chat = scope.chat(CONV, max_new_tokens=12)\nchat"

# Records, in the page, the most tokens the streaming box showed while a model turn was generated.
WATCH_STREAM = """root => {
  window.__gsStreamed = 0;
  const box = root.querySelector('.gs-chat-streaming');
  new MutationObserver(() => {
    if (!box.hidden) window.__gsStreamed = Math.max(window.__gsStreamed, box.querySelectorAll('.gs-token').length);
  }).observe(box, {childList: true, subtree: true, attributes: true});
}"""


def test_add_a_user_turn_through_the_box(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "chat_box.ipynb", [SETUP, CHAT])
    chat = page.locator(".gs-chat").first
    turns = chat.locator(".gs-chat-turns > .gs-chat-turn")
    expect(turns).to_have_count(2, timeout=60_000)  # user, model (no open generation prompt)
    expect(chat).to_have_attribute("data-kernel", "live", timeout=30_000)

    # The conversation ends on a model turn: "continue" is off and says why; the box is on.
    cont = chat.locator(".gs-chat-continue")
    expect(cont).to_be_disabled()
    expect(chat.locator(".gs-chat-controls .gs-chat-why")).to_have_text(
        "the conversation ends on a model turn: add a user turn below first")
    assert "add a user turn" in cont.get_attribute("title")
    box, send = chat.locator(".gs-chat-input"), chat.locator(".gs-chat-send")
    expect(box).to_be_enabled()
    expect(send).to_be_disabled()  # an empty box
    expect(chat.locator(".gs-chat-send-row .gs-chat-why")).to_have_text("type the user's turn first")
    # The model's text stays text.
    assert XSS in turns.nth(1).evaluate("e => e.textContent") and chat.locator("img").count() == 0

    # Type a turn: Shift+Enter is a new line in the box, Enter sends it; the keys stay in the widget.
    chat.evaluate(WATCH_STREAM)
    box.click()
    box.type("And the dog?")
    box.press("Shift+Enter")
    box.type("Quick. " + XSS)
    assert box.input_value() == "And the dog?\nQuick. " + XSS
    expect(send).to_be_enabled()
    box.press("Enter")
    expect(chat.locator(".gs-status")).to_contain_text("reply:", timeout=60_000)
    expect(turns).to_have_count(4, timeout=60_000)  # + the user turn, + the model's turn
    out = json.loads(lab_server.run_code(page, """
r = chat.result
print(json.dumps({"messages": chat.messages, "ids": list(map(int, r.steered_ids)), "error": chat.error}))
"""))
    assert out["error"] == ""
    assert out["messages"][2] == {"role": "user", "content": "And the dog?\nQuick. " + XSS}
    assert out["messages"][3]["role"] == "assistant" and len(out["messages"]) == 4
    assert box.input_value() == ""
    # The model's turn streamed in token by token before it was drawn as a turn.
    streamed = page.evaluate("window.__gsStreamed")
    assert 1 <= streamed <= len(out["ids"])
    assert chat.locator(".gs-chat-streaming").is_hidden()
    # The user's turn (with the XSS string) is text: the tokens carry it, nothing was parsed as HTML.
    assert "Quick. " + XSS in turns.nth(2).evaluate("e => e.textContent")
    assert chat.locator("img").count() == 0 and page.locator(".jp-OutputArea img[src='x']").count() == 0
    assert turns.nth(3).locator(".gs-chat-role").text_content() == "model"
    expect(cont).to_be_disabled()  # ends on the model's turn again

    # A user turn added from Python without a reply: the box is off and says why; "continue" is on.
    lab_server.run_code(page, "chat.add_user('And the hen?', reply=False)")
    expect(turns).to_have_count(6, timeout=30_000)  # + the user turn and the open generation prompt
    expect(turns.last.locator(".gs-chat-edit")).to_have_count(0)
    expect(box).to_be_disabled(timeout=30_000)
    expect(chat.locator(".gs-chat-send-row .gs-chat-why")).to_contain_text("ends on a user turn: press continue")
    expect(cont).to_be_enabled()
    expect(chat.locator(".gs-chat-controls .gs-chat-why")).to_be_hidden()
    cont.click()
    expect(turns.last.locator(".gs-chat-edit")).to_have_count(1, timeout=60_000)  # the prompt became the reply
    expect(turns).to_have_count(6)
    expect(cont).to_be_disabled(timeout=60_000)
    expect(box).to_be_enabled()
    roles = json.loads(lab_server.run_code(page, "print(json.dumps([m['role'] for m in chat.messages]))"))
    assert roles == ["user", "assistant"] * 3
