"""Fit a JumpReLU SAE to activations, as Gemma Scope 2 does (Rajamanoharan et al. 2024, "Jumping Ahead").

A JumpReLU with a learned per-feature threshold, trained through a rectangle-kernel pseudo-derivative of
bandwidth ``eps``, and a quadratic penalty that pulls the batch L0 onto a target. Inputs are divided by one
scalar during training (Gemma residual norms are in the thousands) and that scalar is folded into the
returned weights, so they are used with the plain GS2 math on raw activations::

    pre = x @ w_enc + b_enc ; acts = relu(pre) * (pre > threshold) ; recon = acts @ w_dec + b_dec

Decoder rows are kept at unit norm (as in GS2), which makes feature activations come out in the residual
stream's own units. Features that stop firing are resampled towards badly reconstructed inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from gemscope_widgets.backend.analysis.evaluation import fvu
from gemscope_widgets.errors import TrainingError


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """relu(z) * (z > θ); dz by straight-through, dθ by the rectangle-kernel pseudo-derivative."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.eps = eps
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.eps
        grad_pre = grad * (pre > threshold)
        grad_threshold = (-(threshold / eps) * _rectangle((pre - threshold) / eps) * grad).sum(0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    """H(z - θ); only θ gets a gradient, so the sparsity penalty moves thresholds (as in GS)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.eps = eps
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.eps
        grad_threshold = (-(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad).sum(0)
        return None, grad_threshold, None


class _TrainableSAE(torch.nn.Module):
    """The SAE in normalised units (inputs divided by ``scale``) during training."""

    def __init__(self, d: int, width: int, generator: torch.Generator) -> None:
        super().__init__()
        w_dec = torch.randn(width, d, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.w_dec = torch.nn.Parameter(w_dec)
        self.w_enc = torch.nn.Parameter(w_dec.t().clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(width))
        self.b_dec = torch.nn.Parameter(torch.zeros(d))
        self.log_threshold = torch.nn.Parameter(torch.full((width,), math.log(0.1)))

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w_enc + self.b_enc

    def forward(self, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pre = self.pre(x)
        threshold = self.log_threshold.exp()
        acts = _JumpReLU.apply(pre, threshold, eps)
        recon = acts @ self.w_dec + self.b_dec
        l0 = _Step.apply(pre, threshold, eps).sum(-1).mean()
        return recon, acts, l0

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.w_dec /= self.w_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def set_thresholds_by_rate(self, idx: torch.Tensor, x: torch.Tensor, rate: float) -> None:
        """Put the thresholds of features ``idx`` where each fires on about ``rate`` of ``x``."""
        pre = self.pre(x)[:, idx]
        q = torch.quantile(pre, 1.0 - rate, dim=0)
        self.log_threshold[idx] = q.clamp_min(1e-3).log()


@dataclass
class TrainingReport:
    """What a training run measured on its own data (normalised units for the MSE)."""

    steps: int
    tokens_seen: int
    l0: float
    fvu: float
    dead_fraction: float
    resampled: int
    scale: float


def _reset_adam_rows(opt: torch.optim.Optimizer, sae: _TrainableSAE, idx: torch.Tensor) -> None:
    for name, p in sae.named_parameters():
        state = opt.state.get(p)
        if not state:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            buf = state[key]
            if name == "w_enc":
                buf[:, idx] = 0
            elif name in ("w_dec", "b_enc", "log_threshold"):
                buf[idx] = 0


@torch.no_grad()
def _resample(
    sae: _TrainableSAE,
    opt: torch.optim.Optimizer,
    dead: torch.Tensor,
    x: torch.Tensor,
    generator: torch.Generator,
    rate: float,
) -> None:
    """Point dead features at inputs the SAE reconstructs badly (Anthropic's resampling, for JumpReLU)."""
    pre = sae.pre(x)
    acts = pre * (pre > sae.log_threshold.exp())
    err = x - (acts @ sae.w_dec + sae.b_dec)
    weights = (err**2).sum(-1)
    probs = (weights / weights.sum()).cpu()
    rows = torch.multinomial(probs, len(dead), replacement=len(dead) > len(x), generator=generator).to(x.device)
    direction = err[rows]
    direction /= direction.norm(dim=1, keepdim=True).clamp_min(1e-8)
    alive = torch.ones(sae.w_enc.shape[1], dtype=torch.bool, device=x.device)
    alive[dead] = False
    enc_norm = sae.w_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    sae.w_dec[dead] = direction
    sae.w_enc[:, dead] = direction.t() * enc_norm
    # Measure the new features from the data mean, as at initialisation.
    sae.b_enc[dead] = -(sae.b_dec @ sae.w_enc[:, dead])
    sae.set_thresholds_by_rate(dead, x, rate)
    _reset_adam_rows(opt, sae, dead)


def fit_jumprelu(acts: torch.Tensor, **options: Any) -> tuple[dict[str, torch.Tensor], TrainingReport]:
    """Fit a JumpReLU SAE to raw activations ``[N, d]``; return GS2 params (scale folded in).

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


def _fit(
    acts: torch.Tensor,
    *,
    width: int,
    target_l0: float,
    steps: int,
    batch_size: int = 1024,
    lr: float = 1e-3,
    threshold_lr: float = 1e-2,
    l0_coefficient: float = 4.0,
    eps: float = 0.01,
    revive_dead: bool = True,
    resample_every: int = 100,
    resample_until: float = 0.5,
    min_frequency: float = 3e-4,
    frequency_coefficient: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    dead_features_init: torch.Tensor | None = None,
    device: str | torch.device | None = None,
) -> tuple[dict[str, torch.Tensor], TrainingReport]:
    """The training loop behind :func:`fit_jumprelu`.

    Dead-feature handling (``revive_dead``) has two parts: every ``resample_every`` steps features that
    did not fire at all are re-pointed at badly reconstructed inputs, and an auxiliary loss pushes up the
    pre-activations of features whose running firing rate is under ``min_frequency`` (so rare features
    become visible on held-out text instead of dying slowly). ``dead_features_init`` starts those features dead
    (used by tests that check resampling revives them).
    """
    if acts.ndim != 2 or len(acts) < 2:
        raise TrainingError(f"need activations of shape [N, d] with N >= 2, got {tuple(acts.shape)}.")
    if not 0 < target_l0 < width:
        raise TrainingError(f"target_l0 must be between 0 and the width ({width}), got {target_l0}.")
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device) if device is not None else acts.device
    acts = acts.to(device, torch.float32)
    n, d = acts.shape
    mean = acts.mean(0)
    # One scalar so that E||x - mean||² = 1: the MSE then reads as FVU and eps / lr transfer across models.
    scale = float(((acts - mean) ** 2).sum(-1).mean().sqrt())
    sae = _TrainableSAE(d, width, generator).to(device)
    rate = min(0.5, target_l0 / width)
    with torch.no_grad():
        sae.b_dec.copy_(mean / scale)
        init = acts[torch.randperm(n, generator=generator)[: min(n, 4096)].to(device)] / scale
        # Encoder bias so that pre is measured from the data mean, not from the origin.
        sae.b_enc.copy_(-(sae.b_dec @ sae.w_enc))
        sae.set_thresholds_by_rate(torch.arange(width), init, rate)
        if dead_features_init is not None:
            sae.b_enc[dead_features_init] = -1e3
    threshold_params = [sae.log_threshold]
    other = [p for name, p in sae.named_parameters() if name != "log_threshold"]
    opt = torch.optim.Adam(
        [{"params": other, "lr": lr}, {"params": threshold_params, "lr": threshold_lr}], betas=(0.0, 0.999)
    )
    base_lrs = [lr, threshold_lr]
    warmup = max(1, steps // 20)
    decay_from = int(steps * 0.8)
    fired = torch.zeros(width, dtype=torch.bool, device=device)
    frequency = torch.full((width,), rate, device=device)
    resampled = 0
    order = torch.randperm(n, generator=generator)
    cursor = 0
    bar = tqdm(range(steps), desc=f"training SAE (width {width}, L0 → {target_l0:g})", disable=not progress)
    for step in bar:
        if cursor + batch_size > n:
            order = torch.randperm(n, generator=generator)
            cursor = 0
        x = acts[order[cursor : cursor + batch_size].to(device)] / scale
        cursor += batch_size
        factor = min(1.0, (step + 1) / warmup)
        if step >= decay_from:
            factor *= max(0.05, (steps - step) / max(1, steps - decay_from))
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * factor
        # The L0 penalty ramps in so reconstruction can take shape before thresholds are pushed.
        penalty = l0_coefficient * min(1.0, (step + 1) / (steps * 0.1 + 1))
        recon, feats, l0 = sae(x, eps)
        mse = ((recon - x) ** 2).sum(-1).mean()
        loss = mse + penalty * (l0 / target_l0 - 1.0) ** 2
        rare = frequency < min_frequency
        if revive_dead and frequency_coefficient and bool(rare.any()):
            pre = x @ sae.w_enc[:, rare] + sae.b_enc[rare]
            gap = torch.relu(sae.log_threshold[rare].exp().detach() - pre)
            loss = loss + frequency_coefficient * gap.mean(0).sum() / width
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # GS-style: drop the decoder gradient component parallel to each (unit) row.
        with torch.no_grad():
            g = sae.w_dec.grad
            g -= (g * sae.w_dec).sum(1, keepdim=True) * sae.w_dec
        opt.step()
        sae.normalise_decoder()
        fired |= (feats > 0).any(0)
        frequency.mul_(0.95).add_((feats > 0).float().mean(0), alpha=0.05)
        if revive_dead and resample_every and (step + 1) % resample_every == 0:
            dead = (~fired).nonzero().flatten()
            if len(dead) and step < steps * resample_until:
                _resample(sae, opt, dead, x, generator, rate)
                frequency[dead] = rate
                resampled += len(dead)
            fired.zero_()
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(mse=f"{mse.item():.3f}", l0=f"{l0.item():.1f}")
    bar.close()

    params = _fold_scale(sae, scale)
    with torch.no_grad():
        sample = acts[order[:8192].to(device)]
        pre = sample @ params["w_enc"] + params["b_enc"]
        f = torch.relu(pre) * (pre > params["threshold"])
        recon = f @ params["w_dec"] + params["b_dec"]
        report = TrainingReport(
            steps=steps,
            tokens_seen=steps * batch_size,
            l0=float((f > 0).sum(-1).float().mean()),
            fvu=fvu(sample, recon),
            dead_fraction=float((~alive_in(acts, params)).float().mean()),
            resampled=resampled,
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


@torch.no_grad()
def _fold_scale(sae: _TrainableSAE, scale: float) -> dict[str, torch.Tensor]:
    """Raw-unit GS2 params: dividing pre, threshold and biases by ``1/scale`` keeps unit decoder rows.

    Training saw x/scale: pre_n = (x/scale) @ W_e + b_e. On raw x the same W_e gives pre = scale*pre_n
    when b_e is multiplied by scale; relu and the (pre > θ) test commute with a positive factor, so
    acts = scale * acts_n and recon = acts @ W_d + scale*b_d = scale * recon_n.
    """
    return {
        "w_enc": sae.w_enc.detach().clone().contiguous(),
        "w_dec": sae.w_dec.detach().clone().contiguous(),
        "b_enc": (sae.b_enc * scale).detach().clone(),
        "b_dec": (sae.b_dec * scale).detach().clone(),
        "threshold": (sae.log_threshold.exp() * scale).detach().clone(),
    }
