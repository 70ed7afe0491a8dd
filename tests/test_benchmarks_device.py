"""The device benchmark (real-shape random-weight models) runs end to end on CPU with the smallest shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
def test_device_mode_on_cpu_with_the_tiny_shape(tmp_path):
    env = {**os.environ, "GEMSCOPE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--device", "cpu", "--shapes", "tiny", "--widths", "1024",
         "--repeats", "1", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "device-cpu.json").read_text())["rows"]
    cases = [r["case"] for r in rows]
    assert cases[:2] == ["features, 128 tokens", "features, 1024 tokens"]
    assert any(c.startswith("scan") for c in cases) and "steered pair decoding" in cases
    assert all(r["ratio"] > 0 for r in rows)
    assert "| tiny | 1,024 |" in (tmp_path / "device-cpu.md").read_text()
