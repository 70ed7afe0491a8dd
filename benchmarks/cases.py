"""The five side-by-side cases. Each returns rows ``{name, dtype, value, unit, ratio, ...}`` or an error.

A failing path never stops the run: its row carries the exact error instead of numbers.
"""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import hardware, peers
from .harness import error_text, not_installed, time_interleaved


@dataclass
class Setting:
    """What one dtype's measurements share."""

    dtype: torch.dtype
    label: str
    repeats: int
    gen_repeats: int
    n_new: int
    layer: int
    peak_gflops: float
    cfg: Any
    width: int


@dataclass
class Peers:
    """The peer objects for one dtype, built once and shared by the cases (``None`` + error when missing)."""

    hf: Any = None
    tokenizer: Any = None
    tl: Any = None
    tl_error: str | None = None
    tl_build_s: float | None = None
    sl_sae: Any = None
    sl_error: str | None = None
    nn: Any = None
    nn_error: str | None = None
    plain_sae: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_peers(path: Any, dtype: torch.dtype, params: dict[str, torch.Tensor], layer: int) -> Peers:
    import time

    p = Peers()
    p.hf, p.tokenizer = peers.load_hf(path, dtype)
    p.plain_sae = peers.PlainSAE(params, dtype)
    try:
        start = time.perf_counter()
        p.tl = peers.load_transformer_lens(p.hf, p.tokenizer, dtype)
        p.tl_build_s = time.perf_counter() - start
    except ImportError as exc:
        p.tl_error = not_installed(exc)
    except Exception as exc:
        p.tl_error = error_text(exc)
    try:
        p.sl_sae = peers.load_saelens_sae(params, layer, dtype)
    except ImportError as exc:
        p.sl_error = not_installed(exc)
    except Exception as exc:
        p.sl_error = error_text(exc)
    try:
        p.nn = peers.load_nnsight(p.hf, p.tokenizer)
    except ImportError as exc:
        p.nn_error = not_installed(exc)
    except Exception as exc:
        p.nn_error = error_text(exc)
    return p


def free(*objects: Any) -> None:
    del objects
    gc.collect()


@dataclass
class Measured:
    """One measured path: ``fn`` (or ``None`` with the reason in ``error``) and the FLOPs it needs."""

    name: str
    fn: Callable[[], object] | None
    flops: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    warm: Callable[[], object] | None = None


def measure(paths: list[Measured], s: Setting, repeats: int) -> list[dict[str, Any]]:
    """Time every available path round-robin; rows in ``paths`` order, values in ms."""
    runnable = {p.name: p.fn for p in paths if p.fn is not None}
    warm = {p.name: p.warm for p in paths if p.fn is not None and p.warm is not None}
    timings = time_interleaved(runnable, repeats=repeats, warmup=1, warm_fns=warm) if runnable else {}
    rows = []
    for p in paths:
        row: dict[str, Any] = {"name": p.name, "dtype": s.label, **p.extra}
        result = timings.get(p.name)
        if result is None:
            row["error"] = p.error or "not available"
        elif isinstance(result, ImportError):
            row["error"] = not_installed(result)
        elif isinstance(result, BaseException):
            row["error"] = error_text(result)
        else:
            row.update(result.as_dict())
            row["value"] = result.median * 1000
            row["unit"] = "ms"
            if p.flops:
                _with_flops(row, p.flops, s.peak_gflops)
        rows.append(row)
    return rows


def _with_flops(row: dict[str, Any], flops: float, peak_gflops: float) -> dict[str, Any]:
    row["flops"] = flops
    if "median_s" in row:
        floor = flops / (peak_gflops * 1e9)
        row["floor_ms"] = floor * 1000
        row["pct_of_peak"] = 100 * floor / row["median_s"]
    return row


def _ratio_to(rows: list[dict[str, Any]], baseline: str, inverse: bool = False) -> None:
    base = next((r for r in rows if r["name"] == baseline and "value" in r), None)
    for row in rows:
        if base is not None and "value" in row and row["value"]:
            row["ratio"] = base["value"] / row["value"] if inverse else row["value"] / base["value"]


# --- case 1 -------------------------------------------------------------------------------------------

OURS_FEATURES = "ours: prompt_features (early exit + encode + CSR)"
HF_EARLY = "HF early exit (hook raises) + SAE"
TL_FEATURES = "TransformerLens run_with_cache(stop_at_layer) + SAELens encode"
NN_STOP = "nnsight trace + save + tracer.stop() + SAE"


def features_case(gm: Any, sae: Any, sae_error: str | None, prompt: Any, p: Peers, s: Setting) -> list[dict]:
    """Features for one prompt: what the heatmap needs."""
    ids = prompt.input_ids.unsqueeze(0).to(gm.device)
    n_tok = ids.shape[1]
    d = gm.d_model
    encode = hardware.sae_encode_flops(d, s.width, n_tok)
    early = hardware.forward_flops(s.cfg, n_tok, layers=s.layer + 1) + encode
    full = hardware.forward_flops(s.cfg, n_tok, logits_positions=n_tok) + encode
    hf, sae_plain, layer, tl, sl, lm = p.hf, p.plain_sae, s.layer, p.tl, p.sl_sae, p.nn
    x = peers.hf_early_exit_forward(hf, ids, layer)[0]

    def ours() -> Any:
        from gemscope_widgets.backend.analysis.features import prompt_features

        return prompt_features(gm, [sae], prompt)

    def ours_encode() -> Any:
        from gemscope_widgets.backend.analysis.features import encode_sparse

        return encode_sparse(sae, x, prompt.masked)

    have_sae = sae is not None
    tl_ok = tl is not None and sl is not None
    paths = [
        Measured(OURS_FEATURES, ours if have_sae else None, early, sae_error),
        Measured(
            "HF full forward (all logits) + hook + SAE",
            lambda: peers.hf_features(hf, ids, layer, sae_plain, "full"),
            full,
        ),
        Measured(HF_EARLY, lambda: peers.hf_features(hf, ids, layer, sae_plain, "early_exit"), early),
        Measured("HF early exit, no SAE", lambda: peers.hf_early_exit_forward(hf, ids, layer), early - encode),
        Measured(
            TL_FEATURES,
            (lambda: peers.tl_features(tl, sl, ids, layer)) if tl_ok else None,
            early,
            p.tl_error or p.sl_error,
        ),
        Measured(
            NN_STOP,
            (lambda: peers.nnsight_features(lm, ids, layer, sae_plain, True)) if lm is not None else None,
            early,
            p.nn_error,
        ),
        # Where the time goes: the SAE step alone, plain (model dtype) and ours (float32 math + CSR).
        Measured("SAE encode + sparse only, plain (model dtype)", lambda: sae_plain.encode_sparse(x), encode),
        Measured("SAE encode + CSR only, ours (float32 math)", ours_encode if have_sae else None, encode, sae_error),
    ]
    rows = measure(paths, s, s.repeats)
    _ratio_to(rows, HF_EARLY)
    return rows


def target(text: str, met: bool | None, measured: Any) -> dict[str, Any]:
    """One target row of a report: ``measured()`` is only called when both sides were measured."""
    return {"text": text, "met": met, "measured": measured() if met is not None else "missing"}


def features_targets(rows: list[dict], label: str) -> list[dict]:
    by = {r["name"]: r for r in rows if r.get("dtype") == label and "value" in r}
    ours = by.get(OURS_FEATURES)
    out = []
    peer_names = [HF_EARLY, NN_STOP]
    fastest = min((by[n]["value"] for n in peer_names if n in by), default=None)
    met = None if ours is None or fastest is None else ours["value"] <= fastest
    out.append(target(
        f"{label}: ours no slower than the fastest peer path", met,
        lambda: f"ours {ours['value']:.1f} ms vs {fastest:.1f} ms"))
    tl = by.get(TL_FEATURES)
    need = 2.0 if label == "fp32" else 3.0
    met = None if ours is None or tl is None else tl["value"] / ours["value"] >= need
    out.append(target(
        f"{label}: ≥ {need:.0f}× faster than TransformerLens + SAELens", met,
        lambda: f"{tl['value'] / ours['value']:.2f}×"))
    return out


# --- case 2 -------------------------------------------------------------------------------------------

OURS_GEN = "ours: generate, steered stream (baseline + steered as a batch of two)"
HF_GEN = "HF generate, no hooks"


def _as_tokens_per_s(rows: list[dict[str, Any]], n_tokens: int, flops_per_token: float, s: Setting) -> None:
    for row in rows:
        if "median_s" in row:
            row["value"] = n_tokens / row["median_s"]
            row["unit"] = "tok/s"
            achieved = row["value"] * flops_per_token
            row["gflops_achieved"] = achieved / 1e9
            row["pct_of_peak"] = 100 * achieved / (s.peak_gflops * 1e9)
            row["flops"] = flops_per_token * n_tokens


def steering_vector(params: dict[str, torch.Tensor], feature: int, strength: float, dtype: torch.dtype) -> Any:
    return (strength * params["w_dec"][feature]).to(dtype)


def generation_case(
    gm: Any,
    sae: Any,
    sae_error: str | None,
    gen_ids: torch.Tensor,
    p: Peers,
    s: Setting,
    params: dict[str, torch.Tensor],
    feature: int = 123,
    strength: float = 2000.0,
) -> list[dict]:
    """Steered generation of ``n_new`` tokens with the KV cache, +strength·w_dec[feature] at every position."""
    ids = gen_ids.unsqueeze(0)
    n = s.n_new
    per_token = hardware.decode_flops_per_token(s.cfg, ids.shape[1] + n // 2)
    vec = steering_vector(params, feature, strength, s.dtype)
    hf, layer, tl, lm = p.hf, s.layer, p.tl, p.nn
    ours_fn, ours_error = None, sae_error
    if sae is not None:
        try:
            ours_fn = ours_generate_fn(gm, sae, gen_ids, n, feature, strength)
        except ImportError as exc:
            ours_error = not_installed(exc)
        except Exception as exc:
            ours_error = error_text(exc)
    paths = [
        Measured(HF_GEN, lambda: peers.hf_generate(hf, ids, n)),
        Measured("HF generate + steering forward hook", lambda: peers.hf_generate(hf, ids, n, layer, vec)),
        Measured(OURS_GEN, ours_fn, error=ours_error, extra={"note": "one stream; the pair yields twice the tokens"}),
        Measured(
            "TransformerLens generate inside tl.hooks(steering)",
            (lambda: peers.tl_generate(tl, ids, n, layer, vec)) if tl is not None else None,
            error=p.tl_error,
            # A full 32-token warm-up costs ~20 s here; 2 tokens exercise the same code paths.
            warm=lambda: peers.tl_generate(tl, ids, 2, layer, vec),
        ),
        Measured(
            "nnsight generate + tracer.iter[:n] steering",
            (lambda: peers.nnsight_generate(lm, ids, n, layer, vec)) if lm is not None else None,
            error=p.nn_error,
        ),
    ]
    rows = measure(paths, s, s.gen_repeats)
    _as_tokens_per_s(rows, n, per_token, s)
    ours_row = rows[2]
    if "value" in ours_row:
        rows.insert(
            3,
            dict(
                ours_row,
                name="ours: generate, baseline + steered pair (both streams)",
                value=2 * ours_row["value"],
                pct_of_peak=2 * ours_row["pct_of_peak"],
                note="",
            ),
        )
    _ratio_to(rows, HF_GEN)
    return rows


def ours_generate_fn(
    gm: Any, sae: Any, gen_ids: torch.Tensor, n_new: int, feature: int, strength: float
) -> Callable[[], object]:
    """Our steered batch-of-two generation, called as the notebook facade calls it."""
    from gemscope_widgets.backend.steering.generation import generate
    from gemscope_widgets.backend.steering.spec import SteeringSpec

    specs = [SteeringSpec(feature=feature, strength=strength, mode="add", positions="all")]

    def run() -> Any:
        # Every position, <bos> included, as the peers' hooks do.
        return generate(
            gm,
            gen_ids,
            specs,
            sae=sae,
            unit="raw",
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            greedy=True,
            stop_at_eos=False,
            steer_special_tokens=True,
        )

    return run


def generation_targets(rows: list[dict], label: str) -> list[dict]:
    by = {r["name"]: r for r in rows if r.get("dtype") == label and "value" in r}
    ours, base = by.get(OURS_GEN), by.get(HF_GEN)
    out = []
    met = None if ours is None or base is None else ours["value"] >= 0.9 * base["value"]
    out.append(target(
        f"{label}: steered stream ≥ 0.9× plain generate tok/s", met,
        lambda: f"{ours['value'] / base['value']:.2f}×"))
    met = None if ours is None or base is None else 2 * ours["value"] >= 1.6 * base["value"]
    out.append(target(
        f"{label}: baseline + steered pair ≥ 1.6× single-stream tok/s", met,
        lambda: f"{2 * ours['value'] / base['value']:.2f}×"))
    return out


# --- case 3 -------------------------------------------------------------------------------------------

OURS_SCAN = "ours: FeatureStats.scan (forward + encode + top-k, density, histograms)"
BARE_SCAN = "bare early-exit forward, same batches"


def _doc_batches(gm: Any, texts: list[str], max_doc_tokens: int, batch_size: int) -> tuple[list, int]:
    docs = [gm.tokenizer(t, add_special_tokens=True)["input_ids"][:max_doc_tokens] for t in texts]
    docs.sort(key=len)
    batches = []
    pad = gm.tokenizer.pad_token_id or 0
    for i in range(0, len(docs), batch_size):
        group = docs[i : i + batch_size]
        width = max(len(d) for d in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for j, d in enumerate(group):
            ids[j, : len(d)] = torch.tensor(d)
            mask[j, : len(d)] = 1
        batches.append((ids, mask))
    return batches, sum(len(d) for d in docs)


def scan_case(
    gm: Any,
    sae: Any,
    sae_error: str | None,
    texts: list[str],
    p: Peers,
    s: Setting,
    max_doc_tokens: int = 128,
    batch_size: int = 16,
) -> list[dict]:
    batches, n_tokens = _doc_batches(gm, texts, max_doc_tokens, batch_size)
    flops = hardware.forward_flops(s.cfg, max_doc_tokens, layers=s.layer + 1) * n_tokens / max_doc_tokens
    hf, layer = p.hf, s.layer

    def bare() -> None:
        for ids, mask in batches:
            peers.hf_early_exit_forward(hf, ids, layer, attention_mask=mask)

    def ours() -> Any:
        from gemscope_widgets.backend.stats.feature_stats import FeatureStats

        return FeatureStats.scan(
            gm, sae, texts, max_doc_tokens=max_doc_tokens, batch_size=batch_size, cache=False, progress=False
        )

    paths = [
        Measured(
            OURS_SCAN,
            ours if sae is not None else None,
            flops + hardware.sae_encode_flops(gm.d_model, s.width, n_tokens),
            sae_error,
        ),
        Measured(BARE_SCAN, bare, flops),
    ]
    rows = measure(paths, s, max(1, min(s.repeats, 3)))
    for row in rows:
        if "median_s" in row:
            row["value"] = n_tokens / row["median_s"]
            row["unit"] = "tok/s"
            row["note"] = f"{n_tokens:,} tokens in {len(texts)} documents"
    _ratio_to(rows, BARE_SCAN)
    return rows


def scan_targets(rows: list[dict], label: str) -> list[dict]:
    by = {r["name"]: r for r in rows if r.get("dtype") == label and "value" in r}
    ours, base = by.get(OURS_SCAN), by.get(BARE_SCAN)
    met = None if ours is None or base is None else ours["value"] >= 0.8 * base["value"]
    return [target(f"{label}: scan ≥ 0.8× bare forward tokens/s", met, lambda: f"{ours['value'] / base['value']:.2f}×")]


# --- case 4 -------------------------------------------------------------------------------------------


def payload_case(gm: Any, sae: Any, sae_error: str | None, text: str, lengths: tuple[int, ...]) -> list[dict]:
    from .texts import exact_prompt

    rows = []
    for n in lengths:
        row: dict[str, Any] = {"name": f"heatmap payload, {n} tokens", "dtype": str(gm.dtype).removeprefix("torch.")}
        if sae is None:
            row["error"] = sae_error or "no SAE"
            rows.append(row)
            continue
        try:
            from gemscope_widgets.backend.analysis.features import prompt_features
            from gemscope_widgets.widgets.payload import encode_payload, payload_nbytes

            prompt = exact_prompt(gm, text, n)
            acts = prompt_features(gm, [sae], prompt)
            header, blob = encode_payload([prompt], [acts])
            size = payload_nbytes(header, blob)
            dense = n * int(sae.width) * 4
            row.update(
                value=size,
                unit="bytes",
                nnz=acts[0].nnz,
                blob_bytes=len(blob),
                l0=acts[0].nnz / max(1, n - int(prompt.masked.sum())),
                note=f"{acts[0].nnz:,} non-zeros ({size / max(acts[0].nnz, 1):.1f} B each); "
                f"dense fp32 would be {dense / 2**20:.1f} MiB",
            )
            row["ratio"] = size / dense
        except ImportError as exc:
            row["error"] = not_installed(exc)
        except Exception as exc:
            row["error"] = error_text(exc)
        rows.append(row)
    return rows


# --- case 5 -------------------------------------------------------------------------------------------


def load_case(model_ref: str, path: str, repeats: int, threads: int) -> list[dict]:
    """Model load time and peak RSS, each in fresh subprocesses (median of ``repeats``)."""
    from .harness import run_fresh

    prelude = f"import torch; torch.set_num_threads({threads})\n"
    codes = {
        "ours: load_model (embedded default)": (
            "from gemscope_widgets.backend.gemma.model import load_model\n"
            f"gm = load_model({model_ref!r}, dtype='float32', progress=False)\n"
            "_report(load_s=time.perf_counter() - _t0)\n"
        ),
        "HF AutoTokenizer + AutoModelForCausalLM": (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"tok = AutoTokenizer.from_pretrained({path!r})\n"
            f"m = AutoModelForCausalLM.from_pretrained({path!r}, dtype=torch.float32)\n"
            "_report(load_s=time.perf_counter() - _t0)\n"
        ),
        "TransformerLens (HF + from_pretrained_no_processing)": (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"tok = AutoTokenizer.from_pretrained({path!r})\n"
            f"m = AutoModelForCausalLM.from_pretrained({path!r}, dtype=torch.float32)\n"
            "from benchmarks.peers import load_transformer_lens\n"
            "tl = load_transformer_lens(m, tok, torch.float32)\n"
            "_report(load_s=time.perf_counter() - _t0)\n"
        ),
    }
    rows = []
    for name, code in codes.items():
        if name.startswith("TransformerLens") and importlib.util.find_spec("transformer_lens") is None:
            missing = "not installed: ModuleNotFoundError: No module named 'transformer_lens'"
            rows += [
                {"name": name, "dtype": "float32", "error": missing},
                {"name": name + " peak RSS", "dtype": "float32", "error": missing},
            ]
            continue
        root = str(Path(__file__).resolve().parent.parent)
        results = [run_fresh(prelude + code, env={"PYTHONPATH": root}) for _ in range(repeats)]
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            rows.append({"name": name, "dtype": "float32", "error": errors[0]})
            rows.append({"name": name + " peak RSS", "dtype": "float32", "error": errors[0]})
            continue
        times = sorted(r["load_s"] for r in results)
        rss = sorted(r["peak_rss_mb"] for r in results)
        rows.append(
            {
                "name": name,
                "dtype": "float32",
                "value": times[len(times) // 2],
                "unit": "s",
                "runs_s": times,
                "note": "fresh process: imports + tokenizer + weights",
            }
        )
        rows.append(
            {"name": name + " peak RSS", "dtype": "float32", "value": rss[len(rss) // 2], "unit": "MB", "runs_mb": rss}
        )
    base_t = next((r for r in rows if r["name"] == "HF AutoTokenizer + AutoModelForCausalLM" and "value" in r), None)
    base_m = next(
        (r for r in rows if r["name"] == "HF AutoTokenizer + AutoModelForCausalLM peak RSS" and "value" in r), None
    )
    for row in rows:
        base = base_m if row["name"].endswith("peak RSS") else base_t
        if base is not None and "value" in row:
            row["ratio"] = row["value"] / base["value"]
    return rows


def load_targets(rows: list[dict]) -> list[dict]:
    by = {r["name"]: r for r in rows if "value" in r}
    ours = by.get("ours: load_model (embedded default) peak RSS")
    hf = by.get("HF AutoTokenizer + AutoModelForCausalLM peak RSS")
    met = None if ours is None or hf is None else ours["value"] <= 1.25 * hf["value"]
    return [target(
        "load: no second copy of the weights (peak RSS ≤ 1.25× plain HF)", met,
        lambda: f"{ours['value']:.0f} MB vs {hf['value']:.0f} MB")]
