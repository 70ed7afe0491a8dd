"""Shared fixtures live in tests/fixtures/*, loaded as plugins so each stays small."""

import os

# Real-model and browser tests share one model cache per machine; tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.gemma_scope_files",
    "tests.fixtures.lab",
    "tests.fixtures.demo",
]
