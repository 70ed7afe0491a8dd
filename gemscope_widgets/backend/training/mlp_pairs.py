"""What a transcoder is trained on: every layer's MLP input and output for the same tokens, in one pass.

A Gemma Scope 2 transcoder reads ``model.layers.L.pre_feedforward_layernorm.output`` and predicts
``model.layers.L.post_feedforward_layernorm.output`` (the MLP's contribution to the residual stream).

Two ways to hold them: :func:`collect_mlp_pairs` returns tensors (small runs, evaluation), and
:func:`store_mlp_pairs` appends each batch to one bfloat16 file per layer and side (:class:`MlpPairStore`),
so a 96k-token, 18-layer collection costs disk (4.4 GB), not memory; the fit then maps one layer's file at a
time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.gemma.sites import site_hook_points
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.errors import TrainingError


def mlp_in_point(layer: int) -> str:
    """The Gemma Scope 2 transcoder input hook point of ``layer``."""
    return site_hook_points("transcoder", layer)[0]


def mlp_out_point(layer: int) -> str:
    """The Gemma Scope 2 transcoder output hook point of ``layer``."""
    return site_hook_points("transcoder", layer)[1]


STORE_DTYPE = torch.bfloat16
"""How :func:`store_mlp_pairs` keeps activations on disk (half of float32; the fit computes in float32)."""


@dataclass(frozen=True)
class MlpPairSide:
    """One side (inputs or outputs) of an :class:`MlpPairStore`: ``side[i]`` is layer ``i``'s ``[N, d]``
    bfloat16 tensor, memory-mapped read-only from its file (the mapping goes when the tensor is freed)."""

    files: tuple[Path, ...]
    n: int
    d: int

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_file(str(self.files[i]), shared=False, size=self.n * self.d, dtype=STORE_DTYPE).view(
            self.n, self.d
        )


@dataclass(frozen=True)
class MlpPairStore:
    """MLP inputs and outputs of ``layers`` for ``n`` tokens, one raw bfloat16 file per layer and side under
    ``folder`` (``layer_{L}.in.bf16``, ``layer_{L}.out.bf16``, row-major ``[n, d]``)."""

    folder: Path
    layers: tuple[int, ...]
    n: int
    d: int

    def _files(self, side: str) -> tuple[Path, ...]:
        return tuple(self.folder / f"layer_{layer}.{side}.bf16" for layer in self.layers)

    @property
    def inputs(self) -> MlpPairSide:
        return MlpPairSide(self._files("in"), self.n, self.d)

    @property
    def outputs(self) -> MlpPairSide:
        return MlpPairSide(self._files("out"), self.n, self.d)


def _pair_batches(
    gm: Any, windows: torch.Tensor, layers: Sequence[int], max_tokens: int | None, batch_size: int, progress: bool
) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Per batch of windows, each layer's MLP inputs and outputs ``[k, d]`` of its non-special tokens, until
    ``max_tokens`` rows."""
    points_in = [mlp_in_point(layer) for layer in layers]
    points_out = [mlp_out_point(layer) for layer in layers]
    special = torch.tensor(sorted(set(gm.tokenizer.all_special_ids)), dtype=torch.long)
    keep_all = ~torch.isin(windows, special)
    available = int(keep_all.sum())
    want = min(max_tokens, available) if max_tokens is not None else available
    if want < 2:
        raise TrainingError("the corpus gave fewer than 2 non-special tokens; give the training more text.")
    filled = 0
    bar = progress_bar(total=want, desc=f"MLP activations ({len(layers)} layers)", unit="tok", disable=not progress)
    try:
        for start in range(0, len(windows), batch_size):
            ids = windows[start : start + batch_size]
            got = capture(gm, ids, [*points_in, *points_out], stop_early=True)
            keep = keep_all[start : start + batch_size]
            take = min(int(keep.sum()), want - filled)
            yield (
                [got[p].cpu()[keep][:take] for p in points_in],
                [got[p].cpu()[keep][:take] for p in points_out],
            )
            del got
            filled += take
            bar.update(take)
            if filled >= want:
                break
    finally:
        bar.close()


@torch.no_grad()
def store_mlp_pairs(
    gm: Any,
    windows: torch.Tensor,
    layers: Sequence[int],
    folder: str | os.PathLike[str],
    *,
    max_tokens: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> MlpPairStore:
    """Like :func:`collect_mlp_pairs`, but each batch is appended to bfloat16 files under ``folder`` (created);
    memory holds one batch. Returns the :class:`MlpPairStore` (the caller deletes ``folder`` when done)."""
    layers = list(layers)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    store = MlpPairStore(out, tuple(layers), 0, gm.d_model)
    n = 0
    with contextlib.ExitStack() as stack:
        handles: list[BinaryIO] = [
            stack.enter_context(open(f, "wb")) for f in (*store.inputs.files, *store.outputs.files)
        ]
        for xs, ys in _pair_batches(gm, windows, layers, max_tokens, batch_size, progress):
            for fh, t in zip(handles, (*xs, *ys)):
                fh.write(t.to(STORE_DTYPE).contiguous().view(torch.int16).numpy().tobytes())
            n += len(xs[0])
    return MlpPairStore(out, tuple(layers), n, gm.d_model)


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
    xs: list[list[torch.Tensor]] = [[] for _ in layers]
    ys: list[list[torch.Tensor]] = [[] for _ in layers]
    for bx, by in _pair_batches(gm, windows, layers, max_tokens, batch_size, progress):
        for i in range(len(layers)):
            xs[i].append(bx[i].to(dtype))
            ys[i].append(by[i].to(dtype))
    return torch.stack([torch.cat(c) for c in xs]), torch.stack([torch.cat(c) for c in ys])
