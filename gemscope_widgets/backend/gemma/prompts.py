"""Turning a prompt into the token ids a Gemma 3 model expects.

A prompt is one of three things, everywhere in the package (:func:`make_prompt` is the one rule):

* **text**, a ``str``: tokenised with the tokenizer's ``<bos>``;
* **chat messages**, a list of ``{"role", "content"}`` dicts: rendered with the model's chat template (Gemma 3's
  when the tokenizer has none), which writes its own ``<bos>``;
* **token ids**, a 1-D integer tensor or array or a list of ints: kept exactly as given.

Gemma is very sensitive to a missing ``<bos>`` and the chat template emits one itself, so a templated text
must not get a second one from the tokenizer. Every prompt here starts with exactly one ``<bos>``
(:func:`one_bos`): a missing one is prepended and a run of leading ones collapsed to one, for token ids too;
nothing else in the ids is changed (a ``<bos>`` or ``<pad>`` further in stays, masked like any other).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from gemscope_widgets.errors import PromptError

# Gemma 3's template (as in transformers' convert_gemma3_weights.py), used when a tokenizer ships none:
# the base 270M GGUF tokenizer and local test checkpoints.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') "
    "+ message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

_ROLES = {"system", "user", "assistant", "model"}
Messages = Sequence[Mapping[str, str]]
TokenIds = torch.Tensor | np.ndarray | Sequence[int]
PROMPT_FORMS = (
    "text (a string), chat messages (a list of {'role': ..., 'content': ...} dicts) "
    "or token ids (a 1-D integer tensor or a list of ints)"
)
"""The three accepted forms of a prompt, as error messages name them."""


@dataclass
class Prompt:
    """A tokenised prompt.

    ``input_ids [T]`` long (one leading ``<bos>``); ``tokens``: each token's text; ``special [T]`` bool marks
    control tokens (``<bos>``, ``<pad>``, ``<start_of_turn>``, ...); ``template [T]`` adds the chat template's
    role lines (not steered by default); ``masked [T]`` marks the positions left out of feature results by
    default (``<bos>`` and ``<pad>``, whose huge-norm residuals light up many features). ``source``: the text,
    the checked messages (a list) or the ids as given (a tuple of ints).
    """

    input_ids: torch.Tensor
    tokens: list[str]
    special: torch.Tensor
    template: torch.Tensor
    masked: torch.Tensor
    source: str | list[dict[str, str]] | tuple[int, ...]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def kind(self) -> Literal["text", "chat", "ids"]:
        """Which of the three forms the prompt was given as."""
        if isinstance(self.source, str):
            return "text"
        return "chat" if isinstance(self.source, list) else "ids"

    @property
    def is_chat(self) -> bool:
        return self.kind == "chat"


def _validate_messages(messages: Any) -> list[dict[str, str]]:
    if len(messages) == 0:
        raise PromptError("The chat prompt has no messages: pass e.g. [{'role': 'user', 'content': 'Hi'}].")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise PromptError(
                f"Chat message {i} must be a dict with 'role' and 'content' keys, got {message!r}. "
                f"A prompt is {PROMPT_FORMS}."
            )
        if message["role"] not in _ROLES:
            raise PromptError(
                f"Chat message {i} has role {message['role']!r}; use one of {sorted(_ROLES)}."
            )
        if not isinstance(message["content"], str):
            raise PromptError(f"Chat message {i}'s content must be a string, got {type(message['content']).__name__}.")
        checked.append({"role": str(message["role"]), "content": message["content"]})
    if not any(m["content"].strip() for m in checked):
        raise PromptError("Every chat message is empty: write something in at least one message.")
    return checked


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text of each token as it appears in the prompt (spaces and newlines kept)."""
    pieces: list[str] = tokenizer.batch_decode(
        [[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    raw = None
    for j, piece in enumerate(pieces):
        if "\ufffd" in piece:
            # A byte-fallback token holding part of a multi-byte character: show its raw name instead.
            raw = raw or tokenizer.convert_ids_to_tokens(list(ids))
            pieces[j] = raw[j]
    return pieces


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's control tokens, chat turn markers included."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tok in ("<start_of_turn>", "<end_of_turn>", "<pad>", "<bos>", "<eos>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
            ids.add(tid)
    return ids


def one_bos(ids: Sequence[int], bos: int) -> list[int]:
    """``ids`` with exactly one leading ``<bos>``: a doubled one (tokenizer + chat template) dropped, a missing
    one added. Every token sequence the package runs (prompts, corpus documents) goes through this."""
    ids = list(ids)
    while len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids.pop(0)
    if not ids or ids[0] != bos:
        ids.insert(0, bos)
    return ids


def masked_ids(tokenizer: Any) -> set[int]:
    """Token ids whose positions are left out of feature results, statistics and strength units wherever they
    occur (not only at position 0): ``<bos>`` and ``<pad>``. Their residuals have a huge norm and light up
    many features; a literal ``<bos>`` inside a text is parsed as the control token and masked the same way."""
    ids = {tokenizer.bos_token_id}
    if tokenizer.pad_token_id is not None:
        ids.add(tokenizer.pad_token_id)
    return ids


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_token_ids(prompt: Any) -> bool:
    """Whether ``prompt`` is given as token ids (a tensor, an array, or a non-empty sequence of ints)."""
    if isinstance(prompt, (torch.Tensor, np.ndarray)):
        return True
    return (
        isinstance(prompt, Sequence) and not isinstance(prompt, (str, bytes, bytearray)) and len(prompt) > 0
        and all(_is_int(i) for i in prompt)
    )


def check_token_ids(prompt: Any, vocab_size: int) -> list[int]:
    """Token ids as a list of ints, or a :class:`PromptError`: one prompt's ids are a 1-D integer tensor or
    array or a list of ints, non-empty, each in ``0 .. vocab_size - 1``."""
    if isinstance(prompt, (torch.Tensor, np.ndarray)):
        if isinstance(prompt, torch.Tensor):
            integer = not (prompt.dtype.is_floating_point or prompt.dtype.is_complex or prompt.dtype == torch.bool)
        else:
            integer = bool(np.issubdtype(prompt.dtype, np.integer))
        if not integer:
            raise PromptError(f"Token ids must be integers, got a {type(prompt).__name__} of {prompt.dtype}. "
                              f"A prompt is {PROMPT_FORMS}.")
        if prompt.ndim != 1:
            raise PromptError(
                f"Token ids must be one prompt's ids, a 1-D {type(prompt).__name__}; got shape {tuple(prompt.shape)}"
                + (" (pass ids[0] for a batch of one)." if prompt.ndim == 2 and prompt.shape[0] == 1 else ".")
            )
        ids = [int(i) for i in prompt.tolist()]
    else:
        ids = [int(i) for i in prompt]
    if not ids:
        raise PromptError("The prompt has no tokens: pass at least one token id.")
    for position, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise PromptError(
                f"Token id {token} at position {position} is outside the vocabulary (0 to {vocab_size - 1})."
            )
    return ids


def make_prompt(
    tokenizer: Any,
    prompt: str | Messages | TokenIds | Prompt,
    *,
    max_tokens: int | None = None,
    vocab_size: int | None = None,
) -> Prompt:
    """The one prompt rule: text, chat messages or token ids (see the module docstring) -> :class:`Prompt`.

    Every form ends with exactly one leading ``<bos>`` (:func:`one_bos`); token ids are otherwise kept exactly.
    ``vocab_size`` bounds token ids (default: the tokenizer's size; a model passes its embedding's). Raises
    :class:`PromptError` for an empty prompt, malformed messages, ids outside the vocabulary, more than
    ``max_tokens`` tokens, or anything else (naming the three accepted forms).
    """
    if isinstance(prompt, Prompt):
        return prompt
    bos = tokenizer.bos_token_id
    if bos is None:
        raise PromptError("This tokenizer has no <bos> token; Gemma 3 needs one. Use a Gemma 3 tokenizer.")
    source: str | list[dict[str, str]] | tuple[int, ...]
    if is_token_ids(prompt):
        ids = check_token_ids(prompt, len(tokenizer) if vocab_size is None else vocab_size)
        source = tuple(ids)
    elif isinstance(prompt, str):
        if prompt == "":
            raise PromptError("The prompt is empty: pass some text.")
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        source = prompt
    elif isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
        messages = _validate_messages(prompt)
        template = getattr(tokenizer, "chat_template", None) or GEMMA3_CHAT_TEMPLATE
        text = tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=messages[-1]["role"] != "assistant",
        )
        # The template already wrote <bos>; the tokenizer must not add another.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        source = messages
    else:
        raise PromptError(f"A prompt must be {PROMPT_FORMS}; got {type(prompt).__name__}.")
    ids = one_bos(ids, bos)
    if max_tokens is not None and len(ids) > max_tokens:
        raise PromptError(
            f"The prompt is {len(ids)} tokens long; the limit here is {max_tokens}. "
            "Shorten the text or raise max_tokens."
        )
    controls = special_ids(tokenizer)
    special = torch.tensor([i in controls for i in ids], dtype=torch.bool)
    template_mask = special.clone()
    start_turn = tokenizer.convert_tokens_to_ids("<start_of_turn>")
    end_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    tokens = token_strings(tokenizer, ids)
    if isinstance(source, list):
        # The role line after <start_of_turn> ("user\n") and the newline after <end_of_turn> are template text.
        in_role = False
        for j, tid in enumerate(ids):
            if tid == start_turn:
                in_role = True
                continue
            if in_role:
                template_mask[j] = True
                if "\n" in tokens[j]:
                    in_role = False
            elif j > 0 and ids[j - 1] == end_turn and tokens[j].strip() == "":
                template_mask[j] = True
    hidden = masked_ids(tokenizer)
    masked = torch.tensor([i in hidden for i in ids], dtype=torch.bool)
    return Prompt(
        input_ids=torch.tensor(ids, dtype=torch.long),
        tokens=tokens,
        special=special,
        template=template_mask,
        masked=masked,
        source=source,
    )
