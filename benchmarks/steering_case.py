"""Steered generation: our baseline + steered batch of two against plain ``model.generate``, and slider latency.

``run(gm, sae, prompt_ids, n_new=32, repeats=3) -> dict``:

* ``steered_tok_s``: tokens/s of the steered stream of our :func:`generate` (hooks on, KV cache, pair of rows);
* ``plain_tok_s``: ``gm.model.generate`` without hooks, greedy, same prompt and length, same run;
* ``ratio`` (target ≥ 0.9) and ``pair_ratio`` = both streams' tokens/s over plain (target ≥ 1.6);
* ``slider_to_first_token_ms``: in the :class:`Steer` widget, time from a strength change while a
  generation is streaming to the first token of the new generation (cancel + prefill + one step; ≤ 300 ms).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


def _feature(gm: Any, sae: Any, ids: torch.Tensor) -> tuple[int, float]:
    """A feature to steer and its strength unit (the widget's 1×)."""
    from gemscope_widgets.backend.steering.spec import normalize_steering
    from gemscope_widgets.backend.steering.units import strength_unit

    feature = 0
    return feature, strength_unit(gm, normalize_steering({feature: 1.0}, sae)[0]).value


def _plain(gm: Any, ids: torch.Tensor, n_new: int) -> float:
    pad = gm.tokenizer.pad_token_id if gm.tokenizer.pad_token_id is not None else 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        gm.model.generate(
            ids.unsqueeze(0).to(gm.device), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
            pad_token_id=pad,
        )
    return time.perf_counter() - t0


def _ours(gm: Any, sae: Any, ids: torch.Tensor, n_new: int, steering: dict[int, float]) -> float:
    from gemscope_widgets.backend.steering.generation import generate

    t0 = time.perf_counter()
    result = generate(gm, ids, steering, sae=sae, unit="raw", max_new_tokens=n_new, min_new_tokens=n_new)
    elapsed = time.perf_counter() - t0
    assert len(result.steered_ids) == n_new, (len(result.steered_ids), result.stopped)
    return elapsed


def _slider_latency(gm: Any, sae: Any, ids: torch.Tensor, feature: int, n_new: int, repeats: int) -> list[float]:
    from gemscope_widgets.widgets.steer import Steer

    text = gm.tokenizer.decode(ids[1:].tolist())
    w = Steer(gm, sae, text, {feature: 1.0}, max_new_tokens=max(n_new, 8), stop_at_eos=False)
    out = []
    try:
        for i in range(repeats):
            w.run()
            deadline = time.monotonic() + 120
            while len(w.steered_tokens) < 2 and w.running and time.monotonic() < deadline:
                time.sleep(0.001)
            t0 = time.perf_counter()
            w.set_strength(feature, 1.5 + 0.25 * i)
            while not w.steered_tokens and time.monotonic() < deadline:
                time.sleep(0.0005)
            out.append((time.perf_counter() - t0) * 1e3)
            w.wait()
    finally:
        w.close()
    return out


def run(gm: Any, sae: Any, prompt_ids: torch.Tensor, n_new: int = 32, repeats: int = 3) -> dict[str, Any]:
    """Steered vs plain generation tokens/s on ``gm`` and the widget's slider-to-first-token latency."""
    ids = torch.as_tensor(prompt_ids).reshape(-1)
    feature, scale = _feature(gm, sae, ids)
    steering = {feature: 1.0 * scale}
    _plain(gm, ids, min(n_new, 4))  # warm-up both paths
    _ours(gm, sae, ids, min(n_new, 4), steering)
    plain_s, ours_s = [], []
    for _ in range(max(1, repeats)):  # interleaved, so both see the same machine load
        plain_s.append(_plain(gm, ids, n_new))
        ours_s.append(_ours(gm, sae, ids, n_new, steering))
    plain_tps = n_new / statistics.median(plain_s)
    ours_tps = n_new / statistics.median(ours_s)
    latency = _slider_latency(gm, sae, ids, feature, n_new, max(1, repeats))
    return {
        "name": f"steering: {n_new} new tokens, prompt of {len(ids)} tokens",
        "n_new": n_new,
        "prompt_tokens": len(ids),
        "repeats": repeats,
        "strength_raw": round(scale, 3),
        "plain_tok_s": round(plain_tps, 2),
        "steered_tok_s": round(ours_tps, 2),
        "pair_tok_s": round(2 * ours_tps, 2),
        "ratio": round(ours_tps / plain_tps, 3),
        "ratio_target_met": ours_tps / plain_tps >= 0.9,
        "pair_ratio": round(2 * ours_tps / plain_tps, 3),
        "pair_ratio_target_met": 2 * ours_tps / plain_tps >= 1.6,
        "slider_to_first_token_ms": round(statistics.median(latency), 1),
        "slider_to_first_token_ms_all": [round(x, 1) for x in latency],
        "latency_target_met": statistics.median(latency) <= 300,
        # Minima are the least disturbed by other processes on a shared machine.
        "plain_tok_s_best": round(n_new / min(plain_s), 2),
        "steered_tok_s_best": round(n_new / min(ours_s), 2),
    }
