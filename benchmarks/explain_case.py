"""Cost of ``explain`` per feature on CPU: the embedded Gemma 3 270M explains and scores features of the demo SAE.

    python -m benchmarks.explain_case [--features 2] [--settings small|default] [--threads 2] [--record]

In one process: the baseline (one plain forward of the model over one scorer prompt, ~650 tokens, median of 3),
then ``explain`` on the first ``--features`` features that can be scored (uncached: a fresh cache folder), with
the per-feature prefills (the explainer's prompt, each method's shared prefix and batches), generated tokens,
wall and CPU seconds, and the CPU seconds as a ratio to the baseline forward. ``small`` are the test settings (3
examples, 5 + 3 contexts over 5 deciles, 6 new tokens); ``default`` the function's defaults (20 examples, 20 + 20
contexts over 10 deciles, 64 new tokens). The load average is recorded: a shared machine stretches wall time.
``--record`` writes ``benchmarks/results/explain_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
import warnings
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(ROOT, "benchmarks", "results", "explain_cpu.json")
SETTINGS = {
    "small": {"n_explain": 3, "deciles": 5, "n_test": 5, "n_non": 3, "max_new_tokens": 6, "logit_k": 3,
              "batch_size": 8},
    "default": {},
}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(n_features: int, settings: str, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from gemscope_widgets import FeatureLabels, explain
    from gemscope_widgets.backend.analysis.explain_prompts import chat_ids, scorer_messages
    from gemscope_widgets.backend.analysis.explain_scoring import (
        MIN_ACTIVATING,
        MIN_NON_ACTIVATING,
        held_out_contexts,
    )
    from gemscope_widgets.backend.default import load_default
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats

    gm, sae = load_default(device="cpu", dtype="float32", progress=False)
    labels = FeatureLabels(gm, sae, FeatureStats.cached(gm, sae))
    held = labels.held_out()
    features = []
    for f in range(int(sae.width)):
        on, off = held_out_contexts(held, f)
        if len(on) >= 2 * MIN_ACTIVATING and len(off) >= 2 * MIN_NON_ACTIVATING:
            features.append(f)
        if len(features) == n_features:
            break
    ids = torch.tensor([chat_ids(gm, scorer_messages("detection", "The word 'the'.", "a short text here"), "[")])
    base = []
    with torch.inference_mode():
        gm.model(ids)
        for _ in range(3):
            c0 = _cpu_s()
            gm.model(ids)
            base.append(_cpu_s() - c0)
    baseline = statistics.median(base)
    rows = []
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the base-model warning
        for f in features:
            c0, t0 = _cpu_s(), time.perf_counter()
            e = explain(labels, [f], gm, cache=folder, progress=False, **SETTINGS[settings])[f]
            cpu, wall = _cpu_s() - c0, time.perf_counter() - t0
            rows.append({"feature": f, "explanation": e.text, "prefills": e.prefills, "new_tokens": e.new_tokens,
                         "contexts": len(e.detection.contexts), "detection": e.detection.balanced_accuracy,
                         "fuzzing": e.fuzzing.balanced_accuracy, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                         "cpu_vs_forward": round(cpu / baseline, 1)})
    return {"date": time.strftime("%Y-%m-%d"), "settings": settings, "explainer": gm.name, "threads": threads,
            "baseline_forward_tokens": int(ids.shape[1]), "baseline_forward_cpu_s": round(baseline, 3),
            "load_average": os.getloadavg()[0], "features": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=int, default=2)
    parser.add_argument("--settings", choices=sorted(SETTINGS), default="small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    result = run(args.features, args.settings, args.threads)
    print(json.dumps(result, indent=1))
    if args.record:
        os.makedirs(os.path.dirname(RESULT), exist_ok=True)
        with open(RESULT, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
