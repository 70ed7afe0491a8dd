"""Gemma Scope 2 crosscoders (type ``crosscoder``) over several residual-stream layers.

Two layouts are recognised from the tensor shapes, one ``params_layer_{k}`` file per layer slot, and each
has its own class (``Crosscoder(config, slots)`` builds the right one):

* :class:`PerSlotCrosscoder` (``w_dec_k [W_k, n_slots, d]``, the layout of the published tutorial code):
  ``acts_k = jumprelu(x_k @ w_enc_k + b_enc_k)``, ``recon_j = sum_k acts_k @ w_dec_k[:, j] + b_dec_j``;
* :class:`SharedLatentCrosscoder` (``w_dec_k [W, d]``): ``pre = sum_k x_k @ w_enc_k + b_enc``,
  ``recon_k = acts @ w_dec_k + b_dec_k``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gemscope_widgets.backend.dictionaries.base import Dictionary, as_fp32, jumprelu, pick_input, w32
from gemscope_widgets.backend.dictionaries.config import FolderConfig, SAEConfig
from gemscope_widgets.backend.dictionaries.layered import LayeredDictionary, is_shared_latent, load_slots
from gemscope_widgets.errors import GemscopeError


class Crosscoder(LayeredDictionary):
    """A Gemma Scope 2 crosscoder; ``Crosscoder(config, slots)`` returns the class of the slots' layout."""

    shared_latent: bool = False

    def __new__(cls, config: SAEConfig, slots: Sequence[Mapping[str, Tensor]]) -> Any:
        if cls is Crosscoder:
            cls = SharedLatentCrosscoder if is_shared_latent("crosscoder", slots) else PerSlotCrosscoder
        return super().__new__(cls)

    @classmethod
    def from_folder(cls, folder: Path, cfg: FolderConfig, layer_files: list[Path]) -> Crosscoder:
        """Load every ``params_layer_{k}`` file (memory-mapped), check the layout and build its class."""
        return Crosscoder(*load_slots(folder, cfg, layer_files))


class PerSlotCrosscoder(Crosscoder):
    """Per-slot encoders, each feature decoding into every slot: the layered math with all targets."""


class SharedLatentCrosscoder(Crosscoder):
    """One latent read from every slot (``pre = sum_k x_k @ w_enc_k + b_enc``) and decoded into each."""

    shared_latent = True

    def __init__(self, config: SAEConfig, slots: Sequence[Mapping[str, Tensor]]) -> None:
        Dictionary.__init__(self)
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
        return pre + w32(self.b_enc if column is None else self.b_enc[column])

    def encode(self, xs: Tensor) -> Tensor:
        """Feature activations ``[..., W]`` from inputs ``[..., n_slots, d]``."""
        xs = self._check_stacked(xs, "inputs")
        return jumprelu(self._shared_pre(xs), w32(self.threshold))

    def decode(self, acts: Tensor, xs: Tensor | None = None) -> Tensor:
        """Reconstruction ``[..., n_slots, d]``."""
        acts = self._check_acts(acts)
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
        f = self.check_feature(f)
        return {self.config.hook_points_out[k]: self._slot("w_dec", k)[f] for k in range(self.n_slots)}

    def feature_activation(self, f: int, xs: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Activation ``[...]`` of feature ``f`` alone."""
        f = self.check_feature(f)
        if isinstance(xs, Tensor):
            stacked = self._check_stacked(xs, "inputs")
        else:
            rows = [as_fp32(pick_input(xs, h, self.config.name), self._device()) for h in self.read_hook_points]
            stacked = self._check_stacked(torch.stack(rows, -2), "inputs")
        return jumprelu(self._shared_pre(stacked, f), w32(self.threshold[f]))
