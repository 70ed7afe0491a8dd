"""Train a whole set of affine skip-transcoders (one per layer) in the exact Gemma Scope 2 layout.

A transcoder reads the MLP's input (``model.layers.L.pre_feedforward_layernorm.output``) and predicts the
MLP's output (``model.layers.L.post_feedforward_layernorm.output``); an *affine skip*-transcoder adds a
linear path from input to output ("Transcoders Find Interpretable LLM Feature Circuits", Dunefsky et al.
2024; the skip connection of Paulo et al. 2025, "Transcoders Beat Sparse Autoencoders for
Interpretability"; Gemma Scope 2's ``_affine`` folders)::

    pre = x @ w_enc + b_enc ; acts = relu(pre) * (pre > threshold)
    out = acts @ w_dec + b_dec + x @ affine_skip_connection

The recipe, built for speed on a CPU:

- **one activation pass** collects every layer's MLP input and output for the same tokens;
- the **skip connection is solved in closed form** (ridge regression of output on input, per layer), so the
  features only have to learn what a linear map cannot;
- the **features of every layer are fitted at once**: per-layer parameters are stacked along a leading layer
  axis and trained by one optimizer with batched matrix products. The layers' losses are summed, so their
  gradients never mix and Adam (elementwise) updates each layer exactly as a separate run would;
- the JumpReLU, its rectangle-kernel pseudo-derivatives and the quadratic L0 target are those of the
  demo SAE's training (Rajamanoharan et al. 2024, "Jumping Ahead"), as are unit-norm decoder rows, the
  frequency penalty that keeps rare features alive and the resampling of dead ones.

Inputs and outputs are centred and divided by one scalar per layer during training; those are folded into
the saved weights, so the folders hold plain GS2 math on raw activations. Feature activations come out in
the MLP output's own units (decoder rows have unit norm).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gemscope_widgets.backend.dictionaries.loading import save_gemma_scope_folder
from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.training.activations import token_windows
from gemscope_widgets.backend.training.fit import _JumpReLU, _Step
from gemscope_widgets.cache import staged_dir
from gemscope_widgets.errors import TrainingError


def mlp_in_point(layer: int) -> str:
    """The Gemma Scope 2 transcoder input hook point of ``layer``."""
    return f"model.layers.{layer}.pre_feedforward_layernorm.output"


def mlp_out_point(layer: int) -> str:
    """The Gemma Scope 2 transcoder output hook point of ``layer``."""
    return f"model.layers.{layer}.post_feedforward_layernorm.output"


def width_label(width: int) -> str:
    """Gemma Scope 2's width spelling: 16384 -> ``16k``, 1536 -> ``1536``."""
    return f"{width // 1024}k" if width % 1024 == 0 else str(width)


def folder_name(layer: int, width: int, l0_label: str, affine: bool = True) -> str:
    """``layer_{L}_width_{W}_l0_{S}[_affine]``: the name of one transcoder folder under ``transcoder_all/``."""
    return f"layer_{layer}_width_{width_label(width)}_l0_{l0_label}" + ("_affine" if affine else "")


# --------------------------------------------------------------------------------------------
# Activations: every layer's MLP input and output in one pass
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def collect_mlp_pairs(
    gm: Any,
    windows: torch.Tensor,
    layers: Sequence[int],
    *,
    max_tokens: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLP inputs ``[L, N, d_model]`` and outputs ``[L, N, d_model]`` (float32, CPU) of ``layers``.

    One forward pass per batch of ``windows`` ``[B, ctx]`` captures every layer (stopping after the
    deepest); row ``n`` is the same token in every layer. BOS and other special tokens are dropped, as for
    the demo SAE.
    """
    layers = list(layers)
    points_in = [mlp_in_point(layer) for layer in layers]
    points_out = [mlp_out_point(layer) for layer in layers]
    special = torch.tensor(sorted(set(gm.tokenizer.all_special_ids)), dtype=torch.long)
    keep_all = ~torch.isin(windows, special)
    available = int(keep_all.sum())
    want = min(max_tokens, available) if max_tokens is not None else available
    if want < 2:
        raise TrainingError("the corpus gave fewer than 2 non-special tokens; give the training more text.")
    d = gm.d_model
    xs = torch.empty(len(layers), want, d)
    ys = torch.empty(len(layers), want, d)
    filled = 0
    bar = tqdm(total=want, desc=f"MLP activations ({len(layers)} layers)", unit="tok", disable=not progress)
    for start in range(0, len(windows), batch_size):
        ids = windows[start : start + batch_size]
        got = capture(gm, ids, [*points_in, *points_out], stop_early=True)
        keep = keep_all[start : start + batch_size]
        take = min(int(keep.sum()), want - filled)
        for i, (p_in, p_out) in enumerate(zip(points_in, points_out)):
            xs[i, filled : filled + take] = got[p_in].float().cpu()[keep][:take]
            ys[i, filled : filled + take] = got[p_out].float().cpu()[keep][:take]
        filled += take
        bar.update(take)
        if filled >= want:
            break
    bar.close()
    return xs[:, :filled], ys[:, :filled]


# --------------------------------------------------------------------------------------------
# Batched fit
# --------------------------------------------------------------------------------------------


@dataclass
class TranscoderReport:
    """What the fit measured on its own training tokens, for one layer."""

    layer: int
    l0: float
    fvu: float
    fvu_skip_only: float
    dead_fraction: float
    resampled: int
    scale_in: float
    scale_out: float


def _ridge_skip(x: torch.Tensor, y: torch.Tensor, ridge: float, chunk: int = 8192) -> torch.Tensor:
    """Per layer ``S = argmin ‖y − x S‖² + ridge·N‖S‖²`` for centred, scaled ``x, y`` ``[L, N, d]``."""
    n_layers, n, d_in = x.shape
    xtx = torch.zeros(n_layers, d_in, d_in, dtype=torch.float64)
    xty = torch.zeros(n_layers, d_in, y.shape[-1], dtype=torch.float64)
    for a in range(0, n, chunk):
        xb, yb = x[:, a : a + chunk], y[:, a : a + chunk]
        xtx += (xb.transpose(1, 2) @ xb).double()
        xty += (xb.transpose(1, 2) @ yb).double()
    eye = torch.eye(d_in, dtype=torch.float64)
    return torch.linalg.solve(xtx + ridge * n * eye, xty).float()


class _StackedTranscoders(torch.nn.Module):
    """``L`` JumpReLU transcoders (features only; the skip is fixed) stacked on a leading layer axis."""

    def __init__(self, n_layers: int, d_in: int, d_out: int, width: int, generators: Sequence[torch.Generator]):
        super().__init__()
        w_dec = torch.stack([torch.randn(width, d_out, generator=g) for g in generators])
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        w_enc = torch.stack([torch.randn(d_in, width, generator=g) / math.sqrt(d_in) for g in generators])
        self.w_enc = torch.nn.Parameter(w_enc)
        self.w_dec = torch.nn.Parameter(w_dec)
        self.b_enc = torch.nn.Parameter(torch.zeros(n_layers, width))
        self.b_dec = torch.nn.Parameter(torch.zeros(n_layers, d_out))
        self.log_threshold = torch.nn.Parameter(torch.full((n_layers, width), math.log(0.1)))

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """``[L, B, d_in] -> [L, B, W]``."""
        return torch.baddbmm(self.b_enc.unsqueeze(1), x, self.w_enc)

    def forward(
        self, x: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction ``[L, B, d_out]``, pre-activations and activations ``[L, B, W]``, batch L0 ``[L]``."""
        pre_l = self.pre(x)
        pre = pre_l.transpose(0, 1)  # [B, L, W]: the autograd functions reduce thresholds over dim 0
        threshold = self.log_threshold.exp()
        acts = _JumpReLU.apply(pre, threshold, eps).transpose(0, 1)
        l0 = _Step.apply(pre, threshold, eps).sum(-1).mean(0)
        recon = torch.baddbmm(self.b_dec.unsqueeze(1), acts, self.w_dec)
        return recon, pre_l, acts, l0

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.w_dec /= self.w_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def set_thresholds_by_rate(self, layer: int, idx: torch.Tensor, x: torch.Tensor, rate: float) -> None:
        """Put layer ``layer``'s thresholds of features ``idx`` where each fires on about ``rate`` of ``x``."""
        pre = (x @ self.w_enc[layer] + self.b_enc[layer])[:, idx]
        q = torch.quantile(pre, 1.0 - rate, dim=0)
        self.log_threshold[layer, idx] = q.clamp_min(1e-3).log()


@torch.no_grad()
def _resample_layer(
    tc: _StackedTranscoders,
    opt: torch.optim.Optimizer,
    layer: int,
    dead: torch.Tensor,
    x: torch.Tensor,
    r: torch.Tensor,
    generator: torch.Generator,
    rate: float,
) -> None:
    """Point layer ``layer``'s dead features at inputs whose residual target is badly reconstructed."""
    pre = x @ tc.w_enc[layer] + tc.b_enc[layer]
    acts = pre * (pre > tc.log_threshold[layer].exp())
    err = r - (acts @ tc.w_dec[layer] + tc.b_dec[layer])
    weights = (err**2).sum(-1)
    rows = torch.multinomial(weights / weights.sum(), len(dead), replacement=len(dead) > len(x), generator=generator)
    x_dir = x[rows] / x[rows].norm(dim=1, keepdim=True).clamp_min(1e-8)
    err_dir = err[rows] / err[rows].norm(dim=1, keepdim=True).clamp_min(1e-8)
    alive = torch.ones(tc.w_enc.shape[-1], dtype=torch.bool)
    alive[dead] = False
    enc_norm = tc.w_enc[layer][:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    tc.w_dec[layer, dead] = err_dir
    tc.w_enc[layer][:, dead] = x_dir.t() * enc_norm
    tc.b_enc[layer, dead] = 0.0
    tc.set_thresholds_by_rate(layer, dead, x, rate)
    for name, p in tc.named_parameters():
        state = opt.state.get(p)
        if not state:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            buf = state[key]
            if name == "w_enc":
                buf[layer][:, dead] = 0
            elif name in ("w_dec", "b_enc", "log_threshold"):
                buf[layer, dead] = 0


def fit_transcoders(
    xs: torch.Tensor,
    ys: torch.Tensor,
    *,
    width: int,
    target_l0: float,
    steps: int,
    batch_size: int = 512,
    lr: float = 2e-3,
    threshold_lr: float = 2e-2,
    l0_coefficient: float = 2.0,
    eps: float = 0.01,
    ridge: float = 1e-4,
    resample_every: int = 50,
    resample_until: float = 0.5,
    min_frequency: float = 1e-3,
    frequency_coefficient: float = 1.0,
    layers: Sequence[int] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[dict[str, torch.Tensor]], list[TranscoderReport]]:
    """Fit one affine skip-transcoder per layer to MLP inputs ``xs`` and outputs ``ys`` ``[L, N, d]``.

    Returns, per layer, Gemma Scope 2 parameters on raw activations (``w_enc [d_in, W]``, ``b_enc [W]``,
    ``threshold [W]``, ``w_dec [W, d_out]``, ``b_dec [d_out]``, ``affine_skip_connection [d_in, d_out]``)
    and a :class:`TranscoderReport`. Layer ``l``'s result depends only on ``xs[l], ys[l]``, ``seed`` and its
    label ``layers[l]`` (default ``l``), so fitting a subset of layers gives the same transcoders for them.
    Runs on ``xs``'s device.
    """
    if xs.ndim != 3 or ys.ndim != 3 or xs.shape[:2] != ys.shape[:2] or xs.shape[1] < 2:
        raise TrainingError(
            f"need MLP inputs and outputs of shape [L, N, d] with the same L and N >= 2; got {tuple(xs.shape)} "
            f"and {tuple(ys.shape)}."
        )
    if not 0 < target_l0 < width:
        raise TrainingError(f"target_l0 must be between 0 and the width ({width}), got {target_l0}.")
    n_layers, n, d_in = xs.shape
    d_out = ys.shape[-1]
    layers = list(range(n_layers)) if layers is None else list(layers)
    if len(layers) != n_layers:
        raise TrainingError(f"got {len(layers)} layer labels for {n_layers} layers of activations.")
    device = xs.device
    batch_size = min(batch_size, n)
    # Centre and scale per layer so that E‖x‖² = E‖y‖² = 1: losses then read as FVU, and lr/eps transfer.
    mean_in, mean_out = xs.mean(1), ys.mean(1)  # [L, d]
    x = xs - mean_in.unsqueeze(1)
    scale_in = x.pow(2).sum(-1).mean(-1).sqrt()  # [L]
    x /= scale_in.view(-1, 1, 1)
    r = ys - mean_out.unsqueeze(1)
    scale_out = r.pow(2).sum(-1).mean(-1).sqrt()
    r /= scale_out.view(-1, 1, 1)
    skip = _ridge_skip(x, r, ridge)  # [L, d_in, d_out]
    for a in range(0, n, 8192):  # the features fit what the skip leaves
        r[:, a : a + 8192] -= torch.bmm(x[:, a : a + 8192], skip)
    skip_fvu = r.pow(2).sum(-1).mean(-1)  # [L]: total variance is 1

    generators = [torch.Generator().manual_seed(seed * 1000 + layer) for layer in layers]
    tc = _StackedTranscoders(n_layers, d_in, d_out, width, generators).to(device)
    rate = min(0.5, target_l0 / width)
    with torch.no_grad():
        for i, g in enumerate(generators):
            sample = x[i, torch.randperm(n, generator=g)[: min(n, 4096)].to(device)]
            tc.set_thresholds_by_rate(i, torch.arange(width), sample, rate)
    others = [p for name, p in tc.named_parameters() if name != "log_threshold"]
    opt = torch.optim.Adam(
        [{"params": others, "lr": lr}, {"params": [tc.log_threshold], "lr": threshold_lr}], betas=(0.0, 0.999)
    )
    base_lrs = [lr, threshold_lr]
    warmup = max(1, steps // 20)
    decay_from = int(steps * 0.8)
    fired = torch.zeros(n_layers, width, dtype=torch.bool, device=device)
    frequency = torch.full((n_layers, width), rate, device=device)
    resampled = [0] * n_layers
    order_gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=order_gen)
    cursor = 0
    bar = tqdm(
        range(steps), desc=f"training {n_layers} transcoders (width {width}, L0 → {target_l0:g})", disable=not progress
    )
    for step in bar:
        if cursor + batch_size > n:
            order = torch.randperm(n, generator=order_gen)
            cursor = 0
        idx = order[cursor : cursor + batch_size].to(device)
        cursor += batch_size
        xb, rb = x[:, idx], r[:, idx]
        factor = min(1.0, (step + 1) / warmup)
        if step >= decay_from:
            factor *= max(0.05, (steps - step) / max(1, steps - decay_from))
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * factor
        penalty = l0_coefficient * min(1.0, (step + 1) / (steps * 0.1 + 1))
        recon, pre, feats, l0 = tc(xb, eps)
        mse = (recon - rb).pow(2).sum(-1).mean(-1)  # [L]
        loss = mse.sum() + penalty * ((l0 / target_l0 - 1.0) ** 2).sum()
        rare = frequency < min_frequency
        if frequency_coefficient and bool(rare.any()):
            gap = torch.relu(tc.log_threshold.exp().detach().unsqueeze(1) - pre) * rare.unsqueeze(1)
            loss = loss + frequency_coefficient * gap.mean(1).sum() / width
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # keep decoder rows on the unit sphere: drop the radial gradient
            g = tc.w_dec.grad
            g -= (g * tc.w_dec).sum(-1, keepdim=True) * tc.w_dec
        opt.step()
        tc.normalise_decoder()
        active = (feats > 0).any(1)
        fired |= active
        frequency.mul_(0.95).add_((feats > 0).float().mean(1), alpha=0.05)
        if resample_every and (step + 1) % resample_every == 0:
            if step < steps * resample_until:
                for i in range(n_layers):
                    dead = (~fired[i]).nonzero().flatten()
                    if len(dead):
                        _resample_layer(tc, opt, i, dead, xb[i], rb[i], generators[i], rate)
                        frequency[i, dead] = rate
                        resampled[i] += len(dead)
            fired.zero_()
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(fvu=f"{(mse.mean() + 0).item():.3f}", l0=f"{l0.mean().item():.1f}")
    bar.close()

    params = _fold(tc, skip, mean_in, mean_out, scale_in, scale_out)
    reports = []
    with torch.no_grad():
        sample = order[: min(n, 8192)].to(device)
        for i, p in enumerate(params):
            xi, yi = xs[i, sample], ys[i, sample]
            pre = xi @ p["w_enc"] + p["b_enc"]
            f = torch.relu(pre) * (pre > p["threshold"])
            out = f @ p["w_dec"] + p["b_dec"] + xi @ p["affine_skip_connection"]
            fvu = float((out - yi).pow(2).sum() / (yi - yi.mean(0)).pow(2).sum())
            reports.append(
                TranscoderReport(
                    layer=layers[i],
                    l0=float((f > 0).sum(-1).float().mean()),
                    fvu=fvu,
                    fvu_skip_only=float(skip_fvu[i]),
                    dead_fraction=float(((f > 0).sum(0) == 0).float().mean()),
                    resampled=resampled[i],
                    scale_in=float(scale_in[i]),
                    scale_out=float(scale_out[i]),
                )
            )
    return params, reports


@torch.no_grad()
def _fold(
    tc: _StackedTranscoders,
    skip: torch.Tensor,
    mean_in: torch.Tensor,
    mean_out: torch.Tensor,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
) -> list[dict[str, torch.Tensor]]:
    """Raw-unit GS2 params per layer, feature activations in output units.

    Training saw ``x_n = (x − m_in)/s_in`` and predicted ``y_n = (y − m_out)/s_out`` as
    ``x_n S + acts_n W_d + b_d``. Multiplying the encoder side by ``s_out`` (positive, so the JumpReLU
    commutes with it) gives ``acts = s_out · acts_n`` with unit decoder rows, and
    ``y = x (s_out/s_in) S + acts W_d + s_out b_d + m_out − m_in (s_out/s_in) S``.
    """
    out = []
    for i in range(tc.w_enc.shape[0]):
        s_in, s_out = float(scale_in[i]), float(scale_out[i])
        w_enc = tc.w_enc[i] * (s_out / s_in)
        skip_raw = skip[i] * (s_out / s_in)
        out.append(
            {
                "w_enc": w_enc.contiguous(),
                "b_enc": (tc.b_enc[i] * s_out - mean_in[i] @ w_enc).contiguous(),
                "threshold": (tc.log_threshold[i].exp() * s_out).contiguous(),
                "w_dec": tc.w_dec[i].detach().clone(),
                "b_dec": (tc.b_dec[i] * s_out + mean_out[i] - mean_in[i] @ skip_raw).contiguous(),
                "affine_skip_connection": skip_raw.contiguous(),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# The set on disk
# --------------------------------------------------------------------------------------------


def transcoder_config(gm: Any, layer: int, width: int, l0: float) -> dict[str, Any]:
    """The ``config.json`` of one Gemma Scope 2 ``transcoder_all/..._affine`` folder, with the measured L0."""
    return {
        "hf_hook_point_in": mlp_in_point(layer),
        "hf_hook_point_out": mlp_out_point(layer),
        "width": int(width),
        "model_name": gm.name,
        "architecture": "jump_relu",
        "l0": round(float(l0)),
        "affine_connection": True,
        "type": "transcoder",
    }


def train_transcoders(
    gm: Any,
    out_dir: str | os.PathLike[str],
    *,
    layers: Sequence[int] | None = None,
    width: int = 1024,
    target_l0: float = 16,
    l0_label: str = "small",
    corpus: Sequence[str] | None = None,
    n_tokens: int = 12_000,
    steps: int = 300,
    batch_size: int = 512,
    ctx: int = 128,
    seed: int = 0,
    progress: bool = True,
    **fit_options: Any,
) -> Path:
    """Train affine skip-transcoders for ``layers`` (default: all) of ``gm`` and write them under ``out_dir``.

    ``out_dir`` becomes a Gemma Scope 2 repository-like root: ``out_dir/transcoder_all/layer_{L}_width_{W}_
    l0_{S}_affine/`` holding ``config.json`` and ``params.safetensors`` (loadable with ``load_sae``), plus
    ``out_dir/training.json`` with the recipe and each layer's :class:`TranscoderReport`. The root appears
    by one atomic rename. ``corpus`` defaults to the offline training texts.
    """
    from gemscope_widgets.backend.training.activations import default_training_texts

    layers = list(range(gm.n_layers)) if layers is None else sorted(set(int(layer) for layer in layers))
    bad = [layer for layer in layers if not 0 <= layer < gm.n_layers]
    if bad or not layers:
        raise TrainingError(f"layers {bad or layers} are outside the model's 0..{gm.n_layers - 1}.")
    if width < 2:
        raise TrainingError(f"width must be at least 2, got {width}.")
    texts = default_training_texts() if corpus is None else corpus
    torch.manual_seed(seed)
    windows = token_windows(gm.tokenizer, texts, ctx, max_windows=n_tokens // (ctx - 1) + 2)
    xs, ys = collect_mlp_pairs(gm, windows, layers, max_tokens=n_tokens, progress=progress)
    threads = torch.get_num_threads()
    try:
        params, reports = fit_transcoders(
            xs, ys, width=width, target_l0=target_l0, steps=steps, batch_size=batch_size, layers=layers,
            seed=seed, progress=progress, **fit_options,
        )
    finally:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    with staged_dir(out) as tmp:
        for layer, p, rep in zip(layers, params, reports):
            folder = tmp / "transcoder_all" / folder_name(layer, width, l0_label)
            save_gemma_scope_folder(folder, transcoder_config(gm, layer, width, rep.l0), p)
        recipe = {"width": width, "target_l0": target_l0, "n_tokens": int(xs.shape[1]), "steps": steps,
                  "batch_size": batch_size, "ctx": ctx, "seed": seed, **fit_options}
        (tmp / "training.json").write_text(
            json.dumps({"model": gm.name, "recipe": recipe, "layers": [asdict(r) for r in reports]}, indent=2)
        )
    return out
