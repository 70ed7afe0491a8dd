"""Attribution graphs on CPU: time and peak memory to build a pruned graph, as ratios to forward+backward and to
circuit-tracer.

    python -m benchmarks.circuit_case [--tokens 16 64 256] [--set demo|random] [--threads 2] [--no-peer]
        [--peer-timeout S] [--peer-memory-gb G] [--record]

For each prompt length, in the same run and each in a fresh process (so peak memory is its own): the baseline
(one forward and one backward pass of the model on the prompt, the unit of work attribution repeats in
batches), ``attribute`` + ``prune`` with the transcoder set, and (with ``--set demo``, when its environment
exists: ``bash benchmarks/circuit_tracer_venv.sh``) circuit-tracer 0.5.0's ``attribute`` + ``prune_graph`` on
the same model weights, transcoder files and token ids, with the same feature budget and batch size. Reports wall
time, peak RSS above the process's RSS after loading, the ratios attribute / baseline and attribute /
circuit-tracer, and whether both found the same logit tokens. Memory: the attribute row also carries
``attribute``'s own estimate of its peak (:func:`~gemscope_widgets.backend.circuits.attribution_memory.
estimate_attribution_memory`, from the prompt length alone and with the exact number of active features, as the
progress bar shows it) beside the measured peak, as ``estimate_over_measured``; the call is the first after
loading, so both include the model's memory-mapped weights that its first forward pass makes resident.
``--peer-memory-gb`` caps circuit-tracer's address space (``RLIMIT_AS``) so a run that would exhaust a shared
machine ends with its own out-of-memory error instead (reported as such). ``--set demo`` uses the embedded 270M's
demo transcoder set (trained on first use); ``--set random`` a set of the same shapes with random weights whose
thresholds are calibrated on the prompt so that about 16 features fire per token (same work, no training).
``--record`` writes ``benchmarks/results/circuit_attribution_cpu.json`` (or ``--out``), replacing the rows of the
lengths measured.
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


def prompt_text() -> str:
    """``TEXT`` followed by enough real English for 256-token prompts (the first 64 tokens are ``TEXT``'s, so
    shorter rows measure the same prompts as before)."""
    from benchmarks.texts import long_text

    return TEXT + "\n\n" + long_text(4000)


MAX_FEATURE_NODES = 4096  # the package's default budget; circuit-tracer gets the same
BATCH_SIZE = 256
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(ROOT, "benchmarks", "results", "circuit_attribution_cpu.json")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds of this process so far (user + system): less sensitive than wall time to a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    ids = gm.prompt(prompt_text()).input_ids[:n_tokens]
    if which == "demo":
        from gemscope_widgets.backend.default_transcoders import load_demo_transcoders

        transcoders = load_demo_transcoders(gm, progress=False)
    else:
        transcoders = _random_set(gm, ids)
    rss0 = _rss_mb()
    peak0 = _peak_mb()
    cpu0 = _cpu_s()
    start = time.perf_counter()
    info: dict[str, Any] = {}
    if kind == "baseline":
        emb = gm.embed(ids.unsqueeze(0)).detach().requires_grad_(True)
        out = gm.model(inputs_embeds=emb, use_cache=False).logits
        out[0, -1].max().backward()
    else:
        from gemscope_widgets.backend.circuits.attribution import attribute
        from gemscope_widgets.backend.circuits.attribution_memory import estimate_attribution_memory

        prior = estimate_attribution_memory(gm, transcoders, len(ids), max_feature_nodes=MAX_FEATURE_NODES,
                                            batch_size=BATCH_SIZE)
        graph = attribute(gm, transcoders, ids, max_feature_nodes=MAX_FEATURE_NODES, batch_size=BATCH_SIZE,
                          progress=False)
        pruned = graph.prune()
        info = {
            "n_active": graph.n_active, "n_selected": graph.n_selected, "n_nodes": graph.n_nodes,
            "kept_nodes": int(pruned.node_mask.sum()), "kept_edges": int(pruned.edge_mask.sum()),
            "logit_tokens": graph.logit_tokens.tolist(), "logit_probabilities": graph.logit_probabilities.tolist(),
            "selected": graph.active_features[graph.selected_features].tolist(),
        }
    seconds = time.perf_counter() - start
    if kind == "attribute":
        # The estimate the progress bar showed (exact active count; weights' pages as they were before the call).
        info |= {"prior_estimate_mb": prior.total_bytes / 2**20,
                 "estimate_mb": graph.info["memory_estimate_bytes"] / 2**20,
                 "estimate_weights_mb": (prior.parts["model"] + prior.parts["transcoders"]) / 2**20}
    row = {
        "kind": kind, "tokens": len(ids), "set": which, "seconds": seconds, "cpu_seconds": _cpu_s() - cpu0,
        "peak_mb_above_loaded": max(0.0, _peak_mb() - max(peak0, rss0)), **info,
    }
    if "estimate_mb" in row:
        row["estimate_over_measured"] = row["estimate_mb"] / max(row["peak_mb_above_loaded"], 1e-9)
    return row


def _peer_spec(n_tokens: int, threads: int, out_dir: str) -> str:
    """The circuit-tracer side's input: the embedded 270M (weights linked, configs made readable by transformers
    4.57), the demo set's per-layer folders and the same token ids; returns the spec file's path."""
    import shutil

    from benchmarks.peers_circuit_tracer import peer_readable
    from gemscope_widgets.backend.default_transcoders import demo_transcoder_folders, ensure_demo_transcoders
    from gemscope_widgets.backend.gemma.embedded import ensure_embedded_model
    from gemscope_widgets.backend.gemma.model import load_model

    src = ensure_embedded_model(progress=False)
    model_dir = os.path.join(out_dir, "gemma-3-270m")
    if not os.path.isdir(model_dir):
        os.makedirs(model_dir)
        for name in os.listdir(src):
            if name.endswith(".safetensors"):
                os.symlink(os.path.join(src, name), os.path.join(model_dir, name))
            elif name.endswith(".json"):
                shutil.copy(os.path.join(src, name), model_dir)
        from pathlib import Path

        peer_readable(Path(model_dir))
    gm = load_model("gemma-3-270m", device="cpu", dtype="float32", progress=False)
    ids = gm.prompt(prompt_text()).input_ids[:n_tokens]
    root = ensure_demo_transcoders(gm, progress=False)
    spec = {
        "model": model_dir, "ids": ids.tolist(), "threads": threads, "batch_size": BATCH_SIZE,
        "max_feature_nodes": MAX_FEATURE_NODES,
        "folders": {str(layer): str(folder) for layer, folder in enumerate(demo_transcoder_folders(root))},
    }
    path = os.path.join(out_dir, f"spec-{n_tokens}.json")
    with open(path, "w") as fh:
        json.dump(spec, fh)
    return path


def _peer_python() -> str | None:
    venv = os.environ.get("CT_VENV", os.path.join(ROOT, ".cache", "venv-ct"))
    python = os.path.join(venv, "bin", "python")
    return python if os.path.isfile(python) else None


def _last_json(done: subprocess.CompletedProcess[str], kind: str) -> dict[str, Any]:
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    killed = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
    return {"kind": kind, "error": f"{killed}: {done.stderr[-2000:]}".rstrip(": ")}


def _address_space_cap(gb: float | None) -> Any:
    """A ``preexec_fn`` limiting the child's address space to ``gb`` GiB (None: no limit)."""
    if gb is None:
        return None

    def cap() -> None:
        limit = int(gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return cap


def run(
    tokens: list[int], which: str, threads: int, peer: bool = True, peer_timeout: float | None = None,
    peer_memory_gb: float | None = None,
) -> list[dict[str, Any]]:
    """Every (length, kind) in its own process; ratios attribute / baseline and attribute / circuit-tracer.

    A circuit-tracer run stopped after ``peer_timeout`` seconds is reported as ``{"timed_out_after": s}``, and the
    ratio as an upper bound (``ratio_to_circuit_tracer_at_most``). ``peer_memory_gb`` caps circuit-tracer's
    address space; a run that hits it is reported with the cap (``memory_cap_gb``) and its error.
    """
    rows = []
    python = _peer_python() if peer and which == "demo" else None
    out_dir = os.path.join(ROOT, ".cache", "bench-circuit")
    os.makedirs(out_dir, exist_ok=True)
    for n in tokens:
        pair = {}
        for kind in ("baseline", "attribute"):
            cmd = [sys.executable, "-m", "benchmarks.circuit_case", "--one", kind, "--tokens", str(n),
                   "--set", which, "--threads", str(threads)]
            pair[kind] = _last_json(subprocess.run(cmd, capture_output=True, text=True, check=False), kind)
        base, attr = pair["baseline"], pair["attribute"]
        if "seconds" in base and "seconds" in attr:
            attr["ratio_to_forward_backward"] = attr["seconds"] / base["seconds"]
        rows += [base, attr]
        _emit(base)
        if python is None:
            _emit(attr)
            continue
        spec = _peer_spec(n, threads, out_dir)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        script = os.path.join(ROOT, "benchmarks", "peers_circuit_tracer.py")
        try:
            done = subprocess.run([python, script, "--ct-time", spec], capture_output=True, text=True, env=env,
                                  cwd=out_dir, check=False, timeout=peer_timeout,
                                  preexec_fn=_address_space_cap(peer_memory_gb))
            ct = {"tokens": n, **_last_json(done, "circuit_tracer")}
            if "error" in ct and peer_memory_gb is not None:
                ct["memory_cap_gb"] = peer_memory_gb
        except subprocess.TimeoutExpired:
            ct = {"kind": "circuit_tracer", "tokens": n, "timed_out_after": peer_timeout}
            if "seconds" in attr:
                attr["ratio_to_circuit_tracer_at_most"] = attr["seconds"] / float(peer_timeout or 1)
        if "seconds" in ct and "seconds" in attr:
            attr["ratio_to_circuit_tracer"] = attr["seconds"] / ct["seconds"]
            attr["cpu_ratio_to_circuit_tracer"] = attr["cpu_seconds"] / max(ct.get("cpu_seconds", 0.0), 1e-9)
            attr["peak_ratio_to_circuit_tracer"] = attr["peak_mb_above_loaded"] / max(ct["peak_mb_above_loaded"], 1.0)
            attr["same_logit_tokens_as_circuit_tracer"] = attr.get("logit_tokens") == ct.get("logit_tokens")
        if "selected" in attr and "selected" in ct:  # which features got rows: (layer, position, feature) triples
            ours, theirs = {tuple(t) for t in attr["selected"]}, {tuple(t) for t in ct["selected"]}
            attr["selected_shared_with_circuit_tracer"] = len(ours & theirs) / max(len(ours), 1)
        rows.append(ct)
        _emit(attr)
        _emit(ct)
    for row in rows:
        row.pop("selected", None)
    return rows


def _emit(row: dict[str, Any]) -> None:
    """Print one measured row at once (to stderr, as a JSON line; an attribute row also as its memory estimate
    beside the measured peak): a long run shows what it has so far."""
    print(json.dumps({k: v for k, v in row.items() if k != "selected"}), file=sys.stderr, flush=True)
    if "estimate_over_measured" in row:
        print(estimate_line(row), file=sys.stderr, flush=True)


def estimate_line(row: dict[str, Any]) -> str:
    """``64 tokens: peak 2757 MB above loaded, estimated 2874 MB (1.04x; from the length alone 2445 MB)``."""
    return (f"{row['tokens']} tokens: peak {row['peak_mb_above_loaded']:.0f} MB above loaded, estimated "
            f"{row['estimate_mb']:.0f} MB ({row['estimate_over_measured']:.2f}x; from the length alone "
            f"{row['prior_estimate_mb']:.0f} MB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.circuit_case", description=__doc__)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--set", dest="which", choices=("demo", "random"), default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="skip circuit-tracer")
    parser.add_argument("--peer-timeout", type=float, default=None, help="stop circuit-tracer after this many s")
    parser.add_argument("--peer-memory-gb", type=float, default=None,
                        help="cap circuit-tracer's address space (GiB); on a shared machine, so it cannot exhaust it")
    parser.add_argument("--record", action="store_true", help=f"write {os.path.relpath(RESULT, ROOT)}")
    parser.add_argument("--out", default=RESULT, help="the file --record writes (default: %(default)s)")
    parser.add_argument("--one", choices=("baseline", "attribute"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    if args.one:
        print(json.dumps(measure_one(args.one, args.tokens[0], args.which, args.threads)))
        return 0
    rows = run(args.tokens, args.which, args.threads, peer=not args.no_peer, peer_timeout=args.peer_timeout,
               peer_memory_gb=args.peer_memory_gb)
    for row in rows:
        print(json.dumps(row))
    for row in rows:
        if "estimate_over_measured" in row:
            print(estimate_line(row))
    if args.record:
        import platform

        import torch

        report = {
            "what": "time and peak RSS (above the RSS after loading) to build and prune an attribution graph of the "
                    "embedded Gemma 3 270M, each measurement in its own process",
            "set": args.which, "threads": args.threads, "max_feature_nodes": MAX_FEATURE_NODES,
            "batch_size": BATCH_SIZE, "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "load_average_before": round(load_before, 2),
            "note": "CPU only; load_average_before is the 1-minute load average when the run started (above the "
                    "thread count, other jobs shared the cores and absolute times are longer); the ratios compare "
                    "runs taken back to back in the same run.",
            "rows": rows,
        }
        if os.path.isfile(args.out):  # keep the other prompt lengths of an earlier run of the same set
            with open(args.out) as fh:
                earlier = json.load(fh)
            if earlier.get("set") == args.which:
                kept = [r for r in earlier.get("rows", []) if r.get("tokens") not in set(args.tokens)]
                order = {"baseline": 0, "attribute": 1, "circuit_tracer": 2}
                report["rows"] = sorted(kept + rows, key=lambda r: (r.get("tokens", 0), order.get(r.get("kind"), 3)))
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
