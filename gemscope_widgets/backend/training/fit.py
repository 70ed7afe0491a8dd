"""Fit a JumpReLU SAE to activations, as Gemma Scope 2 does (Rajamanoharan et al. 2024, "Jumping Ahead").

The SAE is a stack of one in :mod:`.stacked_fit`'s loop (shared with the transcoder set): a JumpReLU with a
learned per-feature threshold, rectangle-kernel pseudo-derivatives of bandwidth ``eps``, a quadratic L0 penalty
with an integral term that settles the batch L0 on its target, an optional frequency penalty, and resampling
of dead features. Inputs are centred and divided by one scalar during training (Gemma residual norms are in
the thousands); both are folded into the returned weights, so they are used with the plain GS2 math on raw
activations::

    pre = x @ w_enc + b_enc ; acts = relu(pre) * (pre > threshold) ; recon = acts @ w_dec + b_dec

Decoder rows are kept at unit norm (as in GS2), which makes feature activations come out in the residual
stream's own units. The encoder starts as the decoder's transpose and the thresholds at the quantile that
makes every feature fire on ``target_l0 / width`` of the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gemscope_widgets.backend.analysis.evaluation import fvu
from gemscope_widgets.backend.memory import releases_buffers_on_error
from gemscope_widgets.backend.training.stacked_fit import fit_stacked
from gemscope_widgets.errors import TrainingError


@dataclass
class TrainingReport:
    """What a training run measured on its own data."""

    steps: int
    tokens_seen: int
    l0: float
    fvu: float
    dead_fraction: float
    resampled: int
    scale: float


@releases_buffers_on_error
def fit_jumprelu(acts: torch.Tensor, **options: Any) -> tuple[dict[str, torch.Tensor], TrainingReport]:
    """Fit a JumpReLU SAE to raw activations ``[N, d]``; return GS2 params (mean and scale folded in).

    Options are those of :func:`_fit`. Small SAEs run on one CPU thread: their steps are too short for
    thread synchronisation to pay (measured 20x slower with two threads on a busy machine).
    """
    small = acts.device.type == "cpu" and acts.shape[-1] * options.get("width", 0) < 1_000_000
    threads = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        return _fit(acts, **options)
    finally:
        torch.set_num_threads(threads)


SAE_OPTIONS: dict[str, Any] = {
    "batch_size": 1024, "lr": 1e-3, "threshold_lr": 1e-2, "l0_coefficient": 4.0, "l0_integral": 0.1,
    "resample_every": 100, "min_frequency": 3e-4,
}
"""The SAE's defaults for :func:`~.stacked_fit.fit_stacked`'s options."""


def _fit(
    acts: torch.Tensor,
    *,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    **options: Any,
) -> tuple[dict[str, torch.Tensor], TrainingReport]:
    """The SAE front end of :func:`~.stacked_fit.fit_stacked`, which documents the loss and the options
    (``width``, ``target_l0`` and ``steps`` are required; the others default to :data:`SAE_OPTIONS`)."""
    if acts.ndim != 2 or len(acts) < 2:
        raise TrainingError(f"need activations of shape [N, d] with N >= 2, got {tuple(acts.shape)}.")
    device = torch.device(device) if device is not None else acts.device
    acts = acts.to(device, torch.float32)
    mean = acts.mean(0)
    # One scalar so that E||x - mean||² = 1: the MSE then reads as FVU and eps / lr transfer across models.
    x = acts - mean
    scale = float(x.pow(2).sum(-1).mean().sqrt())
    x = x.div_(scale).unsqueeze(0)
    generator = torch.Generator().manual_seed(seed)
    options = {**SAE_OPTIONS, **options}
    run = fit_stacked(x, x, [generator], generator, tied=True, progress=progress, desc="training SAE", **options)
    del x
    params = run.module.fold(0, mean, mean, scale, scale)
    with torch.no_grad():
        sample = acts[run.order[:8192].to(device)]
        pre = sample @ params["w_enc"] + params["b_enc"]
        f = torch.relu(pre) * (pre > params["threshold"])
        recon = f @ params["w_dec"] + params["b_dec"]
        report = TrainingReport(
            steps=options["steps"],
            tokens_seen=options["steps"] * min(options["batch_size"], len(acts)),
            l0=float((f > 0).sum(-1).float().mean()),
            fvu=fvu(sample, recon),
            dead_fraction=float((~alive_in(acts, params)).float().mean()),
            resampled=run.resampled[0],
            scale=scale,
        )
    return params, report


@torch.no_grad()
def alive_in(acts: torch.Tensor, params: dict[str, torch.Tensor], chunk: int = 8192) -> torch.Tensor:
    """Bool ``[W]``: which features fire at least once on ``acts`` (GS2 math on raw activations)."""
    alive = torch.zeros(params["w_enc"].shape[1], dtype=torch.bool, device=params["w_enc"].device)
    for start in range(0, len(acts), chunk):
        pre = acts[start : start + chunk].float() @ params["w_enc"] + params["b_enc"]
        alive |= ((pre > params["threshold"]) & (pre > 0)).any(0)
    return alive
