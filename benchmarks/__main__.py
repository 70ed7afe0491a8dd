"""``python -m benchmarks``: the full side-by-side run; ``python -m benchmarks --smoke``: seconds, tiny model.

Writes ``benchmarks/results/latest.json`` and ``latest.md`` (``--out`` changes the folder).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import importlib.metadata
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from . import cases, hardware, report
from .harness import error_text, fix_threads, not_installed
from .profiling import profile_features

PEER_PACKAGES = ("transformer-lens", "sae-lens", "nnsight")
EXTERNAL_CASES = ("heatmap_case", "steering_case", "scan_case")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def peer_versions() -> dict[str, str]:
    out = {}
    for name in PEER_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def external_case(module: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Another module's benchmark (``benchmarks/<module>.py``: ``run(...) -> dict``), or why it did not run."""
    try:
        mod = importlib.import_module(f"benchmarks.{module}")
    except ImportError as exc:
        return {"error": f"benchmarks/{module}.py not importable: {type(exc).__name__}: {exc}"}
    try:
        result = mod.run(*args, **kwargs)
    except Exception as exc:
        return {"error": error_text(exc)}
    if not isinstance(result, dict):
        return {"error": f"run() returned {type(result).__name__}, not a dict"}
    return result


def update_load(args: argparse.Namespace) -> int:
    """Re-run case 5 alone into an existing ``latest.json`` (it needs no peers in this process)."""
    import json

    from gemscope_widgets.backend.gemma.embedded import ensure_embedded_model

    path = args.out / "latest.json"
    results = json.loads(path.read_text())
    threads = fix_threads(args.threads)
    if results["config"].get("smoke"):
        from gemscope_widgets.cache import cache_dir

        from .tiny import build_tiny_checkpoint

        model_path = build_tiny_checkpoint(cache_dir("bench", "tiny-gemma3"))
        model_ref = str(model_path)
    else:
        model_path, model_ref = ensure_embedded_model(), "gemma-3-270m"
    rows = cases.load_case(
        model_ref, str(model_path), repeats=1 if results["config"].get("smoke") else 3, threads=threads
    )
    results["cases"]["load"]["rows"] = rows
    results["cases"]["load"]["targets"] = cases.load_targets(rows)
    results["cases"]["load"]["measured_at"] = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    report.write_results(results, args.out)
    print(report.render_markdown(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="1 repeat on a tiny random model (seconds)")
    parser.add_argument("--out", type=Path, default=report.RESULTS_DIR, help="folder for latest.json/latest.md")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    parser.add_argument(
        "--only-load",
        action="store_true",
        help="re-measure only case 5 (load time, peak RSS) and update the existing results in --out",
    )
    parser.add_argument("--device", default=None,
                        help="cuda or cpu: real-shape random-weight models on that device (benchmarks/device_case.py)")
    parser.add_argument("--shapes", default="270m,1b,4b,27b",
                        help="with --device: comma-separated shapes among tiny, 270m, 1b, 4b, 27b")
    parser.add_argument("--widths", default="16384,262144", help="with --device: SAE widths")
    args = parser.parse_args(argv)
    if args.only_load:
        return update_load(args)
    if args.device:
        from . import device_case

        fix_threads(args.threads)
        return device_case.main(args.device, args.shapes.split(","), [int(w) for w in args.widths.split(",")],
                                args.out, repeats=args.repeats or 3)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    threads = fix_threads(args.threads)
    smoke = args.smoke
    repeats = args.repeats or (1 if smoke else 5)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": hardware.machine_info(),
        "peer_versions": peer_versions(),
        "cases": {},
        "external": {},
    }

    _log("measuring matmul throughput")
    n = 512 if smoke else 4096
    results["hardware"] = {
        "fp32_gflops": hardware.matmul_gflops(torch.float32, n),
        "bf16_gflops": hardware.matmul_gflops(torch.bfloat16, n),
        "matmul": f"{n}×{n}×{n}, best of 3",
    }

    from gemscope_widgets.backend.gemma.model import load_model
    from gemscope_widgets.cache import cache_dir

    from . import sae_fixture
    from .texts import corpus_texts, exact_prompt, long_text, prompt_text

    if smoke:
        from .tiny import build_tiny_checkpoint

        model_path = build_tiny_checkpoint(cache_dir("bench", "tiny-gemma3"))
        model_ref = str(model_path)
        width, prompt_tokens, gen_prompt_tokens, n_new = 512, 128, 16, 8
        payload_lengths = (128, 512)
        scan_docs = 8
    else:
        from gemscope_widgets.backend.gemma.embedded import ensure_embedded_model

        model_path = ensure_embedded_model()
        model_ref = "gemma-3-270m"
        width, prompt_tokens, gen_prompt_tokens, n_new = 16384, 128, 16, 32
        payload_lengths = (128, 512, 2048)
        scan_docs = 48

    _log(f"loading {model_ref} (fp32)")
    gm32 = load_model(model_ref, dtype="float32", progress=False)
    layer = 9 if gm32.n_layers > 9 else gm32.n_layers // 2
    results["config"] = {
        "smoke": smoke,
        "model": gm32.name or model_ref,
        "sae": f"Gemma Scope 2 layout, resid_post layer {layer}, width {width}, calibrated to ~50 features/token",
        "prompt_tokens": prompt_tokens,
        "generation": f"{gen_prompt_tokens}-token prompt, {n_new} new tokens, greedy, KV cache, "
        "+2000·w_dec[123] at every position",
        "repeats": repeats,
        "warmup": 1,
        "generation_repeats": 1 if smoke else 3,
        "threads": threads,
    }

    _log("calibrating / loading the SAE fixture")
    fixture_root = cache_dir("bench", "sae", Path(str(model_path)).name)
    folder = sae_fixture.ensure_fixture(gm32, fixture_root, layer, width)
    params = sae_fixture.read_params(folder)
    sae, sae_error = None, None
    try:
        sae = sae_fixture.load_fixture(folder)
    except ImportError as exc:
        sae_error = not_installed(exc)
    except Exception as exc:
        sae_error = error_text(exc)
    results["config"]["sae_folder"] = str(folder)

    text = prompt_text()
    feature_rows: list[dict] = []
    gen_rows: list[dict] = []
    scan_rows: list[dict] = []
    feature_targets: list[dict] = []
    gen_targets: list[dict] = []
    scan_targets: list[dict] = []
    texts = corpus_texts(scan_docs)
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        gm = gm32 if dtype == torch.float32 else load_model(model_ref, dtype=dtype, progress=False)
        setting = cases.Setting(
            dtype=dtype,
            label=label,
            repeats=repeats,
            gen_repeats=1 if smoke else 3,
            n_new=n_new,
            layer=layer,
            peak_gflops=results["hardware"][f"{label}_gflops"],
            cfg=gm.text_config,
            width=width,
        )
        prompt = exact_prompt(gm, text, prompt_tokens)
        _log(f"{label}: building the peers (HF, TransformerLens, SAELens, nnsight)")
        peers_ = cases.build_peers(model_path, dtype, params, layer)
        if peers_.tl_build_s is not None:
            results.setdefault("tl_build_s", {})[label] = peers_.tl_build_s
        _log(f"{label}: case 1, features for a prompt")
        rows = cases.features_case(gm, sae, sae_error, prompt, peers_, setting)
        feature_rows += rows
        feature_targets += cases.features_targets(rows, label)
        if sae is not None:
            try:
                results.setdefault("profiles", {})[f"prompt_features {label}"] = profile_features(gm, sae, prompt)
            except Exception as exc:
                results.setdefault("profiles", {})[f"prompt_features {label}"] = {"error": error_text(exc)}
        _log(f"{label}: case 2, steered generation")
        rows = cases.generation_case(gm, sae, sae_error, prompt.input_ids[:gen_prompt_tokens], peers_, setting, params)
        gen_rows += rows
        gen_targets += cases.generation_targets(rows, label)
        _log(f"{label}: case 3, corpus scan")
        rows = cases.scan_case(gm, sae, sae_error, texts, peers_, setting)
        scan_rows += rows
        scan_targets += cases.scan_targets(rows, label)
        del peers_
        if gm is not gm32:
            del gm
        gc.collect()

    results["cases"]["features"] = {
        "title": f"1. Features for a {prompt_tokens}-token prompt (what the heatmap needs)",
        "baseline": cases.HF_EARLY,
        "ratio_meaning": "time / baseline time (lower is faster)",
        "rows": feature_rows,
        "targets": feature_targets,
    }
    results["cases"]["generation"] = {
        "title": f"2. Steered generation, {n_new} tokens, KV cache",
        "baseline": cases.HF_GEN,
        "ratio_meaning": "tokens/s / baseline tokens/s (higher is faster)",
        "rows": gen_rows,
        "targets": gen_targets,
    }
    results["cases"]["scan"] = {
        "title": "3. Corpus scan throughput for feature statistics",
        "baseline": cases.BARE_SCAN,
        "ratio_meaning": "tokens/s / baseline tokens/s (higher is faster)",
        "rows": scan_rows,
        "targets": scan_targets,
    }

    report.write_results(results, args.out)  # partial results survive a later crash or a kill
    _log("case 4, payload bytes")
    payload_rows = cases.payload_case(gm32, sae, sae_error, long_text(40_000), payload_lengths)
    first = payload_rows[0] if payload_rows else {}
    results["cases"]["payload"] = {
        "title": "4. Widget payload bytes (16k SAE, all firing features, float16 values)",
        "ratio_meaning": "payload bytes / dense fp32 [tokens × width] bytes",
        "rows": payload_rows,
        "targets": [
            {
                "text": "payload ≤ 32 KB for 128 tokens",
                "met": None if "value" not in first else first["value"] <= 32 * 1024,
                "measured": f"{first.get('value', 'missing')} bytes",
            }
        ],
    }

    report.write_results(results, args.out)
    _log("case 5, load time and peak RSS (fresh processes)")
    load_rows = cases.load_case(model_ref, str(model_path), repeats=1 if smoke else 3, threads=threads)
    results["cases"]["load"] = {
        "title": "5. Model load time and peak RSS (fresh process each, fp32)",
        "baseline": "HF AutoTokenizer + AutoModelForCausalLM",
        "ratio_meaning": "value / baseline value",
        "rows": load_rows,
        "targets": cases.load_targets(load_rows),
    }

    report.write_results(results, args.out)
    _log("the other modules' benchmarks (heatmap, steering, scan)")
    prompt32 = exact_prompt(gm32, text, prompt_tokens)
    results["external"]["heatmap"] = external_case("heatmap_case", gm32, sae, prompt32, repeats)
    results["external"]["steering"] = external_case(
        "steering_case",
        gm32,
        sae,
        prompt32.input_ids[:gen_prompt_tokens],
        n_new=n_new,
        repeats=1 if smoke else 3,
    )
    results["external"]["scan"] = external_case("scan_case", gm32, sae, texts)
    results["external"]["behaviour"] = external_case("behaviour_case", gm32, sae, repeats=1 if smoke else 3)
    results["external"]["evidence"] = external_case("evidence_case", gm32, sae, repeats=1 if smoke else 3)
    results["external"]["memory"] = external_case("memory_case", smoke=smoke)

    results["wall_s"] = time.perf_counter() - started
    json_path, md_path = report.write_results(results, args.out)
    print(md_path.read_text())
    _log(f"wrote {json_path} and {md_path} in {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
