"""The benchmark's real-English texts, all from the Python standard library (offline, reproducible).

The prompt is the Zen of Python followed by ``json.__doc__``, cut to exactly 128 tokens (``<bos>`` included),
as in the published peer table. The calibration text is the docstrings of argparse, subprocess, collections,
logging and threading; the scan corpus and the long payload prompts come from ``pydoc_data.topics``.
"""

from __future__ import annotations

import codecs
import contextlib
import io
from dataclasses import replace
from typing import Any


def zen_of_python() -> str:
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


def prompt_text() -> str:
    import json

    return zen_of_python() + "\n\n" + (json.__doc__ or "")


def calibration_text() -> str:
    import argparse
    import collections
    import logging
    import subprocess
    import threading

    return "\n\n".join(m.__doc__ or "" for m in (argparse, subprocess, collections, logging, threading))


def topics_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def corpus_texts(count: int, chars: int = 600) -> list[str]:
    """``count`` paragraphs of about ``chars`` characters from the Python documentation topics."""
    text = topics_text()
    pieces = [text[i : i + chars] for i in range(0, len(text), chars)]
    return pieces[:count]


def exact_prompt(gm: Any, text: str, n_tokens: int) -> Any:
    """A :class:`Prompt` of exactly ``n_tokens`` tokens (``<bos>`` included): ``text`` tokenised and cut."""
    full = gm.prompt(text, max_tokens=10**6)
    if len(full) < n_tokens:
        raise ValueError(f"the benchmark text is only {len(full)} tokens long; {n_tokens} are needed")
    cut = slice(0, n_tokens)
    return replace(
        full,
        input_ids=full.input_ids[cut].clone(),
        tokens=full.tokens[cut],
        special=full.special[cut].clone(),
        template=full.template[cut].clone(),
        masked=full.masked[cut].clone(),
    )


def long_text(min_chars: int) -> str:
    """Enough real English for prompts of a few thousand tokens."""
    text = prompt_text() + "\n\n" + topics_text()
    return text[: max(min_chars, 1)]
