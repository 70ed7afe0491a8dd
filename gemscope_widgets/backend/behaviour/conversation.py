"""Conversations in Gemma 3's chat template: checking turn order, and where each turn lies in the tokens.

Gemma 3's template (``<bos><start_of_turn>user\\n…<end_of_turn>\\n<start_of_turn>model\\n…``) has no system role:
a system message is folded into the first user turn, followed by a blank line. Tokenisation itself is
:func:`gemscope_widgets.backend.gemma.prompts.make_prompt` (one ``<bos>``, the model's own template or Gemma 3's
when the tokenizer ships none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gemscope_widgets.backend.gemma.model import BaseModelChatWarning
from gemscope_widgets.backend.gemma.prompts import Prompt
from gemscope_widgets.errors import PromptError, warn_user

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

def warn_if_base(gm: GemmaModel) -> None:
    """Give the model's own once-per-model :class:`BaseModelChatWarning` if ``gm`` is a base (not ``-it``) model.

    Tools that template a conversation without :meth:`GemmaModel.prompt` call this, so a chat tool on a base
    model warns exactly once, whichever tool comes first.
    """
    if gm.is_instruct or getattr(gm, "_warned_chat", False):
        return
    gm._warned_chat = True
    warn_user(BaseModelChatWarning(gm.name))


def model_role(role: str) -> str:
    """The template's name for a role: ``assistant`` is written ``model``."""
    return "model" if role == "assistant" else role


def check_conversation(messages: Any, *, ending: str | None = None) -> list[dict[str, str]]:
    """Validate a conversation: an optional leading system message, then user and model turns alternating.

    ``ending="user"`` requires the last turn to be the user's (to continue with a model turn). Returns plain
    ``{"role", "content"}`` dicts, with the model's role written ``"assistant"``.
    Raises :class:`PromptError` naming the offending message.
    """
    if isinstance(messages, str) or not isinstance(messages, Sequence):
        raise PromptError(
            f"A conversation is a list of {{'role', 'content'}} messages, got {type(messages).__name__}."
        )
    if len(messages) == 0:
        raise PromptError("The conversation is empty: pass e.g. [{'role': 'user', 'content': 'Hi'}].")
    checked: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise PromptError(f"Message {i} must be a dict with 'role' and 'content' keys, got {message!r}.")
        if not isinstance(message["content"], str):
            raise PromptError(f"Message {i}'s content must be a string, got {type(message['content']).__name__}.")
        role = model_role(str(message["role"]))
        if role not in ("system", "user", "model"):
            raise PromptError(f"Message {i} has role {message['role']!r}; use 'system', 'user' or 'model'/'assistant'.")
        # "model" is written "assistant", the name chat templates (and add_generation_prompt) expect.
        checked.append({"role": "assistant" if role == "model" else role, "content": message["content"]})
    roles = [model_role(m["role"]) for m in checked]
    body = roles[1:] if roles[0] == "system" else roles
    if not body:
        raise PromptError("The conversation has only a system message: add a user turn after it.")
    for i, role in enumerate(body):
        expected = "user" if i % 2 == 0 else "model"
        if role != expected:
            index = i + (len(roles) - len(body))
            raise PromptError(
                f"Message {index} is a {role!r} turn where a {expected!r} turn was expected: after an optional "
                "system message, turns alternate user, model, user, ... starting with the user."
            )
    if ending == "user" and body[-1] != "user":
        raise PromptError(
            "The conversation ends on a model turn, so there is nothing to continue: add a user turn (or edit "
            "the last model turn and re-run from there)."
        )
    return checked


@dataclass(frozen=True)
class Turn:
    """One turn in the tokens: ``role`` (``user``/``model``), the message index it came from, the whole turn
    ``[start, end)`` (from ``<start_of_turn>`` through ``<end_of_turn>`` and its newline) and its content
    tokens ``[content_start, content_end)``. A turn still open (the generation prompt) has empty content and
    ``message=-1``. In the first user turn a system message is folded in front of the user's text:
    ``[content_start, message_start)`` is the system text, ``[message_start, content_end)`` the user's own."""

    role: str
    message: int
    start: int
    end: int
    content_start: int
    content_end: int
    message_start: int


def turns(gm: GemmaModel, prompt: Prompt) -> list[Turn]:
    """Segment a templated prompt into turns by its ``<start_of_turn>`` / ``<end_of_turn>`` tokens.

    Message indices count the system message (folded into turn 0's content) when there is one.
    """
    tok = gm.tokenizer
    start_id = tok.convert_tokens_to_ids("<start_of_turn>")
    end_id = tok.convert_tokens_to_ids("<end_of_turn>")
    ids = prompt.input_ids.tolist()
    source = prompt.source if isinstance(prompt.source, list) else []
    offset = 1 if source and source[0]["role"] == "system" else 0
    out: list[Turn] = []
    i = 0
    while i < len(ids):
        if ids[i] != start_id:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(ids) and prompt.template[j] and ids[j] not in (start_id, end_id):
            j += 1  # the role line ("model\n")
        role = "".join(prompt.tokens[i + 1 : j]).strip()
        content_start = j
        while j < len(ids) and ids[j] not in (end_id, start_id):
            j += 1
        content_end = j
        end = j
        if j < len(ids) and ids[j] == end_id:
            end = j + 1
            if end < len(ids) and prompt.template[end] and ids[end] != start_id:
                end += 1  # the newline after <end_of_turn>
        message_start = content_start
        if offset and not out:
            # Gemma's template writes the system text and a blank line in front of the first user message.
            prefix = len(source[0]["content"]) + 2
            seen = 0
            while message_start < content_end and seen + len(prompt.tokens[message_start]) <= prefix:
                seen += len(prompt.tokens[message_start])
                message_start += 1
        message = len(out) + offset
        if message >= len(source):
            message = -1
        out.append(Turn(role, message, start, end, content_start, content_end, message_start))
        i = end if end > i else i + 1
    return out


def stopping_at_end_of_turn(gm: GemmaModel) -> GemmaModel:
    """``gm`` with ``<end_of_turn>`` among its stop tokens (a base model's tokenizer does not list it).

    The copy shares every module with ``gm`` (hooks, locks and caches see the same model).
    """
    from dataclasses import replace

    end_turn = gm.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if not isinstance(end_turn, int) or end_turn == gm.tokenizer.unk_token_id or end_turn in gm.stop_token_ids:
        return gm
    return replace(gm, stop_token_ids=(*gm.stop_token_ids, end_turn))
