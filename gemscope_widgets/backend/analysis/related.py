"""Features related by decoder direction: cosine similarity of decoder rows, with no corpus needed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def _decoder_blocks(sae: Any, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first feature, rows [n, D])`` of the decoder, a chunk at a time.

    Multi-layer kinds (CLT, crosscoder) get one row per feature spanning every output slot (zeros where a
    feature does not write), so the cosine compares whole write patterns.
    """
    w_dec = getattr(sae, "w_dec", None)
    if isinstance(w_dec, torch.Tensor) and w_dec.dim() == 2:
        for a in range(0, w_dec.shape[0], chunk):
            yield a, w_dec[a : a + chunk].float()
        return
    n_slots, d = sae.n_slots, sae.config.d_out
    start = 0
    for i in range(n_slots):
        w = getattr(sae, f"w_dec_{i}")  # [W_i, S - offset, d]
        offset = n_slots - w.shape[1]
        for a in range(0, w.shape[0], chunk):
            block = w[a : a + chunk].float()
            rows = torch.zeros(block.shape[0], n_slots * d)
            rows[:, offset * d :] = block.reshape(block.shape[0], -1).cpu()
            yield start + a, rows
        start += w.shape[0]


def _row(sae: Any, f: int) -> torch.Tensor:
    for first, rows in _decoder_blocks(sae, 1 << 14):
        if first <= f < first + rows.shape[0]:
            return rows[f - first]
    raise AssertionError("unreachable: check_feature bounds f")


def related_by_decoder(sae: Any, f: int, k: int = 10, *, chunk: int = 1 << 14) -> list[tuple[int, float]]:
    """The ``k`` features whose decoder rows have the highest cosine similarity with feature ``f``'s.

    Streams the decoder ``chunk`` rows at a time, so a 262k-wide SAE never allocates ``W × W`` (nor even a
    normalised copy of ``w_dec``).
    """
    f = sae.check_feature(f)
    target = _row(sae, f)
    target = target / target.norm().clamp_min(1e-12)
    best_val = torch.empty(0)
    best_idx = torch.empty(0, dtype=torch.long)
    for first, rows in _decoder_blocks(sae, chunk):
        rows = rows.to(target.device)
        sims = (rows @ target) / rows.norm(dim=1).clamp_min(1e-12)
        idx = torch.arange(first, first + rows.shape[0])
        keep = idx != f
        vals = torch.cat([best_val, sims[keep].cpu()])
        ids = torch.cat([best_idx, idx[keep]])
        top = torch.topk(vals, min(k, vals.numel()))
        best_val, best_idx = top.values, ids[top.indices]
    return [(int(i), float(v)) for i, v in zip(best_idx, best_val, strict=True)]
