"""The adjacency matrix equals circuit-tracer 0.5.0's on the same small Gemma 3 and Gemma Scope 2-layout files.

Runs only where the peer environment exists (``bash benchmarks/circuit_tracer_venv.sh`` builds ``.cache/venv-ct``):
circuit-tracer cannot share this package's transformers 5.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

VENV = Path(__file__).resolve().parents[3] / ".cache" / "venv-ct"


@pytest.mark.slow
@pytest.mark.skipif(not (VENV / "bin" / "python").is_file(), reason="no circuit-tracer environment (.cache/venv-ct)")
def test_adjacency_equals_circuit_tracer(tmp_path):
    from benchmarks.peers_circuit_tracer import main

    assert main(["--out", str(tmp_path), "--venv", str(VENV)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    for case in ("affine", "plain", "clt", "affine-256-features"):
        r = report[case]
        assert "error" not in r, r.get("error")
        assert r["same_active_features"] and r["same_logit_tokens"] and r["same_input_tokens"], case
        assert r["activation_rel"] < 1e-5 and r["logit_probability_rel"] < 1e-5, case
        assert r["adjacency_rel_features"] < 1e-4 and r["adjacency_rel_errors"] < 1e-4, case
        # circuit-tracer's token edges lack Gemma's embedding scale sqrt(d_model); with it they agree.
        assert r["adjacency_rel_tokens_times_embed_scale"] < 1e-4, case
    assert report["affine"]["same_selected_features"] and report["clt"]["same_selected_features"]
    overlap = report["affine-256-features"].get("selected_overlap", [256, 256])
    assert overlap[0] >= 0.95 * overlap[1]
