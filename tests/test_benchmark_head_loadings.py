"""benchmarks/head_loadings.py cannot rot: its measurement runs on the tiny model and reports every number."""

from __future__ import annotations

import math

import pytest
import torch


def test_head_loadings_benchmark_measures_on_the_tiny_model() -> None:
    from benchmarks.head_loadings import measure

    threads = torch.get_num_threads()
    try:
        row = measure(12, "smoke", 2)
    finally:
        torch.set_num_threads(threads)
    assert row["kept_cross_position_edges"] > 10 and row["sources"] > 1 and row["targets"] > 1
    for key in ("attribute_seconds", "head_loadings_seconds", "ratio_to_attribute", "cpu_ratio_to_attribute"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    # the ratio is of the unrounded times; the reported seconds are rounded to 1 ms
    assert row["ratio_to_attribute"] == pytest.approx(row["head_loadings_seconds"] / row["attribute_seconds"],
                                                      rel=5e-3)
    assert row["max_relative_sum_error"] < 1e-4
