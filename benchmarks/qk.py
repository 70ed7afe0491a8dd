"""QK attribution on CPU: seconds for one (head, query position, key position) on the real 270M, against its target
(at most 10 s for a 64-token prompt on 2 cores) and as a ratio to one forward pass measured in the same run.

    python -m benchmarks.qk [--tokens 64] [--set demo|random] [--threads 2] [--record]

In one process: the baseline (one forward pass of the model on the prompt, median of 3), ``attribute`` (not
timed against the target; ``max_feature_nodes`` 64, which QK's cost does not depend on: every active feature at
the two positions is a term), then ``graph.qk`` on a local and a global layer, first on a fresh graph ("cold":
the frozen capture, the rotary embeddings and the transcoder encoding, cached per graph; wall and CPU seconds,
and the load average, since a shared machine stretches wall time) and then again ("warm",
what each further click costs). ``--set random`` uses transcoders of the demo shapes with random weights
(``benchmarks.circuit_case``), so no training is needed. ``--record`` writes ``benchmarks/results/qk_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

from benchmarks.circuit_case import TEXT, _random_set
from benchmarks.harness import timed

TARGET_SECONDS = 10.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(ROOT, "benchmarks", "results", "qk_cpu.json")



def run(n_tokens: int, which: str, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from gemscope_widgets.backend.circuits.attached_state import forget
    from gemscope_widgets.backend.circuits.attribution import attribute
    from gemscope_widgets.backend.gemma.model import load_model

    gm = load_model("gemma-3-270m", device="cpu", dtype="float32", progress=False)
    ids = gm.prompt(TEXT).input_ids[:n_tokens]
    if which == "demo":
        from gemscope_widgets.backend.default_transcoders import load_demo_transcoders

        transcoders = load_demo_transcoders(gm, progress=False)
    else:
        transcoders = _random_set(gm, ids)
    with torch.no_grad():
        gm.model(input_ids=ids[None], use_cache=False)  # warm-up
        forwards = [timed(lambda: gm.model(input_ids=ids[None], use_cache=False))[:2] for _ in range(3)]
    baseline = statistics.median(f[0] for f in forwards)
    baseline_cpu = statistics.median(f[1] for f in forwards)
    attr_s, _, graph = timed(lambda: attribute(gm, transcoders, ids, max_feature_nodes=64, progress=False))
    types = gm.text_model.config.layer_types
    last = len(ids) - 1
    cases = [
        ("local", types.index("sliding_attention") + 4, 0, last, last - 10),
        ("global", types.index("full_attention"), 1, last, 3),
    ]
    rows = []
    for name, layer, head, q, k in cases:
        forget(graph)  # cold: as on a fresh graph
        graph.replacement.forward = None
        cold_s, cold_cpu, result = timed(lambda: graph.qk(layer, head, q, k))  # noqa: B023
        warm_s, warm_cpu, _ = timed(lambda: graph.qk(layer, head, q, k))  # noqa: B023
        rows.append({
            "case": name, "layer": layer, "head": head, "query_pos": q, "key_pos": k,
            "cold_seconds": cold_s, "cold_cpu_seconds": cold_cpu, "warm_seconds": warm_s,
            "warm_cpu_seconds": warm_cpu, "cold_over_forward": cold_s / baseline,
            "warm_over_forward": warm_s / baseline, "cold_cpu_over_forward_cpu": cold_cpu / baseline_cpu,
            "warm_cpu_over_forward_cpu": warm_cpu / baseline_cpu,
            "n_q_terms": len(result.q_terms), "n_k_terms": len(result.k_terms), "score": result.score,
            "within_target": cold_s <= TARGET_SECONDS,
        })
    return {
        "tokens": len(ids), "set": which, "threads": threads, "forward_seconds": baseline,
        "forward_cpu_seconds": baseline_cpu,        "load_average_1min": os.getloadavg()[0],
        "attribute_seconds": attr_s, "target_seconds": TARGET_SECONDS, "cases": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.qk", description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--set", dest="which", choices=("demo", "random"), default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    out = run(args.tokens, args.which, args.threads)
    text = json.dumps(out, indent=2)
    print(text)
    if args.record:
        with open(RESULT, "w") as fh:
            fh.write(text + "\n")
    return 0 if all(r["within_target"] for r in out["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
