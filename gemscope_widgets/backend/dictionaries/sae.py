"""Gemma Scope 2 dictionaries: the config record and the exact JumpReLU math of every kind.

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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gemscope_widgets.errors import FeatureIndexError, GemscopeError, SAELoadError, SAEModelMismatch

KINDS = ("sae", "transcoder", "clt", "crosscoder")
SITES = ("resid_post", "mlp_out", "attn_out", "transcoder", "clt", "crosscoder")


@dataclass(frozen=True)
class SAEConfig:
    """What a Gemma Scope 2 folder says about itself, with hook points expanded and shapes checked."""

    kind: str
    site: str
    hook_in: str
    hook_out: str
    hook_points_in: tuple[str, ...]
    hook_points_out: tuple[str, ...]
    layers_in: tuple[int, ...]
    layers_out: tuple[int, ...]
    width: int
    d_in: int
    d_out: int
    l0: float | None
    model_name: str | None
    affine: bool
    name: str
    repo_id: str | None
    path: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def layer(self) -> int:
        """The single layer of a one-layer SAE/transcoder (its input layer)."""
        if len(self.layers_in) != 1:
            raise GemscopeError(
                f"{self.name} spans layers {list(self.layers_in)}; use config.layers_in for multi-layer kinds."
            )
        return self.layers_in[0]


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


def _w32(w: Tensor) -> Tensor:
    # Weights stay float32 unless the caller cast the module (e.g. to bfloat16 to save memory); the math
    # still runs in float32, at the price of an upcast per call.
    return w if w.dtype == torch.float32 else w.float()


def _fp32(x: Tensor, device: torch.device) -> Tensor:
    if not isinstance(x, Tensor):
        raise GemscopeError(f"Expected a torch.Tensor of activations, got {type(x).__name__}.")
    return x.to(device=device, dtype=torch.float32)


class _Dictionary(torch.nn.Module):
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

    def extra_repr(self) -> str:
        c = self.config
        return f"{c.name!r}, kind={c.kind}, width={c.width}, d_in={c.d_in}, d_out={c.d_out}"


class JumpReLUSAE(_Dictionary):
    """A one-layer JumpReLU SAE or transcoder (kinds ``sae`` and ``transcoder``, affine skip included).

    Shapes: ``w_enc [d_in, W]``, ``b_enc [W]``, ``threshold [W]``, ``w_dec [W, d_out]``, ``b_dec [d_out]``,
    ``affine_skip_connection [d_in, d_out]`` or None.
    """

    def __init__(
        self,
        config: SAEConfig,
        *,
        w_enc: Tensor,
        b_enc: Tensor,
        threshold: Tensor,
        w_dec: Tensor,
        b_dec: Tensor,
        affine_skip_connection: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("w_enc", w_enc)
        self.register_buffer("b_enc", b_enc)
        self.register_buffer("threshold", threshold)
        self.register_buffer("w_dec", w_dec)
        self.register_buffer("b_dec", b_dec)
        self.register_buffer("affine_skip_connection", affine_skip_connection)

    def _check_input(self, x: Tensor, what: str = "input") -> Tensor:
        x = _fp32(x, self.w_enc.device)
        if x.shape[-1] != self.config.d_in:
            raise SAEModelMismatch(
                f"{self.config.name} reads vectors of size d_in={self.config.d_in} at {self.config.hook_in}, "
                f"but the {what} has last dimension {x.shape[-1]} (shape {tuple(x.shape)}). "
                "Capture the activation at the SAE's hook point on the model it was trained for."
            )
        return x

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations ``[..., W]`` of inputs ``[..., d_in]`` (float32)."""
        x = self._check_input(x)
        return jumprelu(x @ _w32(self.w_enc) + _w32(self.b_enc), _w32(self.threshold))

    def decode(self, acts: Tensor, x: Tensor | None = None) -> Tensor:
        """Reconstruction ``[..., d_out]``; affine transcoders also need the input ``x``."""
        acts = _fp32(acts, self.w_dec.device)
        if acts.shape[-1] != self.width:
            raise SAEModelMismatch(
                f"{self.config.name} has {self.width} features but the activations have last dimension "
                f"{acts.shape[-1]}."
            )
        recon = acts @ _w32(self.w_dec) + _w32(self.b_dec)
        if self.affine_skip_connection is not None:
            if x is None:
                raise GemscopeError(
                    f"{self.config.name} is an affine (skip) transcoder: decode(acts, x) needs the input x "
                    "too, because its output adds x @ affine_skip_connection."
                )
            recon = recon + self._check_input(x) @ _w32(self.affine_skip_connection)
        return recon

    def forward(self, x: Tensor) -> Tensor:
        """``decode(encode(x), x)``."""
        return self.decode(self.encode(x), x)

    def write_directions(self, f: int) -> dict[str, Tensor]:
        """The decoder direction ``w_dec[f]`` keyed by the output hook point."""
        f = self.check_feature(f)
        return {self.config.hook_out: self.w_dec[f]}

    def feature_activation(self, f: int, xs: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Activation ``[...]`` of feature ``f`` alone (one encoder column): ``encode(x)[..., f]`` up to rounding."""
        f = self.check_feature(f)
        x = self._check_input(_pick(xs, self.config.hook_in, self.config.name))
        pre = x @ _w32(self.w_enc[:, f]) + _w32(self.b_enc[f])
        return jumprelu(pre, _w32(self.threshold[f]))


def _pick(xs: Mapping[str, Tensor] | Tensor, hook: str, name: str) -> Tensor:
    if isinstance(xs, Tensor):
        return xs
    if hook not in xs:
        raise GemscopeError(
            f"{name} needs the activation at {hook!r}, but only {sorted(xs)} were given. "
            "Capture the hook points listed in sae.read_hook_points."
        )
    return xs[hook]


class _MultiLayer(_Dictionary):
    """Per-slot JumpReLU encoders whose features decode into several slots (CLT, crosscoder).

    Slot ``i`` holds ``w_enc_i [d, W_i]``, ``b_enc_i [W_i]``, ``threshold_i [W_i]``, ``b_dec_i [d]`` (bias of
    output slot ``i``) and ``w_dec_i [W_i, S - offset_i, d]`` whose second axis covers output slots
    ``offset_i .. S-1``. Features are numbered slot by slot.
    """

    _first_target_is_source = False  # CLT: features only write to their own layer and later ones

    def __init__(self, config: SAEConfig, slots: Sequence[Mapping[str, Tensor]]) -> None:
        super().__init__()
        self.config = config
        self.n_slots = len(slots)
        self.slot_widths: tuple[int, ...] = tuple(int(s["w_enc"].shape[1]) for s in slots)
        self._dec_offsets: list[int] = []
        starts = [0]
        for w in self.slot_widths:
            starts.append(starts[-1] + w)
        self._starts = tuple(starts)
        for i, s in enumerate(slots):
            for key in ("w_enc", "b_enc", "threshold", "w_dec", "b_dec"):
                self.register_buffer(f"{key}_{i}", s[key])
            self.register_buffer(f"affine_skip_connection_{i}", s.get("affine_skip_connection"))
            self._dec_offsets.append(self.n_slots - int(s["w_dec"].shape[1]))

    def _slot(self, key: str, i: int) -> Tensor:
        return _w32(getattr(self, f"{key}_{i}"))

    def feature_slot(self, f: int) -> tuple[int, int]:
        """``(slot, index within slot)`` of feature ``f``."""
        f = self.check_feature(f)
        for i in range(self.n_slots):
            if f < self._starts[i + 1]:
                return i, f - self._starts[i]
        raise AssertionError("unreachable: check_feature bounds f")

    def _targets(self, i: int) -> range:
        first = max(self._dec_offsets[i], i if self._first_target_is_source else 0)
        return range(first, self.n_slots)

    def _check_stacked(self, xs: Tensor, what: str) -> Tensor:
        xs = _fp32(xs, self._device())
        d = self.config.d_in
        if xs.dim() < 2 or tuple(xs.shape[-2:]) != (self.n_slots, d):
            raise SAEModelMismatch(
                f"{self.config.name} ({self.config.kind}) takes {what} shaped [..., {self.n_slots}, {d}] "
                f"(one row per hook point in {list(self.config.hook_points_in)}), got {tuple(xs.shape)}."
            )
        return xs

    def encode(self, xs: Tensor) -> Tensor:
        """Feature activations ``[..., W]`` from inputs ``[..., n_slots, d]``; features ordered by slot."""
        xs = self._check_stacked(xs, "inputs")
        parts = [
            jumprelu(xs[..., i, :] @ self._slot("w_enc", i) + self._slot("b_enc", i), self._slot("threshold", i))
            for i in range(self.n_slots)
        ]
        return torch.cat(parts, dim=-1)

    def decode(self, acts: Tensor, xs: Tensor | None = None) -> Tensor:
        """Reconstruction ``[..., n_slots, d]``; affine kinds also need the inputs ``xs``."""
        acts = _fp32(acts, self._device())
        if acts.shape[-1] != self.width:
            raise SAEModelMismatch(
                f"{self.config.name} has {self.width} features but the activations have last dimension "
                f"{acts.shape[-1]}."
            )
        b_dec = torch.stack([self._slot("b_dec", j) for j in range(self.n_slots)])
        out = b_dec.expand(*acts.shape[:-1], self.n_slots, self.config.d_out).clone()
        for i in range(self.n_slots):
            targets = self._targets(i)
            if len(targets) == 0:
                continue
            a = acts[..., self._starts[i] : self._starts[i + 1]]
            off = self._dec_offsets[i]
            w = self._slot("w_dec", i)[:, targets.start - off :]
            out[..., targets.start :, :] += torch.einsum("...w,wtd->...td", a, w)
        if self.config.affine:
            if xs is None:
                raise GemscopeError(
                    f"{self.config.name} has affine skip connections: decode(acts, xs) needs the inputs xs too."
                )
            xs = self._check_stacked(xs, "inputs")
            for i in range(self.n_slots):
                out[..., i, :] += xs[..., i, :] @ self._slot("affine_skip_connection", i)
        return out

    def forward(self, xs: Tensor) -> Tensor:
        """``decode(encode(xs), xs)``."""
        return self.decode(self.encode(xs), xs)

    def write_directions(self, f: int) -> dict[str, Tensor]:
        """Output hook point -> decoder direction ``[d]`` for every slot feature ``f`` writes to."""
        i, local = self.feature_slot(f)
        w = getattr(self, f"w_dec_{i}")
        off = self._dec_offsets[i]
        return {self.config.hook_points_out[j]: w[local, j - off] for j in self._targets(i)}

    def feature_activation(self, f: int, xs: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Activation ``[...]`` of feature ``f`` from its own slot's input only."""
        i, local = self.feature_slot(f)
        hook = self.config.hook_points_in[i]
        x = _fp32(_pick(xs, hook, self.config.name), self._device())
        if x.shape[-1] != self.config.d_in:
            raise SAEModelMismatch(
                f"{self.config.name} reads vectors of size {self.config.d_in} at {hook}, got last dimension "
                f"{x.shape[-1]}."
            )
        pre = x @ self._slot("w_enc", i)[:, local] + self._slot("b_enc", i)[local]
        return jumprelu(pre, self._slot("threshold", i)[local])


class CrossLayerTranscoder(_MultiLayer):
    """Gemma Scope 2 cross-layer transcoder (kind ``clt``): one ``params_layer_{i}`` file per layer.

    Features of layer ``i`` read ``pre_feedforward_layernorm.output`` of layer ``i`` and write to the
    ``post_feedforward_layernorm.output`` of every layer ``j >= i``. ``w_dec_i`` is stored either with the
    full target axis ``[W_i, n_layers, d]`` (entries ``j < i`` are ignored) or as ``[W_i, n_layers - i, d]``.
    """

    _first_target_is_source = True

    @property
    def n_layers(self) -> int:
        """Number of layers the CLT spans (one file each)."""
        return self.n_slots

    def feature_layer(self, f: int) -> int:
        """Source layer of feature ``f``."""
        return self.config.layers_in[self.feature_slot(f)[0]]


class Crosscoder(_MultiLayer):
    """Gemma Scope 2 crosscoder (kind ``crosscoder``) over several residual-stream layers.

    Two layouts are recognised from the tensor shapes, one ``params_layer_{k}`` file per layer slot:

    * per-slot encoders (``w_dec_k [W_k, n_slots, d]``, the layout of the published tutorial code):
      ``acts_k = jumprelu(x_k @ w_enc_k + b_enc_k)``, ``recon_j = sum_k acts_k @ w_dec_k[:, j] + b_dec_j``;
    * a shared latent (``w_dec_k [W, d]``): ``pre = sum_k x_k @ w_enc_k + b_enc``,
      ``recon_k = acts @ w_dec_k + b_dec_k``.
    """

    def __init__(self, config: SAEConfig, slots: Sequence[Mapping[str, Tensor]]) -> None:
        self.shared_latent = slots[0]["w_dec"].dim() == 2
        if not self.shared_latent:
            super().__init__(config, slots)
            return
        _Dictionary.__init__(self)
        self.config = config
        self.n_slots = len(slots)
        self.slot_widths = (int(slots[0]["w_enc"].shape[1]),)
        self._starts = (0, self.slot_widths[0])
        self._dec_offsets = [0] * self.n_slots
        self.register_buffer("b_enc", slots[0]["b_enc"])
        self.register_buffer("threshold", slots[0]["threshold"])
        for k, s in enumerate(slots):
            self.register_buffer(f"w_enc_{k}", s["w_enc"])
            self.register_buffer(f"w_dec_{k}", s["w_dec"])
            self.register_buffer(f"b_dec_{k}", s["b_dec"])
            self.register_buffer(f"affine_skip_connection_{k}", s.get("affine_skip_connection"))

    def _shared_pre(self, xs: Tensor, column: int | None = None) -> Tensor:
        pre = None
        for k in range(self.n_slots):
            w = self._slot("w_enc", k)
            term = xs[..., k, :] @ (w if column is None else w[:, column])
            pre = term if pre is None else pre + term
        assert pre is not None
        return pre + _w32(self.b_enc if column is None else self.b_enc[column])

    def encode(self, xs: Tensor) -> Tensor:
        """Feature activations ``[..., W]`` from inputs ``[..., n_slots, d]``."""
        if not self.shared_latent:
            return super().encode(xs)
        xs = self._check_stacked(xs, "inputs")
        return jumprelu(self._shared_pre(xs), _w32(self.threshold))

    def decode(self, acts: Tensor, xs: Tensor | None = None) -> Tensor:
        """Reconstruction ``[..., n_slots, d]``."""
        if not self.shared_latent:
            return super().decode(acts, xs)
        acts = _fp32(acts, self._device())
        if acts.shape[-1] != self.width:
            raise SAEModelMismatch(
                f"{self.config.name} has {self.width} features but the activations have last dimension "
                f"{acts.shape[-1]}."
            )
        outs = [acts @ self._slot("w_dec", k) + self._slot("b_dec", k) for k in range(self.n_slots)]
        out = torch.stack(outs, dim=-2)
        if self.config.affine:
            if xs is None:
                raise GemscopeError(f"{self.config.name} has affine skip connections: decode needs xs too.")
            xs = self._check_stacked(xs, "inputs")
            for k in range(self.n_slots):
                out[..., k, :] += xs[..., k, :] @ self._slot("affine_skip_connection", k)
        return out

    def write_directions(self, f: int) -> dict[str, Tensor]:
        """Output hook point -> decoder direction ``[d]`` of feature ``f``."""
        if not self.shared_latent:
            return super().write_directions(f)
        f = self.check_feature(f)
        return {self.config.hook_points_out[k]: self._slot("w_dec", k)[f] for k in range(self.n_slots)}

    def feature_activation(self, f: int, xs: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Activation ``[...]`` of feature ``f`` alone."""
        if not self.shared_latent:
            return super().feature_activation(f, xs)
        f = self.check_feature(f)
        if isinstance(xs, Tensor):
            stacked = self._check_stacked(xs, "inputs")
        else:
            stacked = torch.stack(
                [_fp32(_pick(xs, h, self.config.name), self._device()) for h in self.config.hook_points_in], -2
            )
            stacked = self._check_stacked(stacked, "inputs")
        return jumprelu(self._shared_pre(stacked, f), _w32(self.threshold[f]))


def validate_slot_shapes(kind: str, name: str, slots: Sequence[Mapping[str, Tensor]], d_in: int) -> None:
    """Raise :class:`SAELoadError` when per-slot tensors do not fit one of the known multi-layer layouts."""
    n = len(slots)
    shared = kind == "crosscoder" and slots[0]["w_dec"].dim() == 2
    for i, s in enumerate(slots):
        where = f"{name} params_layer_{i}.safetensors"
        w_enc, w_dec = s["w_enc"], s["w_dec"]
        if w_enc.dim() != 2 or w_enc.shape[0] != d_in:
            raise SAELoadError(f"{where}: w_enc has shape {tuple(w_enc.shape)}, expected [{d_in}, W].")
        width = w_enc.shape[1]
        for key in ("b_enc", "threshold"):
            if tuple(s[key].shape) != (width,):
                raise SAELoadError(f"{where}: {key} has shape {tuple(s[key].shape)}, expected [{width}].")
        if tuple(s["b_dec"].shape) != (d_in,):
            raise SAELoadError(f"{where}: b_dec has shape {tuple(s['b_dec'].shape)}, expected [{d_in}].")
        if shared:
            if tuple(w_dec.shape) != (width, d_in):
                raise SAELoadError(
                    f"{where}: w_dec has shape {tuple(w_dec.shape)}; slot 0 used the shared-latent layout "
                    f"[W, d], so expected [{width}, {d_in}]."
                )
        else:
            ok_targets = {n} if kind == "crosscoder" else {n, n - i}
            fits = w_dec.dim() == 3 and w_dec.shape[0] == width and w_dec.shape[2] == d_in
            if not fits or w_dec.shape[1] not in ok_targets:
                expected = " or ".join(f"[{width}, {t}, {d_in}]" for t in sorted(ok_targets, reverse=True))
                raise SAELoadError(
                    f"{where}: w_dec has shape {tuple(w_dec.shape)}, expected {expected} "
                    f"({n} {'layers' if kind == 'clt' else 'slots'}). This {kind} layout is not recognised."
                )
        skip = s.get("affine_skip_connection")
        if skip is not None and tuple(skip.shape) != (d_in, d_in):
            raise SAELoadError(
                f"{where}: affine_skip_connection has shape {tuple(skip.shape)}, expected [{d_in}, {d_in}]."
            )
    if shared:
        w0 = slots[0]["w_enc"].shape[1]
        for i, s in enumerate(slots[1:], start=1):
            if s["w_enc"].shape[1] != w0:
                raise SAELoadError(f"{name}: slot {i} has width {s['w_enc'].shape[1]} but slot 0 has {w0}.")
            for key in ("b_enc", "threshold"):
                if not torch.equal(s[key], slots[0][key]):
                    raise SAELoadError(
                        f"{name}: shared-latent crosscoder files disagree on {key} (slot {i} vs slot 0); "
                        "this crosscoder layout is not recognised."
                    )
