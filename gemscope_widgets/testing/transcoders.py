"""Transcoder sets in the exact Gemma Scope 2 layout with random weights and thresholds calibrated on the model's own
MLP inputs, so that about ``l0`` features fire per token as in the published sets. Used by the circuit tests, the
circuit-tracer peer check and the circuit benchmarks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CALIBRATION_TEXT = (
    "The capital of France is Paris, and the capital of Italy is Rome. "
    "def add(a, b):\n    return a + b\n"
    "In 1492 Columbus sailed the ocean blue. She said \"hello\" (quietly) and left [early]."
)
READ = "model.layers.{L}.pre_feedforward_layernorm.output"
WRITE = "model.layers.{L}.post_feedforward_layernorm.output"


def write_calibrated_set(
    gm: Any,
    root: Path,
    *,
    width: int = 256,
    l0: int = 12,
    affine: bool = True,
    layers: Any = None,
    kind: str = "transcoder",
    seed: int = 0,
    model_name: str | None = None,
) -> Path:
    """Write ``root/transcoder_all/layer_{L}_width_{width}_l0_small[_affine]`` for each layer (``kind="transcoder"``)
    or ``root/clt/width_{width}_l0_small[_affine]`` (``kind="clt"``) and return ``root``.

    Encoders are random unit columns; thresholds are each feature's ``1 - l0/width`` quantile of its
    pre-activation on a calibration text (BOS excluded) with ``b_enc`` = 0; decoders are random rows scaled to the
    MLP output's typical norm / sqrt(l0); the skip is a small random matrix.
    """
    from gemscope_widgets.backend.dictionaries.loading import save_gemma_scope_folder
    from gemscope_widgets.backend.gemma.capture import capture

    gen = torch.Generator().manual_seed(seed)
    layers = list(range(gm.n_layers)) if layers is None else list(layers)
    ids = gm.prompt(CALIBRATION_TEXT).input_ids
    points = [READ.format(L=i) for i in layers] + [WRITE.format(L=i) for i in layers]
    acts = capture(gm, ids, points, stop_early=False)
    d = gm.d_model
    name = model_name if model_name is not None else gm.name
    suffix = "_affine" if affine else ""
    per_layer = width // len(layers) if kind == "clt" else width
    slots: list[Mapping[str, torch.Tensor]] = []
    for i in layers:
        x = acts[READ.format(L=i)][0, 1:].float()
        y = acts[WRITE.format(L=i)][0, 1:].float()
        w_enc = torch.randn(d, per_layer, generator=gen)
        w_enc /= w_enc.norm(dim=0, keepdim=True)
        pre = x @ w_enc
        threshold = torch.quantile(pre, 1 - min(1.0, l0 / per_layer), dim=0).clamp(min=1e-3)
        scale = float(y.norm(dim=-1).median()) / math.sqrt(l0) / max(float(pre.clamp(min=0).max()), 1e-6)
        params = {
            "w_enc": w_enc,
            "b_enc": torch.zeros(per_layer),
            "threshold": threshold,
            "w_dec": torch.randn(per_layer, d, generator=gen) / math.sqrt(d) * scale,
            "b_dec": 0.1 * torch.randn(d, generator=gen) * float(y.std()),
        }
        if affine:
            params["affine_skip_connection"] = 0.1 * torch.randn(d, d, generator=gen) / math.sqrt(d)
        if kind == "clt":
            full = torch.randn(per_layer, len(layers), d, generator=gen) / math.sqrt(d) * scale / math.sqrt(len(layers))
            full[:, : layers.index(i)] = 0.0
            params["w_dec"] = full
            slots.append(params)
        else:
            cfg = {
                "hf_hook_point_in": READ.format(L=i),
                "hf_hook_point_out": WRITE.format(L=i),
                "width": width,
                "model_name": name,
                "architecture": "jump_relu",
                "l0": l0,
                "affine_connection": affine,
                "type": "transcoder",
            }
            save_gemma_scope_folder(root / "transcoder_all" / f"layer_{i}_width_{width}_l0_small{suffix}", cfg, params)
    if kind == "clt":
        cfg = {
            "hf_hook_point_in": "model.layers.{all}.pre_feedforward_layernorm.output",
            "hf_hook_point_out": "model.layers.{all}.post_feedforward_layernorm.output",
            "width": per_layer * len(layers),
            "model_name": name,
            "architecture": "jump_relu",
            "l0": l0,
            "affine_connection": affine,
            "type": "clt",
        }
        save_gemma_scope_folder(root / "clt" / f"width_{width}_l0_small{suffix}", cfg, slots)
    return root
