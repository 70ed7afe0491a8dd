"""What every Gemma Scope 2 dictionary shares: the JumpReLU, float32 inputs, feature-index checks, and
the stacking of per-slot inputs for multi-layer kinds.

Math (Gemma Scope 2, all kinds)::

    pre   = x @ w_enc + b_enc
    acts  = relu(pre) * (pre > threshold)
    recon = acts @ w_dec + b_dec (+ x @ affine_skip_connection for affine transcoders)

No input normalisation, no ``b_dec`` subtraction. Everything is computed in float32 whatever the
input's dtype: the weights are published in float32 and Gemma's activations reach the thousands.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gemscope_widgets.backend.dictionaries.config import SAEConfig
from gemscope_widgets.errors import FeatureIndexError, GemscopeError, SAEModelMismatch


def jumprelu(pre: Tensor, threshold: Tensor) -> Tensor:
    """``relu(pre) * (pre > threshold)``: a value exactly at the threshold is off."""
    return torch.relu(pre) * (pre > threshold)


def check_feature_index(f: Any, width: int, name: str) -> int:
    """``f`` as an int in ``0..width-1``, or a :class:`FeatureIndexError` naming the valid range."""
    try:
        index = operator.index(f)
    except TypeError:
        if isinstance(f, Tensor) and f.numel() == 1 and not f.is_floating_point():
            index = int(f.item())
        else:
            raise FeatureIndexError(
                f"Feature index {f!r} is not an integer; {name} has features 0..{width - 1}."
            ) from None
    if not 0 <= index < width:
        raise FeatureIndexError(
            f"Feature {index} does not exist (out of range): {name} has {width} features (valid: 0..{width - 1})."
        )
    return index


def stack_slots(activations: Mapping[str, Tensor], hook_points: Sequence[str]) -> Tensor:
    """The input of a dictionary that reads ``hook_points``: ``[..., d]`` for one, ``[..., n_slots, d]`` for several.

    Multi-layer kinds (CLT, crosscoder) take their slots stacked on the second-to-last axis, in the order
    of ``config.hook_points_in`` (or ``hook_points_out`` for the matching targets).
    """
    if len(hook_points) == 1:
        return activations[hook_points[0]]
    return torch.stack([activations[h] for h in hook_points], dim=-2)


def w32(w: Tensor) -> Tensor:
    """A weight in float32 (a no-op unless the module was cast, e.g. to bfloat16 to save memory)."""
    return w if w.dtype == torch.float32 else w.float()


def as_fp32(x: Tensor, device: torch.device) -> Tensor:
    """Activations as float32 on ``device``; anything but a tensor is a :class:`GemscopeError`."""
    if not isinstance(x, Tensor):
        raise GemscopeError(f"Expected a torch.Tensor of activations, got {type(x).__name__}.")
    return x.to(device=device, dtype=torch.float32)


def pick_input(xs: Mapping[str, Tensor] | Tensor, hook: str, name: str) -> Tensor:
    """The activation at ``hook`` from a dict of captured activations (a bare tensor is taken as it is)."""
    if isinstance(xs, Tensor):
        return xs
    if hook not in xs:
        raise GemscopeError(
            f"{name} needs the activation at {hook!r}, but only {sorted(xs)} were given. "
            "Capture the hook points listed in sae.read_hook_points."
        )
    return xs[hook]


class Dictionary(torch.nn.Module):
    """Shared surface of every kind: config, width, feature checks."""

    config: SAEConfig

    @property
    def width(self) -> int:
        """Number of features."""
        return self.config.width

    @property
    def read_hook_points(self) -> tuple[str, ...]:
        """The hook points whose activations ``encode`` needs."""
        return self.config.hook_points_in

    def check_feature(self, f: Any) -> int:
        """Return ``f`` as an int, or raise :class:`FeatureIndexError` naming the valid range."""
        return check_feature_index(f, self.width, self.config.name)

    def _device(self) -> torch.device:
        return next(iter(self.buffers())).device

    def _check_acts(self, acts: Tensor) -> Tensor:
        acts = as_fp32(acts, self._device())
        if acts.shape[-1] != self.width:
            raise SAEModelMismatch(
                f"{self.config.name} has {self.width} features but the activations have last dimension "
                f"{acts.shape[-1]}."
            )
        return acts

    def extra_repr(self) -> str:
        c = self.config
        return f"{c.name!r}, kind={c.kind}, width={c.width}, d_in={c.d_in}, d_out={c.d_out}"
