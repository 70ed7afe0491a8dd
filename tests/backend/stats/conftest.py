"""Fixtures of the statistics tests: a small SAE on the tiny model and an isolated cache folder."""

from __future__ import annotations

import pytest

from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae
from tests.helpers import SCAN_CORPUS, SCAN_PARAMS


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
    return list(SCAN_CORPUS)


@pytest.fixture
def scan_params():
    return dict(SCAN_PARAMS)
