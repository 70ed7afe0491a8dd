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

from gemscope_widgets.backend.memory import releases_buffers_on_error, return_freed_memory
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


CHUNK = 8192  # rows per step of the streaming passes (statistics, skip, residuals)


def _scaled(t: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(t − mean) / scale`` stored in ``dtype`` (rounded after centring and after scaling, as it is stored)."""
    return ((t.float() - mean).to(dtype).float() / scale).to(dtype)


@dataclass
class _LayerPrep:
    """What the streaming passes over one layer give: centring, scale and the ridge skip (normalised units)."""

    mean_in: torch.Tensor  # [d_in]
    mean_out: torch.Tensor  # [d_out]
    scale_in: torch.Tensor  # [] float32
    scale_out: torch.Tensor
    skip: torch.Tensor  # [d_in, d_out]
    skip_fvu: float


def _mean_scale(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[d]`` and the scalar scale with ``E‖(t − mean) / scale‖² = 1``, of ``t [N, d]``, chunk by chunk."""
    n = t.shape[0]
    mean = sum((t[a : a + CHUNK].float().sum(0) for a in range(0, n, CHUNK)), torch.zeros(t.shape[1])) / n
    sq = torch.zeros((), dtype=torch.float64)
    for a in range(0, n, CHUNK):
        sq += (t[a : a + CHUNK].float() - mean).pow(2).sum().double()
    return mean, (sq / n).sqrt().float()


def _prepare_layer(x: torch.Tensor, y: torch.Tensor, ridge: float) -> _LayerPrep:
    """Streaming passes over one layer's raw ``x, y [N, d]``: statistics, then the ridge skip
    ``S = argmin ‖y − x S‖² + ridge·N‖S‖²`` on the normalised data, then what it leaves unexplained."""
    n, d_in = x.shape
    mean_in, scale_in = _mean_scale(x)
    mean_out, scale_out = _mean_scale(y)
    xtx = torch.zeros(d_in, d_in, dtype=torch.float64)
    xty = torch.zeros(d_in, y.shape[1], dtype=torch.float64)
    for a in range(0, n, CHUNK):
        xb = _scaled(x[a : a + CHUNK], mean_in, scale_in, x.dtype).float()
        yb = _scaled(y[a : a + CHUNK], mean_out, scale_out, y.dtype).float()
        xtx += (xb.T @ xb).double()
        xty += (xb.T @ yb).double()
    # A Cholesky solve (the system is symmetric positive definite); MKL's batched LU was seen to fail here.
    factor = torch.linalg.cholesky(xtx + ridge * n * torch.eye(d_in, dtype=torch.float64))
    skip = torch.cholesky_solve(xty, factor).float()
    err = torch.zeros((), dtype=torch.float64)
    for a in range(0, n, CHUNK):
        xb = _scaled(x[a : a + CHUNK], mean_in, scale_in, x.dtype).float()
        yb = _scaled(y[a : a + CHUNK], mean_out, scale_out, y.dtype).float()
        err += (yb - xb @ skip).pow(2).sum().double()
    return _LayerPrep(mean_in, mean_out, scale_in, scale_out, skip, float(err / n))


def _normalised_group(
    xs: Any, ys: Any, members: Sequence[int], preps: dict[int, _LayerPrep]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised inputs and skip residuals ``[G, N, d]`` (the data's dtype) of the layers ``members``, built
    one layer (and one chunk) at a time from ``xs[i], ys[i]``."""
    first = xs[members[0]]
    n, dtype = first.shape[0], first.dtype
    del first
    x = torch.empty(len(members), n, xs[members[0]].shape[1], dtype=dtype)
    r = torch.empty(len(members), n, ys[members[0]].shape[1], dtype=dtype)
    for k, i in enumerate(members):
        xi, yi, p = xs[i], ys[i], preps[i]
        for a in range(0, n, CHUNK):
            xb = _scaled(xi[a : a + CHUNK], p.mean_in, p.scale_in, dtype)
            yb = _scaled(yi[a : a + CHUNK], p.mean_out, p.scale_out, dtype)
            x[k, a : a + CHUNK] = xb
            r[k, a : a + CHUNK] = (yb.float() - xb.float() @ p.skip).to(dtype)
        del xi, yi  # a memory-mapped layer is unmapped here
    return x, r


def layers_per_group(n: int, d_in: int, d_out: int, itemsize: int, budget_bytes: int = 1 << 29) -> int:
    """How many layers' normalised training data (``n × (d_in + d_out)`` values each) fit ``budget_bytes``."""
    return max(1, budget_bytes // max(1, n * (d_in + d_out) * itemsize))


TRANSCODER_OPTIONS: dict[str, Any] = {
    "batch_size": 512, "lr": 2e-3, "threshold_lr": 2e-2, "l0_coefficient": 2.0, "l0_integral": 0.1,
    "resample_every": 50, "min_frequency": 1e-3,
}
"""The transcoders' defaults for :func:`~.stacked_fit.fit_stacked`'s options."""


@releases_buffers_on_error
def fit_transcoders(
    xs: Any,
    ys: Any,
    *,
    ridge: float = 1e-6,
    layers: Sequence[int] | None = None,
    seed: int = 0,
    hard_skip_fvu: float | None = None,
    hard_steps: int | None = None,
    layers_at_once: int | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[list[dict[str, torch.Tensor]], list[TranscoderReport]]:
    """Fit one affine skip-transcoder per layer to MLP inputs ``xs`` and outputs ``ys`` ``[L, N, d]``.

    ``xs`` and ``ys`` are tensors ``[L, N, d]`` or anything whose ``[i]`` gives layer ``i``'s ``[N, d]`` (the
    memory-mapped sides of an :class:`~.mlp_pairs.MlpPairStore`): every pass reads one layer at a time, chunk
    by chunk, and the fit holds the normalised data of ``layers_at_once`` layers (default: as many as fit
    512 MiB: two of the 270M's layers at 96k tokens in bfloat16) at once, in the data's dtype (bfloat16 halves
    it; every step computes in float32).
    Returns, per layer, Gemma Scope 2 parameters on raw activations (``w_enc [d_in, W]``, ``b_enc [W]``,
    ``threshold [W]``, ``w_dec [W, d_out]``, ``b_dec [d_out]``, ``affine_skip_connection [d_in, d_out]``)
    and a :class:`TranscoderReport`. Layer ``l``'s result depends only on ``xs[l], ys[l]``, ``seed`` and its
    label ``layers[l]`` (default ``l``), so fitting a subset of layers, or fewer layers at once, gives the
    same transcoders for them (up to float rounding of batched products).
    ``ridge`` regularises the skip (relative to the inputs' unit variance). With ``hard_skip_fvu`` and
    ``hard_steps``, layers whose skip-only FVU (on their training tokens) exceeds ``hard_skip_fvu`` are fitted for
    ``hard_steps`` instead of ``steps`` (a second stack; each layer still depends only on its own data). The
    other options (``width``, ``target_l0`` and ``steps`` required, the rest defaulting to
    :data:`TRANSCODER_OPTIONS`) go to :func:`~.stacked_fit.fit_stacked`, which documents the loss. Runs on
    the CPU.
    """
    n_layers = len(xs)
    first_x, first_y = (xs[0], ys[0]) if n_layers and len(ys) == n_layers else (None, None)
    if (
        first_x is None or first_y is None or first_x.ndim != 2 or first_y.ndim != 2
        or first_x.shape[0] != first_y.shape[0] or first_x.shape[0] < 2
    ):
        raise TrainingError(
            f"need MLP inputs and outputs of shape [L, N, d] with the same L and N >= 2; got {_shape(xs)} "
            f"and {_shape(ys)}."
        )
    n, d_in, d_out, itemsize = first_x.shape[0], first_x.shape[1], first_y.shape[1], first_x.element_size()
    del first_x, first_y
    check_target(options.get("width", 0), options.get("target_l0", 0))
    layers = list(range(n_layers)) if layers is None else list(layers)
    if len(layers) != n_layers:
        raise TrainingError(f"got {len(layers)} layer labels for {n_layers} layers of activations.")
    check = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(n, 8192)]
    # Centre and scale per layer so that E‖x‖² = E‖y‖² = 1: losses then read as FVU, and lr/eps transfer. The
    # skip is solved in closed form first; the features fit what it leaves.
    preps = {i: _prepare_layer(xs[i], ys[i], ridge) for i in range(n_layers)}
    options = {**TRANSCODER_OPTIONS, **options}
    hard = [
        i for i in range(n_layers) if hard_skip_fvu is not None and hard_steps and preps[i].skip_fvu > hard_skip_fvu
    ]
    per_group = layers_at_once or layers_per_group(n, d_in, d_out, itemsize)
    params: dict[int, dict[str, torch.Tensor]] = {}
    reports: dict[int, TranscoderReport] = {}
    for members, steps in (([i for i in range(n_layers) if i not in hard], options["steps"]), (hard, hard_steps)):
        for g in range(0, len(members), per_group):
            group = members[g : g + per_group]
            x, r = _normalised_group(xs, ys, group, preps)
            try:
                run = fit_stacked(
                    x, r, [torch.Generator().manual_seed(seed * 1000 + layers[i]) for i in group],
                    torch.Generator().manual_seed(seed), tied=False, progress=progress,
                    desc=f"training {len(members)} transcoders ({g + 1}-{g + len(group)})",
                    **{**options, "steps": steps},
                )
            finally:
                del x, r  # an interrupt leaves no group's data behind
            return_freed_memory()  # so each group's buffers do not stack on the last group's heap residue
            for k, i in enumerate(group):
                params[i], reports[i] = _fold_and_report(
                    run.module, k, preps[i], xs[i], ys[i], check, layers[i], run.resampled[k], int(steps or 0)
                )
    return [params[i] for i in range(n_layers)], [reports[i] for i in range(n_layers)]


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else f"{len(t)} layers"


@torch.no_grad()
def _fold_and_report(
    module: Any, k: int, prep: _LayerPrep, x: torch.Tensor, y: torch.Tensor, check: torch.Tensor, layer: int,
    resampled: int, steps: int,
) -> tuple[dict[str, torch.Tensor], TranscoderReport]:
    """Raw-unit parameters of stack member ``k`` and its report on the ``check`` rows of ``x, y``."""
    p: dict[str, torch.Tensor] = module.fold(
        k, prep.mean_in, prep.mean_out, float(prep.scale_in), float(prep.scale_out), prep.skip
    )
    xi, yi = x[check].float(), y[check].float()
    pre = xi @ p["w_enc"] + p["b_enc"]
    f = torch.relu(pre) * (pre > p["threshold"])
    out = f @ p["w_dec"] + p["b_dec"] + xi @ p["affine_skip_connection"]
    return p, TranscoderReport(
        layer=layer,
        l0=float((f > 0).sum(-1).float().mean()),
        fvu=float((out - yi).pow(2).sum() / (yi - yi.mean(0)).pow(2).sum()),
        fvu_skip_only=prep.skip_fvu,
        dead_fraction=float(((f > 0).sum(0) == 0).float().mean()),
        resampled=resampled,
        steps=steps,
        scale_in=float(prep.scale_in),
        scale_out=float(prep.scale_out),
    )
