"""Label tokens: how a label shows a vocabulary token, and which vocabulary entries a label's token names.

A label shows a token cleaned (:func:`clean_token`: whitespace and the SentencePiece ``▁`` trimmed, control tokens
and byte pieces dropped, cut to 14 characters); :func:`token_set` maps label tokens back to every vocabulary id whose
cleaned text is the same, case-insensitively (``"Error"`` names ``"▁Error"``, ``"error"`` and ``"Error"``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

_MAX_TOKEN_CHARS = 14


def clean_token(token: str) -> str:
    """A token as a label shows it: whitespace trimmed, control tokens and byte pieces dropped ("" then)."""
    text = token.strip().replace("\u2581", "")
    if not text or (text.startswith("<") and text.endswith(">")) or "\ufffd" in text:
        return ""
    if not text.isprintable():
        return ""
    return text if len(text) <= _MAX_TOKEN_CHARS else text[: _MAX_TOKEN_CHARS - 1] + "…"


@functools.lru_cache(maxsize=4)
def _vocab_index(tokenizer: Any) -> dict[str, tuple[int, ...]]:
    """Cleaned, lower-cased token text -> every vocabulary id with that text (kept per tokenizer)."""
    index: dict[str, list[int]] = {}
    for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        key = clean_token(str(tok)).lower() if tok is not None else ""
        if key:
            index.setdefault(key, []).append(i)
    return {k: tuple(v) for k, v in index.items()}


def token_set(tokenizer: Any, tokens: Iterable[str]) -> frozenset[int]:
    """Vocabulary ids whose cleaned text (:func:`clean_token`, case-insensitive) is one of ``tokens``."""
    index = _vocab_index(tokenizer)
    out: set[int] = set()
    for t in tokens:
        out.update(index.get(clean_token(t).lower(), ()))
    return frozenset(out)


__all__ = ["clean_token", "token_set"]
