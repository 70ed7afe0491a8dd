"""Multi-layer dictionaries stored one ``params_layer_{i}.safetensors`` per slot (CLTs and crosscoders).

:class:`LayeredDictionary` holds per-slot JumpReLU encoders whose features decode into several slots; the
cross-layer transcoder and the per-slot crosscoder are this math with different target sets. The loader
and the shape checks of every per-slot layout live here too. Math: see :mod:`.base`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gemscope_widgets.backend.dictionaries.base import Dictionary, as_fp32, jumprelu, pick_input, w32
from gemscope_widgets.backend.dictionaries.config import SKIP_KEY, FolderConfig, SAEConfig, check_keys
from gemscope_widgets.backend.dictionaries.safetensors_io import as_float32, read_safetensors
from gemscope_widgets.errors import GemscopeError, SAELoadError, SAEModelMismatch


class LayeredDictionary(Dictionary):
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
        return w32(getattr(self, f"{key}_{i}"))

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
        xs = as_fp32(xs, self._device())
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
        acts = self._check_acts(acts)
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
        x = as_fp32(pick_input(xs, hook, self.config.name), self._device())
        if x.shape[-1] != self.config.d_in:
            raise SAEModelMismatch(
                f"{self.config.name} reads vectors of size {self.config.d_in} at {hook}, got last dimension "
                f"{x.shape[-1]}."
            )
        pre = x @ self._slot("w_enc", i)[:, local] + self._slot("b_enc", i)[local]
        return jumprelu(pre, self._slot("threshold", i)[local])


def load_slots(folder: Path, cfg: FolderConfig, files: list[Path]) -> tuple[SAEConfig, list[dict[str, Tensor]]]:
    """Read and check every ``params_layer_{i}`` file of a CLT or crosscoder; return its config and slots."""
    kind, display = cfg.kind, cfg.name
    if not files:
        if (folder / "params.safetensors").is_file():
            raise SAELoadError(
                f"{folder}: a {kind} stores one params_layer_{{i}}.safetensors per layer, but only "
                "params.safetensors was found."
            )
        raise SAELoadError(f"{folder}: no params_layer_{{i}}.safetensors files for this {kind}; download them.")
    slots = []
    for path in files:
        params = as_float32(read_safetensors(path))
        check_keys(params, str(path))
        slots.append(params)
    cfg.hook_points(len(files))
    d_in = int(slots[0]["w_enc"].shape[0]) if slots[0]["w_enc"].dim() == 2 else -1
    validate_slot_shapes(kind, display, slots, d_in)
    shared = is_shared_latent(kind, slots)
    width = int(slots[0]["w_enc"].shape[1]) if shared else sum(int(s["w_enc"].shape[1]) for s in slots)
    affine = [SKIP_KEY in s for s in slots]
    config = cfg.sae_config(n_slots=len(files), width=width, d_in=d_in, d_out=d_in, affine=all(affine))
    if any(affine) and not all(affine):
        raise SAELoadError(f"{display}: only some params_layer files have {SKIP_KEY}.")
    if cfg.raw.get("affine_connection") and not all(affine):
        raise SAELoadError(f"{folder}/config.json says affine_connection but the files have no {SKIP_KEY}.")
    return config, slots


def is_shared_latent(kind: str, slots: Sequence[Mapping[str, Any]]) -> bool:
    """A crosscoder whose files hold ``w_dec [W, d]`` (one latent shared by every slot)."""
    return kind == "crosscoder" and slots[0]["w_dec"].dim() == 2


def validate_slot_shapes(kind: str, name: str, slots: Sequence[Mapping[str, Tensor]], d_in: int) -> None:
    """Raise :class:`SAELoadError` when per-slot tensors do not fit one of the known multi-layer layouts."""
    n = len(slots)
    shared = is_shared_latent(kind, slots)
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
