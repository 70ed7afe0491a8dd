"""Attribution graphs on CPU: time and peak memory to build a pruned graph, as a ratio to forward+backward.

    python -m benchmarks.circuit_case [--tokens 16 64] [--set demo|random] [--threads 2]

For each prompt length, in the same run and each in a fresh process (so peak memory is its own): the baseline
(one forward and one backward pass of the model on the prompt, the unit of work attribution repeats in
batches) and ``attribute`` + ``prune`` with the transcoder set. Reports wall time, peak RSS above the process's
RSS after loading, and the ratio attribute / baseline. ``--set demo`` uses the embedded 270M's demo transcoder
set (trained on first use); ``--set random`` a set of the same shapes with random weights whose thresholds are
calibrated on the prompt so that about 16 features fire per token (same work, no training needed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

TEXT = (
    "The capital of France is Paris, and the capital of Italy is Rome. In the year 1969 the first people walked "
    "on the Moon; they returned safely to Earth. def add(a, b): return (a + b) * (a - b) if a > b else [a, b]"
)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _random_set(gm: Any, ids: Any, width: int = 1024, l0: int = 16) -> list[Any]:
    """Affine transcoders of the demo shapes with random weights, thresholds set so ``l0`` features fire."""
    import torch

    from gemscope_widgets.backend.dictionaries.sae import JumpReLUSAE, SAEConfig
    from gemscope_widgets.backend.gemma.capture import capture
    from gemscope_widgets.backend.training.transcoders import mlp_in_point, mlp_out_point

    gen = torch.Generator().manual_seed(0)
    d = gm.d_model
    points = [mlp_in_point(layer) for layer in range(gm.n_layers)]
    acts = capture(gm, ids.unsqueeze(0), points)
    out = []
    for layer, point in enumerate(points):
        x = acts[point][0, 1:].float()
        w_enc = torch.randn(d, width, generator=gen) / d**0.5
        pre = x @ w_enc
        threshold = torch.quantile(pre, 1 - l0 / width, dim=0).clamp_min(1e-3)
        w_dec = torch.randn(width, d, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        config = SAEConfig(
            kind="transcoder", site="transcoder", hook_in=point, hook_out=mlp_out_point(layer),
            hook_points_in=(point,), hook_points_out=(mlp_out_point(layer),), layers_in=(layer,),
            layers_out=(layer,), width=width, d_in=d, d_out=d, l0=float(l0), model_name=gm.name, affine=True,
            name=f"random/layer_{layer}", repo_id=None, path="",
        )
        out.append(JumpReLUSAE(
            config, w_enc=w_enc, b_enc=torch.zeros(width), threshold=threshold, w_dec=w_dec,
            b_dec=torch.zeros(d), affine_skip_connection=torch.randn(d, d, generator=gen) / d**0.5 * 0.1,
        ))
    return out


def measure_one(kind: str, n_tokens: int, which: str, threads: int) -> dict[str, Any]:
    """One measurement in this process: ``kind`` is ``baseline`` or ``attribute``."""
    import torch

    torch.set_num_threads(threads)
    from gemscope_widgets.backend.gemma.model import load_model

    gm = load_model("gemma-3-270m", device="cpu", dtype="float32", progress=False)
    ids = gm.prompt(TEXT).input_ids[:n_tokens]
    if which == "demo":
        from gemscope_widgets.backend.default_transcoders import load_demo_transcoders

        transcoders = load_demo_transcoders(gm, progress=False)
    else:
        transcoders = _random_set(gm, ids)
    rss0 = _rss_mb()
    peak0 = _peak_mb()
    start = time.perf_counter()
    info: dict[str, Any] = {}
    if kind == "baseline":
        emb = gm.embed(ids.unsqueeze(0)).detach().requires_grad_(True)
        out = gm.model(inputs_embeds=emb, use_cache=False).logits
        out[0, -1].max().backward()
    else:
        from gemscope_widgets.backend.circuits.attribution import attribute

        graph = attribute(gm, transcoders, ids, progress=False)
        pruned = graph.prune()
        info = {
            "n_active": graph.n_active, "n_selected": graph.n_selected, "n_nodes": graph.n_nodes,
            "kept_nodes": int(pruned.node_mask.sum()), "kept_edges": int(pruned.edge_mask.sum()),
        }
    seconds = time.perf_counter() - start
    return {
        "kind": kind, "tokens": len(ids), "set": which, "seconds": seconds,
        "peak_mb_above_loaded": max(0.0, _peak_mb() - max(peak0, rss0)), **info,
    }


def run(tokens: list[int], which: str, threads: int) -> list[dict[str, Any]]:
    """Every (length, kind) in its own process; ratios attribute / baseline per length."""
    rows = []
    for n in tokens:
        pair = {}
        for kind in ("baseline", "attribute"):
            cmd = [sys.executable, "-m", "benchmarks.circuit_case", "--one", kind, "--tokens", str(n),
                   "--set", which, "--threads", str(threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            pair[kind] = json.loads(lines[-1]) if lines else {"kind": kind, "error": done.stderr[-2000:]}
        base, attr = pair["baseline"], pair["attribute"]
        if "seconds" in base and "seconds" in attr:
            attr["ratio_to_forward_backward"] = attr["seconds"] / base["seconds"]
        rows += [base, attr]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.circuit_case", description=__doc__)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--set", dest="which", choices=("demo", "random"), default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", choices=("baseline", "attribute"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.tokens[0], args.which, args.threads)))
        return 0
    rows = run(args.tokens, args.which, args.threads)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
