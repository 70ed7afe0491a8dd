"""SAE feature activations for a prompt, kept sparse (CSR: one row per token)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gemscope_widgets.backend.dictionaries.base import stack_slots
from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.gemma.prompts import Messages, Prompt

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

# Tokens encoded per chunk: bounds the dense [chunk, width] block (a 262k-wide SAE is 1 GB per 1k tokens).
_CHUNK_TOKENS = 256


@dataclass
class SparseActivations:
    """Non-zero activations of one SAE over one prompt, in CSR form.

    Row ``t`` is token ``t``: ``indices[indptr[t]:indptr[t+1]]`` are the firing features, sorted by value
    (largest first), with ``values`` alongside. Masked positions (``<bos>``, ``<pad>``) have empty rows.
    """

    prompt: Prompt
    sae_name: str
    width: int
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def n_tokens(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def token(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Features and values firing at token ``t``, largest first."""
        lo, hi = self.indptr[t], self.indptr[t + 1]
        return self.indices[lo:hi], self.values[lo:hi]

    def feature(self, f: int) -> np.ndarray:
        """Activation of feature ``f`` at every token (zeros where it does not fire)."""
        out = np.zeros(self.n_tokens, dtype=np.float32)
        rows = np.repeat(np.arange(self.n_tokens), np.diff(self.indptr))
        hit = self.indices == f
        out[rows[hit]] = self.values[hit]
        return out

    def dense(self) -> torch.Tensor:
        """The full ``[T, width]`` matrix (for tests and small prompts)."""
        out = torch.zeros(self.n_tokens, self.width, dtype=torch.float32)
        rows = np.repeat(np.arange(self.n_tokens), np.diff(self.indptr))
        out[torch.from_numpy(rows), torch.from_numpy(self.indices.astype(np.int64))] = torch.from_numpy(self.values)
        return out


def sae_inputs(sae: Any, activations: dict[str, torch.Tensor]) -> torch.Tensor:
    """The encoder input for ``sae`` from captured activations: ``[..., d]``, or ``[..., n, d]`` for multi-site SAEs."""
    return stack_slots(activations, sae.config.hook_points_in)


def sparsify(acts: torch.Tensor, masked: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense ``[T, W]`` activations to CSR arrays, rows sorted by value (largest first)."""
    if masked is not None:
        acts = acts.masked_fill(masked.to(acts.device).unsqueeze(-1), 0.0)
    rows, cols = torch.nonzero(acts > 0, as_tuple=True)
    vals = acts[rows, cols]
    # Stable sort by value descending, then stable by row: rows stay grouped, values ordered within a row.
    order = torch.argsort(vals, descending=True, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    counts = torch.bincount(rows, minlength=acts.shape[0])
    indptr = np.zeros(acts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts.cpu().numpy(), out=indptr[1:])
    return indptr, cols[order].to(torch.int32).cpu().numpy(), vals[order].float().cpu().numpy()


def encode_sparse(sae: Any, x: torch.Tensor, masked: torch.Tensor | None = None) -> tuple[np.ndarray, ...]:
    """Encode ``x`` (``[T, ...]``) chunk by chunk and return CSR arrays."""
    parts = []
    for start in range(0, x.shape[0], _CHUNK_TOKENS):
        chunk = x[start : start + _CHUNK_TOKENS]
        chunk_mask = masked[start : start + _CHUNK_TOKENS] if masked is not None else None
        parts.append(sparsify(sae.encode(chunk), chunk_mask))
    if len(parts) == 1:
        return parts[0]
    indptr = [np.zeros(1, dtype=np.int64)]
    offset = 0
    for p in parts:
        indptr.append(p[0][1:] + offset)
        offset += int(p[0][-1])
    return (
        np.concatenate(indptr),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


def prompt_features(
    gm: GemmaModel,
    saes: Sequence[Any] | Any,
    prompt: str | Messages | Prompt,
    *,
    mask_special: bool = True,
    max_tokens: int | None = None,
) -> list[SparseActivations]:
    """Sparse activations of every SAE in ``saes`` on ``prompt``, from a single early-exit forward pass."""
    if not isinstance(saes, (list, tuple)):
        saes = [saes]
    tokenized = gm.prompt(prompt, max_tokens=max_tokens)
    points = [p for sae in saes for p in sae.config.hook_points_in]
    with torch.inference_mode():
        captured = capture(gm, tokenized.input_ids, points)
        masked = tokenized.masked if mask_special else None
        results = []
        for sae in saes:
            x = sae_inputs(sae, {k: v[0] for k, v in captured.items()})
            indptr, indices, values = encode_sparse(sae, x, masked)
            results.append(
                SparseActivations(tokenized, sae.config.name, int(sae.width), indptr, indices, values)
            )
    return results
