"""Transcoder sets for circuit tests (Gemma Scope 2 layout, calibrated random weights; see
gemscope_widgets/testing/transcoders.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemscope_widgets.testing.transcoders import write_calibrated_set


@pytest.fixture(scope="session")
def tiny_transcoder_root(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Calibrated Gemma Scope 2-layout sets for the tiny model: affine (width 128), plain (width 64), a CLT."""
    root = tmp_path_factory.mktemp("tiny_transcoders")
    write_calibrated_set(tiny_model, root / "affine", width=128, l0=8, affine=True, seed=1)
    write_calibrated_set(tiny_model, root / "plain", width=64, l0=8, affine=False, seed=2)
    write_calibrated_set(tiny_model, root / "clt", width=256, l0=8, affine=True, kind="clt", seed=3)
    return root


@pytest.fixture(scope="session")
def real_transcoder_root(real_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 18-layer affine set (width 512, ~16 features per token) for the real 270M in the Gemma Scope 2 layout."""
    root = tmp_path_factory.mktemp("real_transcoders")
    return write_calibrated_set(real_model, root, width=512, l0=16, affine=True, seed=4)


@pytest.fixture(scope="session")
def real_demo_graph(real_model):
    """The real 270M's graph of "The capital of France is" with the demo transcoder set, 256 feature rows (about
    20 s on two idle cores; trains the demo set on first use)."""
    from gemscope_widgets.backend.circuits.attribution import attribute
    from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
    from gemscope_widgets.backend.default_transcoders import load_demo_transcoders

    tset = load_transcoders(load_demo_transcoders(real_model, progress=False))
    return attribute(real_model, tset, "The capital of France is", max_feature_nodes=256, progress=False)
