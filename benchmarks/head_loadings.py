"""Head loadings on CPU: time to split every kept cross-position edge over heads, as a ratio to ``attribute``
measured in the same run (target: at most 1.5 on 2 cores for 16 and 64 tokens).

    python -m benchmarks.head_loadings [--tokens 16 64] [--set demo|random] [--threads 2] [--record] [--smoke]

In one process per prompt length: ``attribute`` on the real 270M (the package's defaults: 4,096 feature nodes,
batch 256), then ``graph.head_loadings()`` on the fresh graph (everything it costs: the frozen capture, the
transcoder encoding, pruning with the default thresholds and the split), then one ``edge_heads`` of an edge that
pruning dropped (what a click on any edge costs once the graph's frozen state is held). Reports wall and CPU
seconds, their ratios to ``attribute``, the number of kept cross-position edges and their sources and targets, and
the largest ``|Σ shares − edge| / |edge|`` (an edge under 1e-3 of its target's largest edge measured against that
floor, where the graph's float32 edge is itself no more exact; the unfloored figure and count are reported too).
``--set random`` uses transcoders of the demo shapes with random weights (``benchmarks.circuit_case``), so no
training is needed; ``--smoke`` runs the tiny random model instead (seconds: keeps the script from rotting, its
numbers mean nothing). ``--record`` writes
``benchmarks/results/head_loadings_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.circuit_case import BATCH_SIZE, MAX_FEATURE_NODES, TEXT, _random_set
from benchmarks.harness import timed

TARGET_RATIO = 1.5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(ROOT, "benchmarks", "results", "head_loadings_cpu.json")



def _model_and_set(which: str, n_tokens: int) -> tuple[Any, Any, Any]:
    from gemscope_widgets.backend.gemma.model import load_model

    if which == "smoke":
        from benchmarks.tiny import build_tiny_checkpoint
        from gemscope_widgets.testing.tiny import TINY_NAME
        from gemscope_widgets.testing.transcoders import write_calibrated_set

        folder = Path(tempfile.mkdtemp(prefix="bench-head-loadings-"))
        gm = load_model(build_tiny_checkpoint(folder / "model"), device="cpu", dtype="float32", name=TINY_NAME)
        transcoders: Any = write_calibrated_set(gm, folder / "set", width=128, l0=8, affine=True, seed=1)
        return gm, transcoders, gm.prompt(TEXT).input_ids[:n_tokens]
    gm = load_model("gemma-3-270m", device="cpu", dtype="float32", progress=False)
    ids = gm.prompt(TEXT).input_ids[:n_tokens]
    if which == "demo":
        from gemscope_widgets.backend.default_transcoders import load_demo_transcoders

        transcoders = load_demo_transcoders(gm, progress=False)
    else:
        transcoders = _random_set(gm, ids)
    return gm, transcoders, ids


def measure(n_tokens: int, which: str, threads: int) -> dict[str, Any]:
    """One prompt length in this process: attribute, then head loadings of the fresh graph, then one click."""
    import torch

    torch.set_num_threads(threads)
    from gemscope_widgets.backend.circuits.attribution import attribute
    from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders

    gm, transcoders, ids = _model_and_set(which, n_tokens)
    tset = load_transcoders(transcoders)
    attr_s, attr_cpu, graph = timed(lambda: attribute(gm, tset, ids, max_feature_nodes=MAX_FEATURE_NODES,
                                                       batch_size=BATCH_SIZE, progress=False))
    hl_s, hl_cpu, loadings = timed(lambda: graph.head_loadings(progress=False))
    total = loadings.shares.double().sum((1, 2))
    weights = loadings.weights.double()
    gap = (total - weights).abs()
    floor = 1e-3 * graph.adjacency_matrix.abs().max(1).values[loadings.edges[:, 0]].double()
    worst = float((gap / torch.maximum(weights.abs(), floor)).max()) if len(loadings) else 0.0
    plain = gap / weights.abs()
    # A click on an edge pruning dropped: the frozen state is held, only this edge's source is carried forward.
    kept = {tuple(e) for e in loadings.edges.tolist()}
    pos = [graph.node_info(k).pos for k in range(graph.n_nodes)]
    target = graph.logit_slice.start
    source = next(s for s in range(graph.n_selected + graph.n_layers * graph.n_pos)
                  if (target, s) not in kept and pos[s] < pos[target] and graph.adjacency_matrix[target, s] != 0)
    click_s, _, _ = timed(lambda: graph.edge_heads(source, target))
    return {
        "tokens": len(ids), "set": which, "threads": threads,
        "attribute_seconds": round(attr_s, 6), "attribute_cpu_seconds": round(attr_cpu, 6),
        "head_loadings_seconds": round(hl_s, 6), "head_loadings_cpu_seconds": round(hl_cpu, 6),
        "ratio_to_attribute": round(hl_s / attr_s, 4), "cpu_ratio_to_attribute": round(hl_cpu / attr_cpu, 4),
        "target_ratio": TARGET_RATIO, "one_unkept_edge_seconds": round(click_s, 3),
        "n_selected": graph.n_selected, "kept_cross_position_edges": len(loadings),
        "sources": int(loadings.edges[:, 1].unique().numel()), "targets": int(loadings.edges[:, 0].unique().numel()),
        "max_relative_sum_error": worst,
        "max_relative_sum_error_unfloored": float(plain.max()) if len(loadings) else 0.0,
        "edges_over_1e-4_unfloored": int((plain > 1e-4).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.head_loadings", description=__doc__)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--set", dest="which", choices=("demo", "random"), default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="the tiny random model (seconds; numbers meaningless)")
    parser.add_argument("--record", action="store_true", help=f"write {os.path.relpath(RESULT, ROOT)}")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    which = "smoke" if args.smoke else args.which
    if args.one:
        print(json.dumps(measure(args.tokens[0], which, args.threads)))
        return 0
    load_before = os.getloadavg()[0]
    rows = []
    for n in args.tokens:  # each length in its own process: one length's buffers do not slow the next
        cmd = [sys.executable, "-m", "benchmarks.head_loadings", "--one", "--tokens", str(n), "--threads",
               str(args.threads), *(["--smoke"] if args.smoke else ["--set", args.which])]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        row = json.loads(lines[-1]) if lines else {"tokens": n, "error": done.stderr[-2000:] or "no output"}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.record and not args.smoke:
        import torch

        report = {
            "what": "seconds to split every kept cross-position edge of an attribution graph of the embedded Gemma 3 "
                    "270M over attention heads (graph.head_loadings on a fresh graph, default pruning), as a ratio "
                    "to the attribute call that built the graph in the same process",
            "set": args.which, "threads": args.threads, "max_feature_nodes": MAX_FEATURE_NODES,
            "batch_size": BATCH_SIZE, "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "load_average_before": round(load_before, 2),
            "note": "CPU only; with the load average above the thread count other jobs shared the cores, so absolute "
                    "times are longer; the ratios compare the two calls of one process.",
            "rows": rows,
        }
        if os.path.isfile(RESULT):  # keep the other prompt lengths of an earlier run of the same set
            with open(RESULT) as fh:
                earlier = json.load(fh)
            if earlier.get("set") == args.which:
                kept = [r for r in earlier.get("rows", []) if r.get("tokens") not in set(args.tokens)]
                report["rows"] = sorted(kept + rows, key=lambda r: r.get("tokens", 0))
        with open(RESULT, "w") as fh:
            json.dump(report, fh, indent=1)
            fh.write("\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
