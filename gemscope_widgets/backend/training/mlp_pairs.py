"""What a transcoder is trained on: every layer's MLP input and output for the same tokens, in one pass.

A Gemma Scope 2 transcoder reads ``model.layers.L.pre_feedforward_layernorm.output`` and predicts
``model.layers.L.post_feedforward_layernorm.output`` (the MLP's contribution to the residual stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.gemma.sites import site_hook_points
from gemscope_widgets.errors import TrainingError


def mlp_in_point(layer: int) -> str:
    """The Gemma Scope 2 transcoder input hook point of ``layer``."""
    return site_hook_points("transcoder", layer)[0]


def mlp_out_point(layer: int) -> str:
    """The Gemma Scope 2 transcoder output hook point of ``layer``."""
    return site_hook_points("transcoder", layer)[1]


@torch.no_grad()
def collect_mlp_pairs(
    gm: Any,
    windows: torch.Tensor,
    layers: Sequence[int],
    *,
    max_tokens: int | None = None,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLP inputs ``[L, N, d_model]`` and outputs ``[L, N, d_model]`` (``dtype``, CPU) of ``layers``.

    One forward pass per batch of ``windows`` ``[B, ctx]`` captures every layer (stopping after the
    deepest); row ``n`` is the same token in every layer. BOS and other special tokens are dropped, as for
    the demo SAE.
    """
    layers = list(layers)
    points_in = [mlp_in_point(layer) for layer in layers]
    points_out = [mlp_out_point(layer) for layer in layers]
    special = torch.tensor(sorted(set(gm.tokenizer.all_special_ids)), dtype=torch.long)
    keep_all = ~torch.isin(windows, special)
    available = int(keep_all.sum())
    want = min(max_tokens, available) if max_tokens is not None else available
    if want < 2:
        raise TrainingError("the corpus gave fewer than 2 non-special tokens; give the training more text.")
    d = gm.d_model
    xs = torch.empty(len(layers), want, d, dtype=dtype)
    ys = torch.empty(len(layers), want, d, dtype=dtype)
    filled = 0
    bar = tqdm(total=want, desc=f"MLP activations ({len(layers)} layers)", unit="tok", disable=not progress)
    for start in range(0, len(windows), batch_size):
        ids = windows[start : start + batch_size]
        got = capture(gm, ids, [*points_in, *points_out], stop_early=True)
        keep = keep_all[start : start + batch_size]
        take = min(int(keep.sum()), want - filled)
        for i, (p_in, p_out) in enumerate(zip(points_in, points_out)):
            xs[i, filled : filled + take] = got[p_in].to(dtype).cpu()[keep][:take]
            ys[i, filled : filled + take] = got[p_out].to(dtype).cpu()[keep][:take]
        filled += take
        bar.update(take)
        if filled >= want:
            break
    bar.close()
    return xs[:, :filled], ys[:, :filled]
