"""Where the time of our feature extraction goes: torch.profiler operator totals, grouped by stage."""

from __future__ import annotations

from typing import Any

import torch

# Operator name -> stage, for a readable split (matmuls of the decoder vs the SAE are told apart by shape).
_STAGES = (
    ("aten::nonzero", "sparse extraction"),
    ("aten::sort", "sparse extraction"),
    ("aten::argsort", "sparse extraction"),
    ("aten::bincount", "sparse extraction"),
    ("aten::index", "sparse extraction"),
    ("aten::scaled_dot_product_attention", "attention"),
    ("aten::_scaled_dot_product", "attention"),
    ("aten::copy_", "dtype casts / copies"),
    ("aten::to", "dtype casts / copies"),
    ("aten::_to_copy", "dtype casts / copies"),
)


def profile_call(fn: Any, runs: int = 3, top: int = 15) -> dict[str, Any]:
    """Profile ``fn`` (after one warm-up) and return the top operators by self CPU time, per call."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(runs):
            fn()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) / runs
    rows = []
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        rows.append(
            {
                "op": e.key,
                "shapes": str(e.input_shapes)[:120],
                "self_ms": e.self_cpu_time_total / runs / 1000,
                "share": e.self_cpu_time_total / runs / total if total else 0.0,
                "calls": e.count // runs,
            }
        )
    stages: dict[str, float] = {}
    for e in events:
        stage = next((label for prefix, label in _STAGES if e.key.startswith(prefix)), None)
        if stage is None:
            if e.key in ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear", "aten::bmm"):
                stage = "matmul"
            else:
                stage = "other ops"
        stages[stage] = stages.get(stage, 0.0) + e.self_cpu_time_total / runs / 1000
    return {"total_self_ms": total / 1000, "stages_ms": stages, "top_ops": rows}


def profile_features(gm: Any, sae: Any, prompt: Any) -> dict[str, Any]:
    from gemscope_widgets.backend.analysis.features import prompt_features

    with torch.inference_mode():
        return profile_call(lambda: prompt_features(gm, [sae], prompt))
