"""Heatmap cost: call -> payload ready, against a plain Hugging Face forward stopped at the SAE layer + encode.

``run(gm, sae, prompt, repeats)`` returns a dict (times in ms, the ratio, payload bytes). Both paths run
interleaved in the same process on the same token ids, so the ratio is robust to machine noise.
The SAE is :func:`gemscope_widgets.testing.calibrated.calibrated_sae`.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import time
from typing import Any

import torch

_LAYER_OUTPUT = re.compile(r"^model\.layers\.(\d+)\.output$")

class _Stop(Exception):
    pass


def _plain_hf(gm: Any, sae: dict[str, torch.Tensor], input_ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, ...]:
    """The reference: HF forward with a hook that stops at the layer, JumpReLU encode, non-zeros out."""
    captured = {}

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        captured["x"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = gm.layers[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            with contextlib.suppress(_Stop):
                gm.model(input_ids=input_ids[None].to(gm.device))
            x = captured["x"][0].float()
            pre = x @ sae["w_enc"] + sae["b_enc"]
            acts = torch.relu(pre) * (pre > sae["threshold"])
            acts[0] = 0  # <bos>, as the widget masks it
            rows, cols = torch.nonzero(acts, as_tuple=True)
            return rows.cpu(), cols.cpu(), acts[rows, cols].cpu()
    finally:
        handle.remove()


def _widget_payload(gm: Any, sae: Any, prompt: Any) -> tuple[dict[str, Any], bytes]:
    from gemscope_widgets.backend.analysis.features import prompt_features
    from gemscope_widgets.widgets.payload import encode_payload

    acts = prompt_features(gm, [sae], prompt)
    return encode_payload([acts[0].prompt], [acts])


def run(gm: Any, sae: Any, prompt: Any, repeats: int = 7) -> dict[str, Any]:
    """Median ms of (a) ``prompt_features`` + ``encode_payload`` and (b) plain HF forward-to-layer + encode."""
    from gemscope_widgets.widgets.payload import payload_nbytes

    hooks = tuple(sae.config.hook_points_in)
    match = _LAYER_OUTPUT.match(hooks[0]) if len(hooks) == 1 else None
    if match is None:
        raise NotImplementedError(f"the plain-HF reference handles resid_post SAEs only, not {hooks}")
    layer = int(match.group(1))
    tokenized = gm.prompt(prompt)
    plain_sae = {n: getattr(sae, n).float().to(gm.device) for n in ("w_enc", "b_enc", "threshold")}

    _widget_payload(gm, sae, tokenized)  # warm-up both paths
    _plain_hf(gm, plain_sae, tokenized.input_ids, layer)
    widget_ms, plain_ms, build_ms = [], [], []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        header, blob = _widget_payload(gm, sae, prompt)
        widget_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        rows, _, _ = _plain_hf(gm, plain_sae, tokenized.input_ids, layer)
        plain_ms.append((time.perf_counter() - t0) * 1e3)
    from gemscope_widgets.scope import Scope

    scope = Scope(gm, sae, check=False)
    for _ in range(max(1, min(repeats, 3))):
        t0 = time.perf_counter()
        scope.heatmap(prompt, progress=False).close()
        build_ms.append((time.perf_counter() - t0) * 1e3)
    widget, plain = statistics.median(widget_ms), statistics.median(plain_ms)
    n_tokens = len(tokenized)
    nnz = header["blocks"][0]["nnz"]
    return {
        "name": f"heatmap: call -> payload ready, {n_tokens} tokens",
        "tokens": n_tokens,
        "width": int(sae.width),
        "repeats": repeats,
        "payload_ms": round(widget, 2),
        "plain_hf_ms": round(plain, 2),
        "ratio": round(widget / plain, 3),
        # Minima are the least disturbed by other processes on a shared machine.
        "payload_min_ms": round(min(widget_ms), 2),
        "plain_hf_min_ms": round(min(plain_ms), 2),
        "ratio_min": round(min(widget_ms) / min(plain_ms), 3),
        "widget_build_ms": round(statistics.median(build_ms), 2),
        "nnz": nnz,
        "plain_nnz": len(rows),
        "l0": round(nnz / max(1, n_tokens - int(tokenized.masked.sum())), 1),
        "payload_bytes": payload_nbytes(header, blob),
        "blob_bytes": len(blob),
        "target": "ratio <= 1.05, payload <= 32 KB for 128 tokens x 16k",
    }
