"""Corpus scan cost: ``FeatureStats.scan`` tokens/s against the bare early-exit forward, and its peak memory.

``run(gm, sae, texts)`` times, on the same batches in the same process:

- ``bare``: the early-exit forward alone (``capture`` up to the SAE's layer), no SAE;
- ``forward_encode``: that forward plus ``sae.encode`` of every real token, ``act_budget // width`` tokens at a
  time (the compute any scan must do, in bounded memory);
- ``scan``: the full streaming scan (examples, density, histograms; no cache, no progress bar).

``ratio_to_forward_encode`` is the target figure (≥ 0.8: the statistics cost at most a quarter of the
forward + encode); ``ratio_to_bare`` shows what the SAE's own matmul costs, which dominates for wide SAEs.
Peak memory is the resident-set growth during a scan, sampled every few milliseconds, for the given SAE (16k)
and a random 262k-wide one.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import threading
import time
from typing import Any

import torch


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """Highest resident set size seen while the block runs, minus the size when it started."""

    def __enter__(self) -> _PeakRSS:
        gc.collect()
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.003)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def grew_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def _batches(gm: Any, texts: list[str], max_doc_tokens: int, batch_size: int, batch_tokens: int) -> list:
    from gemscope_widgets.backend.stats.corpus import pad_batch, plan_batches, tokenize_docs

    docs = tokenize_docs(gm, texts, max_doc_tokens)
    groups = plan_batches([len(d) for d in docs], batch_size, batch_tokens)
    return [pad_batch([docs[i] for i in group], gm.tokenizer.pad_token_id) for group in groups]


def random_wide_sae(gm: Any, like: Any, width: int, texts: list[str], l0: float = 50, seed: int = 0) -> Any:
    """A random ``width``-wide JumpReLU SAE at ``like``'s site, thresholded so about ``l0`` features fire."""
    from gemscope_widgets.backend.dictionaries.sae import JumpReLUSAE
    from gemscope_widgets.backend.gemma.capture import capture
    from gemscope_widgets.backend.stats.corpus import tokenize_docs

    hook = like.config.hook_in
    ids = torch.tensor(tokenize_docs(gm, texts[:1], 128)[0])
    x = capture(gm, ids, [hook])[hook][0, 1:].float().cpu()
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(width, x.shape[-1], generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    pre = x @ w_dec.T
    k = max(1, int(pre.numel() * (1 - l0 / width)))
    threshold = float(pre.reshape(-1).kthvalue(k).values.clamp_min(1e-3))
    del pre
    config = dataclasses.replace(like.config, width=width, name=f"random-{width // 1024}k", raw={})
    return JumpReLUSAE(
        config,
        w_enc=w_dec.T.contiguous(),
        b_enc=torch.zeros(width),
        threshold=torch.full((width,), threshold),
        w_dec=w_dec,
        b_dec=torch.zeros(x.shape[-1]),
    )


def run(
    gm: Any,
    sae: Any,
    texts: list[str],
    *,
    max_doc_tokens: int = 128,
    batch_size: int = 16,
    batch_tokens: int = 2048,
    repeats: int = 2,
    wide_width: int = 262144,
    wide_docs: int = 8,
    act_budget: int = 2**24,
) -> dict[str, Any]:
    """Scan throughput vs the bare early-exit forward, and peak memory for ``sae`` and a ``wide_width`` SAE."""
    from gemscope_widgets.backend.gemma.capture import capture
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats

    texts = list(texts)
    batches = _batches(gm, texts, max_doc_tokens, batch_size, batch_tokens)
    n_tokens = sum(int(m.sum()) - m.shape[0] for _, m in batches)  # <bos> excluded, as the scan counts
    hooks = list(sae.read_hook_points)

    def bare() -> None:
        for ids, mask in batches:
            capture(gm, ids, hooks, stop_early=True, attention_mask=mask)

    chunk = max(1, act_budget // int(sae.width))

    def forward_encode() -> None:  # the SAE on every real token, as many tokens at a time as the scan encodes
        for ids, mask in batches:
            with torch.inference_mode():
                x = capture(gm, ids, hooks, stop_early=True, attention_mask=mask)[hooks[0]]
                x = x[mask.bool().to(x.device)]
                for a in range(0, x.shape[0], chunk):
                    sae.encode(x[a : a + chunk])

    def scan() -> FeatureStats:
        return FeatureStats.scan(gm, sae, texts, max_doc_tokens=max_doc_tokens, batch_size=batch_size,
                                 batch_tokens=batch_tokens, act_budget=act_budget, cache=False, progress=False)

    times: dict[str, list[float]] = {"bare": [], "forward_encode": [], "scan": []}
    fns = {"bare": bare, "forward_encode": forward_encode, "scan": scan}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():  # interleaved: machine noise hits every path alike
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    tok_s = {k: n_tokens / v for k, v in best.items()}
    out: dict[str, Any] = {
        "n_tokens": n_tokens,
        "n_docs": len(texts),
        "width": int(sae.width),
        "tokens_per_s": tok_s,
        "ratio_to_bare": tok_s["scan"] / tok_s["bare"],
        "ratio_to_forward_encode": tok_s["scan"] / tok_s["forward_encode"],
        "target_ratio_to_forward_encode": 0.8,
        "times_s": times,
    }
    memory = {}
    with _PeakRSS() as m:
        scan()
    memory[f"{sae.width}"] = {"peak_growth_mb": m.grew_mb, "docs": len(texts)}
    if wide_width:
        wide = random_wide_sae(gm, sae, wide_width, texts)
        with _PeakRSS() as m:
            start = time.perf_counter()
            stats = FeatureStats.scan(gm, wide, texts[:wide_docs], max_doc_tokens=max_doc_tokens,
                                      batch_size=batch_size, batch_tokens=batch_tokens, cache=False, progress=False)
            wide_s = time.perf_counter() - start
        state_mb = sum(t.numel() * t.element_size() for t in stats._tensors.values()) / 2**20
        memory[f"{wide_width}"] = {"peak_growth_mb": m.grew_mb, "docs": min(wide_docs, len(texts)),
                                   "result_tensors_mb": state_mb, "tokens_per_s": stats.n_tokens / wide_s,
                                   "sae_weights_mb": 2 * wide_width * wide.config.d_in * 4 / 2**20}
        del wide, stats
        gc.collect()
    out["peak_memory"] = memory
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m benchmarks.scan_case [--docs N] [--width W] [--dtype float32|bfloat16 ...]``: the scan's
    throughput as a ratio to forward + encode over the same batches, real 270M, one SAE of ``--width``."""
    import argparse
    import json

    from gemscope_widgets.backend.gemma.model import load_model
    from gemscope_widgets.backend.stats.corpus import default_corpus

    ap = argparse.ArgumentParser(prog="python -m benchmarks.scan_case")
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--width", type=int, default=16384)
    ap.add_argument("--dtype", nargs="+", default=["float32"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--memory", action="store_true", help="also measure peak memory at 262k")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("GEMSCOPE_BENCH_THREADS", "2")))
    from gemscope_widgets.testing.calibrated import calibrated_sae

    texts = default_corpus(max_docs=args.docs)
    out = {}
    for dtype in args.dtype:
        gm = load_model("gemma-3-270m", device="cpu", dtype=dtype)
        sae = calibrated_sae(gm, 9, 16384)
        if args.width != 16384:
            sae = random_wide_sae(gm, sae, args.width, texts)
        out[dtype] = run(gm, sae, texts, repeats=args.repeats, wide_width=262144 if args.memory else 0)
        print(dtype, json.dumps({k: out[dtype][k] for k in ("width", "n_tokens", "tokens_per_s", "ratio_to_bare",
                                                              "ratio_to_forward_encode")}, default=float), flush=True)
    return out


if __name__ == "__main__":
    main()
