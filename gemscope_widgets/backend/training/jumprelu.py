"""The trainable JumpReLU of Gemma Scope 2 (Rajamanoharan et al. 2024, "Jumping Ahead"), as a stack of
independent dictionaries: one per layer for a transcoder set, a stack of one for an SAE.

A JumpReLU with a learned per-feature threshold ``θ`` computes ``acts = pre · H(pre − θ)``. It is trained
through straight-through gradients for ``pre`` and a rectangle-kernel pseudo-derivative of bandwidth ``eps``
for ``θ`` (the paper's eq. 11–12); the L0 of a batch, ``Σ H(pre − θ)``, gets the same kind of gradient so a
sparsity penalty moves thresholds. Decoder rows stay on the unit sphere, as in Gemma Scope 2.

Every parameter carries a leading layer axis ``L`` and the layers' losses are summed, so their gradients never
mix and Adam (elementwise) updates each layer exactly as a separate run would: fitting a stack of 18 costs one
batched matrix product per step instead of 18 small ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """relu(z) * (z > θ); dz by straight-through, dθ by the rectangle-kernel pseudo-derivative.

    ``pre`` is ``[B, ..., W]`` and ``threshold`` ``[..., W]``: the threshold gradient is summed over dim 0.
    """

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


class StackedJumpReLU(torch.nn.Module):
    """``L`` JumpReLU dictionaries on a leading layer axis, in the normalised units of training.

    ``w_enc [L, d_in, W]``, ``b_enc [L, W]``, ``log_threshold [L, W]``, ``w_dec [L, W, d_out]`` (unit rows),
    ``b_dec [L, d_out]``. ``tied`` (an SAE, ``d_in == d_out``) starts each encoder as its decoder's transpose;
    otherwise the encoder starts as a random ``d_in``-scaled matrix. Layer ``l`` draws its start from
    ``generators[l]`` alone.
    """

    def __init__(
        self, d_in: int, d_out: int, width: int, generators: Sequence[torch.Generator], *, tied: bool
    ) -> None:
        super().__init__()
        n = len(generators)
        w_dec = torch.stack([torch.randn(width, d_out, generator=g) for g in generators])
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        if tied:
            w_enc = w_dec.transpose(1, 2).clone()
        else:
            w_enc = torch.stack([torch.randn(d_in, width, generator=g) / math.sqrt(d_in) for g in generators])
        self.tied = tied
        self.w_enc = torch.nn.Parameter(w_enc)
        self.w_dec = torch.nn.Parameter(w_dec)
        self.b_enc = torch.nn.Parameter(torch.zeros(n, width))
        self.b_dec = torch.nn.Parameter(torch.zeros(n, d_out))
        self.log_threshold = torch.nn.Parameter(torch.full((n, width), math.log(0.1)))

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[L, B, W]`` of inputs ``[L, B, d_in]``."""
        return torch.baddbmm(self.b_enc.unsqueeze(1), x, self.w_enc)

    def forward(self, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(recon [L, B, d_out], acts [L, B, W], fires [L, B, W])`` of inputs ``x [L, B, d_in]``.

        ``fires`` is ``H(pre − θ)`` carrying the rectangle-kernel threshold gradient (for L0 penalties).
        """
        pre = self.pre(x).transpose(0, 1)  # [B, L, W]: the autograd functions reduce thresholds over dim 0
        threshold = self.log_threshold.exp()
        acts = _JumpReLU.apply(pre, threshold, eps).transpose(0, 1)
        fires = _Step.apply(pre, threshold, eps).transpose(0, 1)
        recon = torch.baddbmm(self.b_dec.unsqueeze(1), acts, self.w_dec)
        return recon, acts, fires

    @torch.no_grad()
    def layer_forward(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(acts [B, W], recon [B, d_out])`` of layer ``layer`` for inputs ``[B, d_in]`` (no gradients)."""
        pre = x @ self.w_enc[layer] + self.b_enc[layer]
        acts = pre * (pre > self.log_threshold[layer].exp())
        return acts, acts @ self.w_dec[layer] + self.b_dec[layer]

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Drop the decoder gradient's component along each (unit) row, as Gemma Scope does."""
        grad = self.w_dec.grad
        if grad is not None:
            grad -= (grad * self.w_dec).sum(-1, keepdim=True) * self.w_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.w_dec.div_(self.w_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def set_thresholds_by_rate(self, layer: int, idx: torch.Tensor, x: torch.Tensor, rate: float) -> None:
        """Put layer ``layer``'s thresholds of features ``idx`` where each fires on about ``rate`` of ``x``."""
        pre = (x @ self.w_enc[layer] + self.b_enc[layer])[:, idx]
        q = torch.quantile(pre, 1.0 - rate, dim=0)
        self.log_threshold[layer, idx] = q.clamp_min(1e-3).log()

    @torch.no_grad()
    def resample(
        self,
        opt: torch.optim.Optimizer,
        layer: int,
        dead: torch.Tensor,
        x: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator,
        rate: float,
    ) -> None:
        """Point layer ``layer``'s ``dead`` features at inputs ``x [B, d_in]`` whose ``target [B, d_out]`` is
        badly reconstructed (Anthropic's resampling, "Towards Monosemanticity", adapted to JumpReLU).

        Each dead feature decodes along the error of one sampled row (sampled in proportion to its squared
        error) and reads along that row's error (tied) or input (untied), with the alive encoders' mean norm;
        its threshold is set to fire on about ``rate`` of ``x`` and its Adam moments are cleared.
        """
        _, recon = self.layer_forward(layer, x)
        err = target - recon
        weights = (err**2).sum(-1)
        probs = (weights / weights.sum()).cpu()
        rows = torch.multinomial(probs, len(dead), replacement=len(dead) > len(x), generator=generator)
        rows = rows.to(x.device)
        err_dir = torch.nn.functional.normalize(err[rows], dim=1)
        enc_dir = err_dir if self.tied else torch.nn.functional.normalize(x[rows], dim=1)
        alive = torch.ones(self.w_enc.shape[-1], dtype=torch.bool, device=x.device)
        alive[dead] = False
        w_enc = self.w_enc[layer]
        enc_norm = w_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        self.w_dec[layer, dead] = err_dir
        w_enc[:, dead] = enc_dir.t() * enc_norm
        self.b_enc[layer, dead] = 0.0  # inputs are centred in training
        self.set_thresholds_by_rate(layer, dead, x, rate)
        for name, p in self.named_parameters():
            state = opt.state.get(p)
            if not state:
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                buf = state[key]
                if name == "w_enc":
                    buf[layer][:, dead] = 0
                elif name in ("w_dec", "b_enc", "log_threshold"):
                    buf[layer, dead] = 0

    @torch.no_grad()
    def fold(
        self,
        layer: int,
        mean_in: torch.Tensor,
        mean_out: torch.Tensor,
        scale_in: float,
        scale_out: float,
        skip: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Layer ``layer`` as Gemma Scope 2 parameters on raw activations, feature activations in output units.

        Training saw ``x_n = (x − m_in)/s_in`` and predicted ``y_n = (y − m_out)/s_out`` as
        ``x_n S + acts_n W_d + b_d`` (``S`` the optional skip, ``[d_in, d_out]``). Multiplying the encoder side
        by ``s_out`` (positive, so the JumpReLU commutes with it) gives ``acts = s_out · acts_n`` with unit
        decoder rows, and ``y = x (s_out/s_in) S + acts W_d + s_out b_d + m_out − m_in (s_out/s_in) S``.
        Returns ``w_enc, b_enc, threshold, w_dec, b_dec`` (and ``affine_skip_connection`` with a skip).
        """
        ratio = scale_out / scale_in
        w_enc = self.w_enc[layer] * ratio
        b_dec = self.b_dec[layer] * scale_out + mean_out
        params = {
            "w_enc": w_enc.contiguous(),
            "b_enc": (self.b_enc[layer] * scale_out - mean_in @ w_enc).contiguous(),
            "threshold": (self.log_threshold[layer].exp() * scale_out).contiguous(),
            "w_dec": self.w_dec[layer].detach().clone(),
            "b_dec": b_dec.contiguous(),
        }
        if skip is not None:
            skip_raw = skip * ratio
            params["b_dec"] = (b_dec - mean_in @ skip_raw).contiguous()
            params["affine_skip_connection"] = skip_raw.contiguous()
        return params
