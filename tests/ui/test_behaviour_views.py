"""The chat and contrast views in a real JupyterLab: turns and heat drawn from the kernel's data, model text inert,
"continue" streams a model turn that stops at <end_of_turn> or max_new_tokens, a contrast row opens its pane."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.tiny_scope import KERNEL_SETUP

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
SETUP = KERNEL_SETUP + f"""
import json, warnings
warnings.simplefilter("ignore")
from tests.helpers import active_feature
XSS = {XSS!r}
CONV = [{{"role": "user", "content": "Where is the fox? " + XSS}}, {{"role": "assistant", "content": "In the wood."}},
        {{"role": "user", "content": "And the dog?"}}]
F = active_feature(sae, gm, "Where is the fox? The quick brown fox")
"""
CHAT = "chat = scope.chat(CONV, features=[F], max_new_tokens=6)\nchat"
CONTRAST = 'panel = scope.contrast("The fox " + XSS, "The dog jumps over the lazy fox.", span="all", k=5)\npanel'


def test_chat_and_contrast_views(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "behaviour.ipynb", [SETUP, CHAT, CONTRAST])

    # --- chat: turns, template marks, heat, inert text ------------------------------------------------------
    chat = page.locator(".gs-chat").first
    turns = chat.locator(".gs-chat-turns > .gs-chat-turn")
    view = json.loads(lab_server.run_code(page, "print(json.dumps(chat._view))"))
    expect(turns).to_have_count(len(view["turns"]), timeout=60_000)
    roles = chat.locator(".gs-chat-turns .gs-chat-role").all_text_contents()
    assert roles == [t["role"] for t in view["turns"]]
    tokens = chat.locator(".gs-chat-turns .gs-token")
    expect(tokens).to_have_count(len(view["tokens"]))
    assert chat.locator(".gs-chat-turns .gs-template").count() == sum(view["template"])
    heat = json.loads(lab_server.run_code(page, "print(json.dumps([i for i, v in enumerate("
                                                "chat.conversation.activations[0].feature(F)) if v > 0]))"))
    assert heat, "the chosen feature fires somewhere"
    shaded = tokens.evaluate_all("els => els.map((e, i) => e.style.background ? i : -1).filter(i => i >= 0)")
    assert shaded == heat
    assert XSS in chat.locator(".gs-chat-turns").evaluate("e => e.textContent")
    assert chat.locator("img").count() == 0 and page.locator(".jp-OutputArea img[src='x']").count() == 0
    expect(chat.locator(".gs-chat-warning")).to_contain_text("base model")

    # --- continue: a model turn streams in and stops at <end_of_turn> or max_new_tokens ------------------------
    chat.locator(".gs-chat-continue").click()
    expect(chat.locator(".gs-status")).to_contain_text("reply:", timeout=60_000)
    # The generation-prompt turn (no message, no edit button) became the reply's turn.
    assert view["turns"][-1]["message"] == -1
    expect(turns.last.locator(".gs-chat-edit")).to_have_count(1, timeout=60_000)
    expect(turns).to_have_count(len(view["turns"]))
    expect(chat.locator(".gs-chat-continue")).to_be_disabled()  # the conversation now ends on a model turn
    out = json.loads(lab_server.run_code(page, """
r = chat.result
eot = gm.tokenizer.convert_tokens_to_ids("<end_of_turn>")
print(json.dumps({"stopped": r.stopped, "ids": list(map(int, r.steered_ids)), "eot": eot, "error": chat.error,
                  "last": chat.messages[-1], "text": r.steered_text, "status": chat.status}))
"""))
    assert out["error"] == "" and out["last"] == {"role": "assistant", "content": out["text"]}
    if out["stopped"] == "eos":
        assert out["ids"][-1] == out["eot"] and "<end_of_turn>" in out["status"]
    else:
        assert out["stopped"] == "length" and len(out["ids"]) == 6 and out["eot"] not in out["ids"]
    expect(turns.last.locator(".gs-chat-role")).to_have_text("model")
    reply = json.loads(lab_server.run_code(page, "t = chat._view['turns'][-1]\n"
                                                 "print(json.dumps(chat._view['tokens'][t['start']:t['end']]))"))
    assert turns.last.locator(".gs-chat-text .gs-token").count() == len(reply)
    assert chat.locator(".gs-chat-streaming").is_hidden()

    # --- contrast: ranked rows, both sides, a click opens the feature's pane -----------------------------------
    contrast = page.locator(".gs-contrast").first
    rows = json.loads(lab_server.run_code(page, "print(json.dumps(panel.view._view['rows']))"))
    table_rows = contrast.locator("tr.gs-ct-row")
    expect(table_rows).to_have_count(len(rows), timeout=60_000)
    assert [int(r.get_attribute("data-feature")) for r in table_rows.all()] == [r["feature"] for r in rows]
    sides = contrast.locator(".gs-ct-side")
    expect(sides).to_have_count(2)
    # One pair: the view says that the ranking reflects wording as much as content, and points to pairs=.
    expect(contrast.locator(".gs-ct-caveat")).to_be_visible()
    expect(contrast.locator(".gs-ct-caveat")).to_contain_text("pairs=[(a, b), ...]")
    assert XSS in sides.first.evaluate("e => e.textContent") and contrast.locator("img").count() == 0
    target = rows[1]["feature"]
    table_rows.nth(1).click()
    expect(table_rows.nth(1)).to_have_class("gs-ct-row gs-selected")
    pane = page.locator(".gs-pane").first
    expect(pane).to_be_visible(timeout=60_000)
    got = lab_server.run_code(page, "print(panel.view.selected_feature, panel.pane.feature)").split()
    assert got == [str(target), str(target)]
    shaded = contrast.locator(".gs-ct-text .gs-token").evaluate_all("els => els.filter(e => e.style.background).length")
    assert shaded > 0
