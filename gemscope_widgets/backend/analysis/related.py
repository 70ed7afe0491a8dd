"""Features related by decoder direction: cosine similarity of decoder rows, with no corpus needed."""

from __future__ import annotations

import math
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


def nearest_decoder_rows(
    queries: Any,
    keys: Any,
    n: int = 5,
    *,
    exclude_self: bool = False,
    chunk: int = 4096,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every decoder row of ``queries``, the ``n`` decoder rows of ``keys`` with the highest cosine.

    Returns ``(indices [W_q, n] int64, cosines [W_q, n] float32)``, best first (exact ties in either order). Both
    decoders are streamed ``chunk`` rows at a time, keeping only the running top ``n`` per query row: memory
    is ``O(chunk² + W_q · n)``, never ``W_q × W_k`` (a 16k × 262k comparison holds one ``chunk × chunk``
    block). ``exclude_self`` (``queries`` and ``keys`` the same dictionary) leaves each row out of its own
    list. Rows of zero norm have cosine 0 with everything.
    """
    from tqdm.auto import tqdm

    n = min(int(n), int(keys.width) - (1 if exclude_self else 0))
    out_idx = torch.empty(int(queries.width), n, dtype=torch.long)
    out_val = torch.empty(int(queries.width), n, dtype=torch.float32)
    bar = tqdm(total=int(queries.width), desc="Nearest decoder rows", unit="row", disable=not progress)
    for q0, q_rows in _decoder_blocks(queries, chunk):
        q = q_rows / q_rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
        best_val = torch.full((q.shape[0], 0), -math.inf, device=q.device)
        best_idx = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
        for k0, k_rows in _decoder_blocks(keys, chunk):
            k_rows = k_rows.to(q.device)
            sims = q @ (k_rows / k_rows.norm(dim=1, keepdim=True).clamp_min(1e-12)).T
            idx = torch.arange(k0, k0 + k_rows.shape[0], device=q.device)
            if exclude_self:
                own = torch.arange(q0, q0 + q.shape[0], device=q.device).unsqueeze(1) == idx.unsqueeze(0)
                sims = sims.masked_fill(own, -math.inf)
            top = sims.topk(min(n, sims.shape[1]), dim=1)
            vals = torch.cat([best_val, top.values], 1)
            ids = torch.cat([best_idx, idx[top.indices]], 1)
            order = vals.topk(min(n, vals.shape[1]), dim=1).indices
            best_val, best_idx = vals.gather(1, order), ids.gather(1, order)
        out_idx[q0 : q0 + q.shape[0]] = best_idx.cpu()
        out_val[q0 : q0 + q.shape[0]] = best_val.float().cpu()
        bar.update(q.shape[0])
    bar.close()
    return out_idx, out_val
