"""The training loop shared by the demo SAE and the transcoder set: a stack of JumpReLU dictionaries fitted
at once to centred, scaled inputs and targets (Gemma Scope 2's recipe, Rajamanoharan et al. 2024).

Loss per layer, summed over layers (so layers never interact):

- reconstruction: ``mean_batch ‖recon − target‖²`` (targets have unit total variance, so this reads as FVU);
  with ``matryoshka_groups`` (nested prefix sizes ``k_1 < … < k_m = W``), a weighted mean over the prefixes of
  the reconstruction error of the first ``k_i`` latents alone, so each prefix reconstructs on its own and early
  latents learn general directions (Bussmann, Nabeshima, Karvonen, Nanda, 2025, "Learning Multi-Level Features
  with Matryoshka SAEs", who weigh the prefixes equally; SAELens ``matryoshka_widths``). The whole dictionary's
  error weighs ``matryoshka_full_weight`` (default 1: equal weights) against 1 for each smaller prefix, and the
  weights are normalised to sum to 1, so the term still reads as an FVU;
- L0: ``c · (L0_batch / T − 1)²``, Gemma Scope 2's quadratic pull towards the target ``T``, plus an integral
  term ``− λ · L0_batch / T`` whose ``λ`` accumulates ``(1 − L0_batch / T)`` every step (a Lagrange multiplier
  updated by dual ascent): the quadratic pull alone settles where the reconstruction's push on the thresholds
  balances it, short of the target; the integral removes that offset;
- frequency (``dense_coefficient`` with ``max_frequency``): every feature whose running firing rate exceeds
  ``max_frequency`` pays ``dense_coefficient · (rate / max_frequency − 1) · mean_batch H(pre − θ)``, its own L0
  weighted by how far over the cap it is (Gemma Scope 2 adds a frequency penalty; its exact form is not
  published), so no dense features form;
- revival (``min_frequency``): features whose running rate is under ``min_frequency`` are pulled towards
  their threshold, ``frequency_coefficient · mean relu(θ − pre) / W``, so rare features do not die slowly.

Every ``resample_every`` steps (in the first ``resample_until`` of training) features that did not fire at all
are resampled towards badly reconstructed rows. Adam with β₁ = 0 (as GS), linear warm-up over the first 5 % of
steps and linear decay over the last 20 %; the L0 penalty ramps in over the first 10 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gemscope_widgets.backend.analysis.matryoshka import check_sizes
from gemscope_widgets.backend.grad_mode import gradients_on
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.training.jumprelu import StackedJumpReLU
from gemscope_widgets.errors import TrainingError


@dataclass
class StackedFit:
    """A fitted stack (normalised units), how many features each layer resampled, and the last batch order."""

    module: StackedJumpReLU
    resampled: list[int]
    order: torch.Tensor


def check_target(width: int, target_l0: float) -> None:
    """Raise :class:`TrainingError` unless ``0 < target_l0 < width``."""
    if not 0 < target_l0 < width:
        raise TrainingError(f"target_l0 must be between 0 and the width ({width}), got {target_l0}.")


def check_matryoshka_groups(groups: Sequence[int] | None, width: int) -> list[int]:
    """The nested prefix sizes as ints (empty for None); :class:`TrainingError` unless they increase strictly
    and end at ``width``."""
    if groups is None:
        return []
    sizes = check_sizes(groups, width, f"the {width}-wide dictionary")
    if sizes[-1] != width:
        raise TrainingError(
            f"matryoshka_groups must end at the width ({width}), e.g. (128, 512, {width}); got {sizes}."
        )
    return sizes


@gradients_on()  # also under a caller's torch.inference_mode() / no_grad()
def fit_stacked(
    x: torch.Tensor,
    target: torch.Tensor,
    generators: Sequence[torch.Generator],
    order_generator: torch.Generator,
    *,
    tied: bool,
    width: int,
    target_l0: float,
    steps: int,
    batch_size: int,
    lr: float,
    threshold_lr: float,
    l0_coefficient: float,
    l0_integral: float = 0.0,
    eps: float = 0.01,
    revive_dead: bool = True,
    resample_every: int = 100,
    resample_until: float = 0.5,
    min_frequency: float = 3e-4,
    frequency_coefficient: float = 1.0,
    max_frequency: float | None = None,
    dense_coefficient: float = 0.0,
    dead_features_init: torch.Tensor | None = None,
    matryoshka_groups: Sequence[int] | None = None,
    matryoshka_full_weight: float = 1.0,
    mixed_precision: bool = False,
    progress: bool = True,
    desc: str = "training",
) -> StackedFit:
    """Fit ``L`` JumpReLU dictionaries to inputs ``x [L, N, d_in]`` and targets ``target [L, N, d_out]``.

    Both must be centred and scaled (unit total variance per layer); ``target`` may be ``x`` itself (an SAE,
    ``tied``). Layer ``l`` draws its start and its resampling from ``generators[l]``; batches (the same rows
    in every layer) from ``order_generator``. ``l0_integral`` is the dual-ascent rate of the L0 integral term
    (0 turns it off). ``dead_features_init`` starts those features unable to fire in every layer (tests of
    the resampler use it). ``matryoshka_groups``: nested prefix sizes ending at ``width`` whose reconstruction
    errors are averaged, the whole dictionary's weighted ``matryoshka_full_weight`` against 1 for each smaller
    prefix (module docstring); ``(width,)`` is the plain loss. ``mixed_precision`` runs the matrix
    products in bfloat16 (parameters, losses and optimiser stay float32): about 2x faster on CPUs with native
    bf16 and on GPUs. Runs on ``x``'s device.
    """
    check_target(width, target_l0)
    prefixes = check_matryoshka_groups(matryoshka_groups, width)
    if not matryoshka_full_weight > 0:
        raise TrainingError(f"matryoshka_full_weight must be positive, got {matryoshka_full_weight}.")
    n_layers, n, d_in = x.shape
    device = x.device
    batch_size = min(batch_size, n)
    tc = StackedJumpReLU(d_in, target.shape[-1], width, generators, tied=tied).to(device)
    rate = min(0.5, target_l0 / width)
    with torch.no_grad():
        for i, g in enumerate(generators):
            sample = x[i, torch.randperm(n, generator=g)[: min(n, 4096)].to(device)].float()
            tc.set_thresholds_by_rate(i, torch.arange(width, device=device), sample, rate)
        if dead_features_init is not None:
            tc.b_enc[:, dead_features_init] = -1e3
    others = [p for name, p in tc.named_parameters() if name != "log_threshold"]
    opt = torch.optim.Adam(
        [{"params": others, "lr": lr}, {"params": [tc.log_threshold], "lr": threshold_lr}], betas=(0.0, 0.999)
    )
    base_lrs = [lr, threshold_lr]
    warmup = max(1, steps // 20)
    decay_from = int(steps * 0.8)
    fired = torch.zeros(n_layers, width, dtype=torch.bool, device=device)
    frequency = torch.full((n_layers, width), rate, device=device)
    multiplier = torch.zeros(n_layers, device=device)
    resampled = [0] * n_layers
    order = torch.randperm(n, generator=order_generator)
    cursor = 0
    bar = progress_bar(range(steps), desc=f"{desc} (width {width}, L0 → {target_l0:g})", disable=not progress)
    for step in bar:
        if cursor + batch_size > n:
            order = torch.randperm(n, generator=order_generator)
            cursor = 0
        idx = order[cursor : cursor + batch_size].to(device)
        cursor += batch_size
        xb = x[:, idx].float()  # data may be stored in bfloat16; every step computes in float32
        tb = xb if target is x else target[:, idx].float()
        factor = min(1.0, (step + 1) / warmup)
        if step >= decay_from:
            factor *= max(0.05, (steps - step) / max(1, steps - decay_from))
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * factor
        ramp = min(1.0, (step + 1) / (steps * 0.1 + 1))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision):
            recon, acts, fires = tc(xb, eps)
            # Each smaller prefix's own reconstruction (the last prefix is the whole dictionary: recon).
            parts = [torch.baddbmm(tc.b_dec.unsqueeze(1), acts[..., :k], tc.w_dec[:, :k]) for k in prefixes[:-1]]
        mse = (recon.float() - tb).pow(2).sum(-1).mean(-1)  # [L]
        if len(prefixes) > 1:
            smaller = sum((r.float() - tb).pow(2).sum(-1).mean(-1) for r in parts)
            mse = (matryoshka_full_weight * mse + smaller) / (matryoshka_full_weight + len(parts))
        l0 = fires.float().sum(-1).mean(-1)  # [L]
        ratio = l0 / target_l0
        loss = mse.sum() + l0_coefficient * ramp * ((ratio - 1.0) ** 2).sum() - (multiplier * ratio).sum()
        if dense_coefficient and max_frequency is not None:
            over = torch.relu(frequency / max_frequency - 1.0)
            if bool((over > 0).any()):
                loss = loss + dense_coefficient * ramp * (over * fires.float().mean(1)).sum()
        rare = frequency < min_frequency
        if revive_dead and frequency_coefficient and bool(rare.any()):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision):
                pre = tc.pre(xb)
            gap = torch.relu(tc.log_threshold.exp().detach().unsqueeze(1) - pre.float()) * rare.unsqueeze(1)
            loss = loss + frequency_coefficient * gap.mean(1).sum() / width
        opt.zero_grad(set_to_none=True)
        loss.backward()
        tc.project_decoder_grad()
        opt.step()
        tc.normalise_decoder()
        with torch.no_grad():
            if l0_integral:
                multiplier.add_(l0_integral * ramp * (1.0 - ratio.detach())).clamp_(min=-l0_coefficient)
            firing = acts > 0
            fired |= firing.any(1)
            frequency.mul_(0.95).add_(firing.float().mean(1), alpha=0.05)
        if revive_dead and resample_every and (step + 1) % resample_every == 0:
            if step < steps * resample_until:
                for i in range(n_layers):
                    dead = (~fired[i]).nonzero().flatten()
                    if len(dead):
                        tc.resample(opt, i, dead, xb[i], tb[i], generators[i], rate)
                        frequency[i, dead] = rate
                        resampled[i] += len(dead)
            fired.zero_()
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(fvu=f"{mse.mean().item():.3f}", l0=f"{l0.mean().item():.1f}")
    bar.close()
    return StackedFit(tc, resampled, order)
