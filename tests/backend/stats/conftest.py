"""Fixtures of the statistics tests: a small SAE on the tiny model and an isolated cache folder."""

from __future__ import annotations

import pytest

from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France. The capital of Italy is Rome.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)",
    "Sparse autoencoders find features in the residual stream of a language model.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
    "Gemma reads text and writes text. The lazy dog sleeps.",
    "The capital of France is Paris, and the fox is quick.",
    "Rome, Paris, fox, dog: the residual stream of a model.",
    "A language model reads the text one token at a time.",
]
PARAMS = {"top_k": 4, "n_quantile": 3, "window": (3, 2), "max_doc_tokens": 24, "n_bins": 8}


@pytest.fixture
def scan_sae_folder(tmp_path):
    return write_gemma_scope_sae(
        tmp_path / "sae" / "resid_post/layer_1_width_16k_l0_medium",
        kind="sae", site="resid_post", layer=1, width=96, seed=3, threshold=0.3,
    )


@pytest.fixture
def scan_sae(scan_sae_folder):
    """A fresh SAE per test (tests modify its weights)."""
    return load_sae_folder(scan_sae_folder)


@pytest.fixture
def stats_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def scan_corpus():
    return list(CORPUS)


@pytest.fixture
def scan_params():
    return dict(PARAMS)
