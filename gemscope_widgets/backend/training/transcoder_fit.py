"""Fit one affine skip-transcoder per layer to MLP inputs and outputs, every layer at once.

An affine skip-transcoder predicts the MLP's output from its input through sparse features plus a linear path
("Transcoders Find Interpretable LLM Feature Circuits", Dunefsky et al. 2024; the skip connection of Paulo et
al. 2025, "Transcoders Beat Sparse Autoencoders for Interpretability"; Gemma Scope 2's ``_affine`` folders)::

    pre = x @ w_enc + b_enc ; acts = relu(pre) * (pre > threshold)
    out = acts @ w_dec + b_dec + x @ affine_skip_connection

The recipe, built for speed on a CPU:

- the **skip connection is solved in closed form** (ridge regression of output on input, per layer), so the
  features only have to learn what a linear map cannot;
- the **features of every layer are fitted at once** by :func:`~.stacked_fit.fit_stacked` (the loop the demo
  SAE uses: JumpReLU, quadratic L0 target with its integral term, resampling, revival of rare features);
- **layers a linear map explains worst get more steps**: a layer whose skip alone leaves more than
  ``hard_skip_fvu`` of the output's variance is fitted in a second stack for ``hard_steps`` (on the embedded
  270M those are the middle-to-late layers, whose MLPs are the least linear; more steps lower their held-out FVU
  where more width or a higher L0 target at the same cost did not).

Inputs and outputs are centred and divided by one scalar per layer during training; those are folded into
the saved weights, so the parameters are plain GS2 math on raw activations. Feature activations come out in
the MLP output's own units (decoder rows have unit norm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gemscope_widgets.backend.training.stacked_fit import check_target, fit_stacked
from gemscope_widgets.errors import TrainingError


@dataclass
class TranscoderReport:
    """What the fit measured on its own training tokens, for one layer."""

    layer: int
    l0: float
    fvu: float
    fvu_skip_only: float
    dead_fraction: float
    resampled: int
    steps: int
    scale_in: float
    scale_out: float


def _ridge_skip(x: torch.Tensor, y: torch.Tensor, ridge: float, chunk: int = 8192) -> torch.Tensor:
    """Per layer ``S = argmin ‖y − x S‖² + ridge·N‖S‖²`` for centred, scaled ``x, y`` ``[L, N, d]``."""
    n_layers, n, d_in = x.shape
    xtx = torch.zeros(n_layers, d_in, d_in, dtype=torch.float64)
    xty = torch.zeros(n_layers, d_in, y.shape[-1], dtype=torch.float64)
    for a in range(0, n, chunk):
        xb, yb = x[:, a : a + chunk].float(), y[:, a : a + chunk].float()
        xtx += (xb.transpose(1, 2) @ xb).double()
        xty += (xb.transpose(1, 2) @ yb).double()
    eye = torch.eye(d_in, dtype=torch.float64)
    # One Cholesky solve per layer (the system is symmetric positive definite); MKL's batched LU was seen to
    # fail on these shapes.
    out = torch.empty(n_layers, d_in, xty.shape[-1])
    for i in range(n_layers):
        factor = torch.linalg.cholesky(xtx[i] + ridge * n * eye)
        out[i] = torch.cholesky_solve(xty[i], factor).float()
    return out


def _normalise(t: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``((t − mean) / scale, mean [L, d], scale [L])`` per layer of ``t [L, N, d]`` (``E‖·‖² = 1``), in
    ``t``'s dtype, computed in float32 chunk by chunk."""
    n = t.shape[1]
    mean = sum((t[:, a : a + chunk].float().sum(1) for a in range(0, n, chunk)), torch.zeros(t.shape[0], t.shape[2]))
    mean = mean / n
    out = torch.empty_like(t)
    sq = torch.zeros(t.shape[0], dtype=torch.float64)
    for a in range(0, n, chunk):
        c = t[:, a : a + chunk].float() - mean.unsqueeze(1)
        sq += c.pow(2).sum((1, 2)).double()
        out[:, a : a + chunk] = c.to(t.dtype)
    scale = (sq / n).sqrt().float()
    for a in range(0, n, chunk):
        out[:, a : a + chunk] = (out[:, a : a + chunk].float() / scale.view(-1, 1, 1)).to(t.dtype)
    return out, mean, scale


TRANSCODER_OPTIONS: dict[str, Any] = {
    "batch_size": 512, "lr": 2e-3, "threshold_lr": 2e-2, "l0_coefficient": 2.0, "l0_integral": 0.1,
    "resample_every": 50, "min_frequency": 1e-3,
}
"""The transcoders' defaults for :func:`~.stacked_fit.fit_stacked`'s options."""


def fit_transcoders(
    xs: torch.Tensor,
    ys: torch.Tensor,
    *,
    ridge: float = 1e-6,
    layers: Sequence[int] | None = None,
    seed: int = 0,
    hard_skip_fvu: float | None = None,
    hard_steps: int | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[list[dict[str, torch.Tensor]], list[TranscoderReport]]:
    """Fit one affine skip-transcoder per layer to MLP inputs ``xs`` and outputs ``ys`` ``[L, N, d]``.

    Returns, per layer, Gemma Scope 2 parameters on raw activations (``w_enc [d_in, W]``, ``b_enc [W]``,
    ``threshold [W]``, ``w_dec [W, d_out]``, ``b_dec [d_out]``, ``affine_skip_connection [d_in, d_out]``)
    and a :class:`TranscoderReport`. Layer ``l``'s result depends only on ``xs[l], ys[l]``, ``seed`` and its
    label ``layers[l]`` (default ``l``), so fitting a subset of layers gives the same transcoders for them.
    ``xs`` and ``ys`` may be stored in bfloat16 to halve their memory (every step computes in float32).
    ``ridge`` regularises the skip (relative to the inputs' unit variance). With ``hard_skip_fvu`` and
    ``hard_steps``, layers whose skip-only FVU (on their training tokens) exceeds ``hard_skip_fvu`` are fitted for
    ``hard_steps`` instead of ``steps`` (a second stack; each layer still depends only on its own data). The
    other options (``width``, ``target_l0`` and ``steps`` required, the rest defaulting to
    :data:`TRANSCODER_OPTIONS`) go to :func:`~.stacked_fit.fit_stacked`, which documents the loss. Runs on
    ``xs``'s device.
    """
    if xs.ndim != 3 or ys.ndim != 3 or xs.shape[:2] != ys.shape[:2] or xs.shape[1] < 2:
        raise TrainingError(
            f"need MLP inputs and outputs of shape [L, N, d] with the same L and N >= 2; got {tuple(xs.shape)} "
            f"and {tuple(ys.shape)}."
        )
    check_target(options.get("width", 0), options.get("target_l0", 0))
    n_layers, n, _ = xs.shape
    layers = list(range(n_layers)) if layers is None else list(layers)
    if len(layers) != n_layers:
        raise TrainingError(f"got {len(layers)} layer labels for {n_layers} layers of activations.")
    check = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(n, 8192)]
    check_x, check_y = xs[:, check].float(), ys[:, check].float()
    # Centre and scale per layer so that E‖x‖² = E‖y‖² = 1: losses then read as FVU, and lr/eps transfer.
    x, mean_in, scale_in = _normalise(xs)
    r, mean_out, scale_out = _normalise(ys)
    skip = _ridge_skip(x, r, ridge)  # [L, d_in, d_out]
    skip_err = torch.zeros(n_layers, dtype=torch.float64)
    for a in range(0, n, 8192):  # the features fit what the skip leaves
        rest = r[:, a : a + 8192].float() - torch.bmm(x[:, a : a + 8192].float(), skip)
        skip_err += rest.pow(2).sum((1, 2)).double()
        r[:, a : a + 8192] = rest.to(r.dtype)
    options = {**TRANSCODER_OPTIONS, **options}
    skip_fvu = skip_err / n
    hard = [i for i in range(n_layers) if hard_skip_fvu is not None and hard_steps and skip_fvu[i] > hard_skip_fvu]
    groups = [([i for i in range(n_layers) if i not in hard], options["steps"]), (hard, hard_steps or 0)]
    fitted: dict[int, tuple[Any, int, int]] = {}  # layer index -> (module, index in its stack, resampled)
    for members, steps in groups:
        if not members:
            continue
        idx = torch.tensor(members)
        whole = len(members) == n_layers
        run = fit_stacked(
            x if whole else x[idx],
            r if whole else r[idx],
            [torch.Generator().manual_seed(seed * 1000 + layers[i]) for i in members],
            torch.Generator().manual_seed(seed), tied=False, progress=progress,
            desc=f"training {len(members)} transcoders", **{**options, "steps": steps},
        )
        fitted.update({i: (run.module, k, run.resampled[k]) for k, i in enumerate(members)})
    del x, r
    params, reports = [], []
    with torch.no_grad():
        for i in range(n_layers):
            module, k, resampled = fitted[i]
            p = module.fold(k, mean_in[i], mean_out[i], float(scale_in[i]), float(scale_out[i]), skip[i])
            xi, yi = check_x[i], check_y[i]
            pre = xi @ p["w_enc"] + p["b_enc"]
            f = torch.relu(pre) * (pre > p["threshold"])
            out = f @ p["w_dec"] + p["b_dec"] + xi @ p["affine_skip_connection"]
            params.append(p)
            reports.append(
                TranscoderReport(
                    layer=layers[i],
                    l0=float((f > 0).sum(-1).float().mean()),
                    fvu=float((out - yi).pow(2).sum() / (yi - yi.mean(0)).pow(2).sum()),
                    fvu_skip_only=float(skip_fvu[i]),
                    dead_fraction=float(((f > 0).sum(0) == 0).float().mean()),
                    resampled=resampled,
                    steps=hard_steps if i in hard and hard_steps else options["steps"],
                    scale_in=float(scale_in[i]),
                    scale_out=float(scale_out[i]),
                )
            )
    return params, reports
