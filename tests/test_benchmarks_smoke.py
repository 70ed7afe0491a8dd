"""The benchmark harness cannot rot: the smoke run on a tiny model fills every case with numbers or an error."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = ("features", "generation", "scan", "payload", "load")
EXTERNAL = ("heatmap", "steering", "scan", "evidence")


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "GEMSCOPE_CACHE": str(out / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "latest.json").read_text())
    results["_markdown"] = (out / "latest.md").read_text()
    return results


@pytest.mark.timeout(900)
def test_every_case_has_numbers_or_an_explicit_error(smoke_results: dict) -> None:
    assert smoke_results["config"]["smoke"] is True
    assert set(CASES) <= set(smoke_results["cases"])
    for name in CASES:
        case = smoke_results["cases"][name]
        assert case["rows"], f"case {name} has no rows"
        for row in case["rows"]:
            if "error" in row:
                assert isinstance(row["error"], str) and len(row["error"]) > 10, (name, row)
            else:
                assert isinstance(row["value"], (int, float)) and math.isfinite(row["value"]) and row["value"] > 0
                assert row["unit"]
    for name in EXTERNAL:
        result = smoke_results["external"][name]
        assert isinstance(result, dict) and result, name


@pytest.mark.timeout(900)
def test_baselines_and_our_paths_are_measured(smoke_results: dict) -> None:
    """The plain-HF baselines always run (transformers is a core dependency); ratios are relative to them."""
    features = {(r["name"], r["dtype"]): r for r in smoke_results["cases"]["features"]["rows"]}
    for dtype in ("fp32", "bf16"):
        base = features[("HF early exit (hook raises) + SAE", dtype)]
        assert base["ratio"] == pytest.approx(1.0)
        ours = features[("ours: prompt_features (early exit + encode + CSR)", dtype)]
        assert "value" in ours, ours.get("error")
        assert ours["ratio"] == pytest.approx(ours["value"] / base["value"])
        assert ours["pct_of_peak"] > 0
    payload = smoke_results["cases"]["payload"]["rows"][0]
    # The calibrated fixture SAE makes about 50 features fire per token.
    assert 15 < payload["l0"] < 150, payload
    load = {r["name"]: r for r in smoke_results["cases"]["load"]["rows"]}
    assert load["ours: load_model (embedded default) peak RSS"]["value"] > 50  # MB: a real process was measured


@pytest.mark.timeout(900)
def test_missing_peers_are_reported_not_blank(smoke_results: dict) -> None:
    versions = smoke_results["peer_versions"]
    rows = smoke_results["cases"]["features"]["rows"]
    tl_row = next(r for r in rows if r["name"].startswith("TransformerLens"))
    if versions["transformer-lens"] == "not installed":
        assert tl_row["error"].startswith("not installed: ")
    assert "TransformerLens" in smoke_results["_markdown"]
    assert "| path | dtype | value | ratio |" in smoke_results["_markdown"]


def test_interleaved_timing_reports_the_exact_error() -> None:
    from benchmarks.harness import Timing, error_text, time_interleaved

    def boom() -> None:
        raise RuntimeError("kaboom 42")

    out = time_interleaved({"ok": lambda: sum(range(1000)), "bad": boom}, repeats=3)
    assert isinstance(out["ok"], Timing) and len(out["ok"].runs) == 3
    assert isinstance(out["bad"], RuntimeError)
    assert error_text(out["bad"]).startswith("RuntimeError: kaboom 42 (at test_benchmarks_smoke.py:")


def test_flop_counts_match_the_published_gemma_3_270m_figures() -> None:
    from transformers import Gemma3TextConfig

    from benchmarks.hardware import forward_flops, sae_encode_flops

    cfg = Gemma3TextConfig(
        vocab_size=262144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
    )
    per_token_to_l9 = forward_flops(cfg, 128, layers=10) / 128
    assert per_token_to_l9 / 1e6 == pytest.approx(114, rel=0.02)  # peers-performance table: 114 MFLOP/token
    head = forward_flops(cfg, 1, layers=0, logits_positions=1)
    assert head / 1e6 == pytest.approx(335.5, rel=0.01)
    assert sae_encode_flops(640, 16384, 1) / 1e6 == pytest.approx(21, rel=0.01)


def test_fresh_process_peak_rss_is_the_childs_own() -> None:
    """The parent's footprint must not leak into the child's figure (ru_maxrss survives fork + exec)."""
    from benchmarks.harness import run_fresh

    ballast = bytearray(400 * 2**20)  # the parent holds 400 MB
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    small = run_fresh("_report()")
    big = run_fresh("x = bytearray(250 * 2**20)\n_report()")
    assert small["peak_rss_mb"] < 200, small
    assert 250 < big["peak_rss_mb"] < 400, big
    del ballast


@pytest.mark.timeout(900)
def test_evidence_ratios_are_measured(smoke_results: dict) -> None:
    """The probe and entity scan are timed against plain batched forwards of the same prompts in the same run."""
    evidence = smoke_results["external"]["evidence"]
    assert "probe_ratio" in evidence, evidence.get("probe_error", evidence)
    assert evidence["probe_ratio"] == pytest.approx(evidence["probe_ours_s"] / evidence["probe_bare_s"])
    # The tiny random model knows no entity, so its scan may end in an explicit error; the real run has a ratio.
    assert "entities_ratio" in evidence or len(evidence["entities_error"]) > 10, evidence
