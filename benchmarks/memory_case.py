"""Peak resident memory of first use, step by step, and attribution's memory estimate against its measured peak.

    python -m benchmarks.memory_case [--cache DIR] [--steps model,sae,stats,transcoders,circuit] [--tokens 16 64 256]

First use: each step of what the embedded default offers runs in a fresh process (so the peaks are separate),
in the order a new user meets them, against one cache folder (``--cache``; empty for a true first use): the
model (GGUF conversion and load), the demo SAE (trained), its statistics (scanned), the demo transcoders
(trained) and a 64-token circuit. Each step loads the model as a session would (``load_default``'s dtype).
Peak RSS is the child's ``VmHWM`` (file pages it maps count too).

Attribution: for 16, 64 and 256 tokens, a fresh process loads the model and the demo transcoders, reads its
resident memory, calls :func:`~gemscope_widgets.backend.circuits.attribution.estimate_attribution_memory`
(the prior, from the prompt length) and then ``attribute``; the estimate reported is the one ``attribute`` shows
(with the exact number of active features); the measured peak of the call is ``VmHWM`` after it minus the
resident memory before it (after one warm-up forward pass, so the model's memory-mapped weights are already
resident and the estimate, which reads which weight pages are resident, leaves them out; ``benchmarks.circuit_case``
measures the other case, a first call right after loading, where they count). ``--smoke`` runs the same on the
tiny random model with a random transcoder set (seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .harness import run_fresh
from .texts import long_text

FIRST_USE_TARGET_MB = 4096  # an 8 GB laptop: half of its memory for the whole first session

_LOAD = """
from gemscope_widgets.backend.default import EMBEDDED_NAME
from gemscope_widgets.backend.gemma.model import load_model
gm = load_model(EMBEDDED_NAME, progress=False)
"""

FIRST_USE_STEPS: dict[str, str] = {
    "model": _LOAD + "_report(seconds=time.perf_counter() - _t0)",
    "sae": _LOAD + """
from gemscope_widgets.backend.default import ensure_demo_sae
ensure_demo_sae(gm, progress=False)
_report(seconds=time.perf_counter() - _t0)
""",
    "stats": _LOAD + """
from gemscope_widgets.backend.default import demo_sae_path, ensure_demo_stats
from gemscope_widgets.backend.dictionaries.loading import load_sae
ensure_demo_stats(gm, load_sae(demo_sae_path()), progress=False)
_report(seconds=time.perf_counter() - _t0)
""",
    "transcoders": _LOAD + """
from gemscope_widgets.backend.default_transcoders import load_demo_transcoders
load_demo_transcoders(gm, progress=False)
_report(seconds=time.perf_counter() - _t0)
""",
    # The demo recipe (96k tokens, 18 layers, the same collector and data path) with 3 steps per stack: the
    # memory of the transcoders step in minutes (steps change the time, not what is held).
    "transcoders_short": _LOAD + """
import tempfile
from gemscope_widgets.backend.default import collection_model, fast_bf16_products
from gemscope_widgets.backend.default_transcoders import DEMO_TRANSCODER_RECIPE
from gemscope_widgets.backend.training.activations import default_training_texts
from gemscope_widgets.backend.training.transcoders import train_transcoders
collector = collection_model(gm, False)
recipe = {**DEMO_TRANSCODER_RECIPE, "steps": 3, "hard_steps": 3}
with tempfile.TemporaryDirectory() as out:
    train_transcoders(collector, out + "/set", corpus=default_training_texts(), progress=False,
                      mixed_precision=fast_bf16_products(collector), **recipe)
_report(seconds=time.perf_counter() - _t0)
""",
    "circuit": _LOAD + """
from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.backend.default_transcoders import load_demo_transcoders
tset = load_transcoders(load_demo_transcoders(gm, progress=False))
ids = gm.prompt(TEXT).input_ids[:64]
graph = attribute(gm, tset, ids, progress=False)
_report(seconds=time.perf_counter() - _t0, n_active=graph.n_active if hasattr(graph, "n_active") else None)
""",
    # All of first use in one process, as a notebook kernel meets it: Scope.default() (model, demo SAE, statistics)
    # then scope.circuit on 64 tokens (demo transcoders trained, then attribution); the peak after each part.
    "session": """
def _hwm():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
from gemscope_widgets import Scope
scope = Scope.default(progress=False)
after_default = _hwm()
ids = scope.model.prompt(TEXT).input_ids[:64]
view = scope.circuit(ids, progress=False)
_report(seconds=time.perf_counter() - _t0, peak_after_default_mb=after_default,
        n_active=int(view.graph.active_features.shape[0]))
""",
}

_ESTIMATE = """
import torch
def _rss_mb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.attribution_memory import estimate_attribution_memory
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
torch.set_num_threads(2)
{setup}
ids = gm.prompt(TEXT).input_ids[:N_TOKENS]
assert len(ids) == N_TOKENS, len(ids)
# Warm up: a forward pass and the whole unembedding make the model's own (memory-mapped) weights resident, as
# in a session that has run the model once; what attribute adds is then measured alone.
with torch.no_grad():
    gm.model(input_ids=ids[None, :4])
    float(gm.lm_head.weight.sum())
est = estimate_attribution_memory(gm, tset, len(ids), max_feature_nodes=MAX_FEATURE_NODES)
before = _rss_mb()
t = time.perf_counter()
graph = attribute(gm, tset, ids, max_feature_nodes=MAX_FEATURE_NODES, progress=False)
seconds = time.perf_counter() - t
with open("/proc/self/status") as fh:
    peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
n_active = int(graph.active_features.shape[0])
# The estimate attribute showed: the exact active count, the weights' pages as they were before the call.
_report(tokens=len(ids), max_feature_nodes=MAX_FEATURE_NODES,
        estimate_mb=graph.info["memory_estimate_bytes"] / 2**20, prior_estimate_mb=est.total_bytes / 2**20,
        measured_mb=peak - before, n_active=n_active,
        estimate_weights_mb=(est.parts["model"] + est.parts["transcoders"]) / 2**20,
        active_per_token_prior=est.active_per_token, rss_before_mb=before, seconds=seconds)
"""

_SETUP_REAL = """
from gemscope_widgets.backend.default import EMBEDDED_NAME
from gemscope_widgets.backend.default_transcoders import load_demo_transcoders
from gemscope_widgets.backend.gemma.model import load_model
gm = load_model(EMBEDDED_NAME, progress=False)
tset = load_transcoders(load_demo_transcoders(gm, progress=False))
"""

# Calibrated random weights of the demo set's shapes (1,024 features per layer, 30 active per layer and token:
# about the demo set's 540 per token), for a machine without the trained set.
_SETUP_RANDOM = """
from gemscope_widgets.backend.default import EMBEDDED_NAME
from gemscope_widgets.backend.gemma.model import load_model
from gemscope_widgets.cache import cache_dir
from gemscope_widgets.testing.transcoders import write_calibrated_set
gm = load_model(EMBEDDED_NAME, progress=False)
tset = load_transcoders(write_calibrated_set(gm, cache_dir("bench", "memory-random-set"), width=1024, l0=30))
"""

_SETUP_SMOKE = """
from benchmarks.tiny import build_tiny_checkpoint
from gemscope_widgets.backend.gemma.model import load_model
from gemscope_widgets.cache import cache_dir
from gemscope_widgets.testing.transcoders import write_calibrated_set
gm = load_model(str(build_tiny_checkpoint(cache_dir("bench", "tiny-gemma3"))), dtype="float32", progress=False)
tset = load_transcoders(write_calibrated_set(gm, cache_dir("bench", "tiny-transcoders"), width=256, l0=12))
"""


def _text_line(n_tokens: int, max_feature_nodes: int = 4096) -> str:
    return f"TEXT = {long_text(40 * n_tokens)!r}\nN_TOKENS = {n_tokens}\nMAX_FEATURE_NODES = {max_feature_nodes}\n"


def first_use(cache: Path, steps: list[str], timeout: float = 3600.0) -> list[dict[str, Any]]:
    """Each first-use step in a fresh process against ``cache``: ``{"step", "peak_rss_mb", "seconds"}`` rows."""
    rows = []
    for step in steps:
        out = run_fresh(_text_line(64) + FIRST_USE_STEPS[step], timeout=timeout, env={"GEMSCOPE_CACHE": str(cache)})
        rows.append({"step": step, **out})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def estimates(
    lengths: list[int], *, smoke: bool, cache: Path | None = None, random_set: bool = False,
    max_feature_nodes: int = 4096,
) -> list[dict[str, Any]]:
    """Attribution's estimate against the measured peak, one fresh process per prompt length."""
    setup = _SETUP_SMOKE if smoke else (_SETUP_RANDOM if random_set else _SETUP_REAL)
    env = {"GEMSCOPE_CACHE": str(cache)} if cache is not None else None
    rows = []
    for n in lengths:
        code = _text_line(n, max_feature_nodes) + _ESTIMATE.replace("{setup}", setup)
        out = run_fresh(code, timeout=1800.0, env=env)
        if "estimate_mb" in out:
            out["estimate_over_measured"] = out["estimate_mb"] / max(out["measured_mb"], 1e-9)
        rows.append(out)
        print(json.dumps(out), file=sys.stderr, flush=True)
        if "estimate_mb" in out:
            print(f"{n} tokens: attribute's peak {out['measured_mb']:.0f} MB above the warm model, estimated "
                  f"{out['estimate_mb']:.0f} MB ({out['estimate_over_measured']:.2f}x)", file=sys.stderr, flush=True)
    return rows


def run(smoke: bool = True) -> dict[str, Any]:
    """The benchmark's entry for ``python -m benchmarks``: the smoke run measures the estimate on the tiny model
    (the first-use steps need the real 270M and minutes; ``python -m benchmarks.memory_case`` runs them)."""
    if smoke:
        return {"attribution_estimate": estimates([16, 32], smoke=True)}
    return {"attribution_estimate": estimates([16, 64, 256], smoke=False)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_case", description=__doc__)
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: the user's cache)")
    parser.add_argument("--steps", default=",".join(FIRST_USE_STEPS), help="comma-separated first-use steps")
    parser.add_argument("--tokens", type=int, nargs="*", default=[16, 64, 256], help="attribution prompt lengths")
    parser.add_argument("--smoke", action="store_true", help="the estimate on the tiny model only")
    parser.add_argument("--random-set", action="store_true", help="calibrated random transcoders of the demo shapes")
    parser.add_argument("--max-feature-nodes", type=int, default=4096, help="attribute's feature-row budget")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory.json")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if not args.smoke and args.steps:
        rows = first_use(args.cache or Path.home() / ".cache" / "gemscope_widgets", args.steps.split(","))
        results["first_use"] = rows
        peaks = [r["peak_rss_mb"] for r in rows if "peak_rss_mb" in r]
        results["first_use_target"] = {
            "text": f"every first-use step under {FIRST_USE_TARGET_MB} MB peak RSS",
            "met": bool(peaks) and len(peaks) == len(rows) and max(peaks) < FIRST_USE_TARGET_MB,
            "measured": f"max {max(peaks):.0f} MB" if peaks else "no step finished",
        }
    if args.tokens:
        results["attribution_estimate"] = estimates(
            args.tokens, smoke=args.smoke, cache=args.cache, random_set=args.random_set,
            max_feature_nodes=args.max_feature_nodes,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
