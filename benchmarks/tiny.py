"""The smoke run's model: the tiny random Gemma 3 of ``gemscope_widgets.testing.tiny``, with a 1k-token
tokenizer trained on the benchmark texts (so prompts tokenise as real text does)."""

from __future__ import annotations

from pathlib import Path

from .texts import calibration_text, prompt_text, topics_text


def build_tiny_checkpoint(folder: Path) -> Path:
    """Write (once) a 4-layer, 64-wide random Gemma 3 into ``folder``."""
    from gemscope_widgets.testing.tiny import build_tiny_checkpoint as build

    texts = [prompt_text(), calibration_text(), topics_text()[:200_000]]
    return build(folder, texts=texts, vocab=1024, reuse=True)
