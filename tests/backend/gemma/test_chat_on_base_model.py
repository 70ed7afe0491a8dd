"""Chat messages on a base (-pt) model warn once per model; plain text and -it models do not warn."""

from __future__ import annotations

import warnings

from gemscope_widgets.backend.gemma.model import BaseModelChatWarning, load_model

MESSAGES = [{"role": "user", "content": "What is a KeyError?"}]


def _load(path, name):
    return load_model(path, device="cpu", dtype="float32", name=name)


def test_chat_on_a_base_model_warns_once(tiny_model_path):
    gm = _load(tiny_model_path, "tiny-gemma-3-pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm.prompt(MESSAGES)
        gm.prompt([*MESSAGES, {"role": "assistant", "content": "An error."}])
    assert [type(w.message) for w in caught] == [BaseModelChatWarning]
    assert "base (pretrained)" in str(caught[0].message) and "-it" in str(caught[0].message)
    assert caught[0].filename == __file__  # the user's line, not the library's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gm.prompt(MESSAGES)  # once per model, not once per call
        gm.prompt("plain text never warns")


def test_chat_on_an_instruct_model_and_text_on_a_base_model_do_not_warn(tiny_model_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _load(tiny_model_path, "tiny-gemma-3-it").prompt(MESSAGES).is_chat
        _load(tiny_model_path, "tiny-gemma-3-pt").prompt("The function returned")


def test_the_warning_names_the_users_line_however_deep_the_library_call():
    from gemscope_widgets.backend.analysis.features import prompt_features
    from tests.fixtures.tiny_scope import tiny_scope

    scope = tiny_scope()
    gm = scope.model
    assert not gm.is_instruct
    gm._warned_chat = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prompt_features(gm, scope.sae(), MESSAGES)  # the model warns from inside the package, two calls down
    assert [type(w.message) for w in caught] == [BaseModelChatWarning]
    assert caught[0].filename == __file__
