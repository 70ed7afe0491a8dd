"""One-layer JumpReLU SAEs and transcoders (Gemma Scope 2 types ``sae`` and ``transcoder``).

A folder holds ``config.json`` and one ``params.safetensors`` with ``w_enc [d_in, W]``, ``b_enc [W]``,
``threshold [W]``, ``w_dec [W, d_out]``, ``b_dec [d_out]`` and, for affine transcoders,
``affine_skip_connection [d_in, d_out]``. Math: see :mod:`.base`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from gemscope_widgets.backend.dictionaries.base import Dictionary, as_fp32, jumprelu, pick_input, w32
from gemscope_widgets.backend.dictionaries.config import SKIP_KEY, FolderConfig, SAEConfig, check_keys
from gemscope_widgets.backend.dictionaries.safetensors_io import as_float32, read_safetensors
from gemscope_widgets.errors import GemscopeError, SAELoadError, SAEModelMismatch


class JumpReLUSAE(Dictionary):
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

    @classmethod
    def from_folder(cls, folder: Path, cfg: FolderConfig, layer_files: list[Path]) -> JumpReLUSAE:
        """Load ``folder/params.safetensors`` (memory-mapped), checking every shape against the others."""
        path = _params_file(folder)
        params = as_float32(read_safetensors(path))
        check_keys(params, str(path))
        w_enc, w_dec = params["w_enc"], params["w_dec"]
        if w_enc.dim() != 2 or w_dec.dim() != 2:
            raise SAELoadError(f"{path}: w_enc {tuple(w_enc.shape)} and w_dec {tuple(w_dec.shape)} must be matrices.")
        d_in, width = w_enc.shape
        d_out = w_dec.shape[1]
        if w_dec.shape[0] != width:
            raise SAELoadError(
                f"{path}: w_enc has {width} features ([{d_in}, {width}]) but w_dec has {w_dec.shape[0]} "
                f"([{w_dec.shape[0]}, {d_out}]); the file is inconsistent."
            )
        for key, want in (("b_enc", (width,)), ("threshold", (width,)), ("b_dec", (d_out,))):
            if tuple(params[key].shape) != want:
                raise SAELoadError(f"{path}: {key} has shape {tuple(params[key].shape)}, expected {list(want)}.")
        skip = params.get(SKIP_KEY)
        if skip is not None and tuple(skip.shape) != (d_in, d_out):
            raise SAELoadError(f"{path}: {SKIP_KEY} has shape {tuple(skip.shape)}, expected [{d_in}, {d_out}].")
        if cfg.raw.get("affine_connection") and skip is None:
            raise SAELoadError(f"{folder}/config.json says affine_connection but {path.name} has no {SKIP_KEY}.")
        config = cfg.sae_config(n_slots=1, width=width, d_in=d_in, d_out=d_out, affine=skip is not None)
        if cfg.kind == "sae" and d_in != d_out:
            raise SAELoadError(f"{path}: an SAE must reconstruct its input, but d_in={d_in} and d_out={d_out}.")
        return cls(
            config,
            w_enc=w_enc,
            b_enc=params["b_enc"],
            threshold=params["threshold"],
            w_dec=w_dec,
            b_dec=params["b_dec"],
            affine_skip_connection=skip,
        )

    def _check_input(self, x: Tensor, what: str = "input") -> Tensor:
        x = as_fp32(x, self.w_enc.device)
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
        return jumprelu(x @ w32(self.w_enc) + w32(self.b_enc), w32(self.threshold))

    def decode(self, acts: Tensor, x: Tensor | None = None) -> Tensor:
        """Reconstruction ``[..., d_out]``; affine transcoders also need the input ``x``."""
        acts = self._check_acts(acts)
        recon = acts @ w32(self.w_dec) + w32(self.b_dec)
        if self.affine_skip_connection is not None:
            if x is None:
                raise GemscopeError(
                    f"{self.config.name} is an affine (skip) transcoder: decode(acts, x) needs the input x "
                    "too, because its output adds x @ affine_skip_connection."
                )
            recon = recon + self._check_input(x) @ w32(self.affine_skip_connection)
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
        x = self._check_input(pick_input(xs, self.config.hook_in, self.config.name))
        pre = x @ w32(self.w_enc[:, f]) + w32(self.b_enc[f])
        return jumprelu(pre, w32(self.threshold[f]))


def _params_file(folder: Path) -> Path:
    path = folder / "params.safetensors"
    if path.is_file():
        return path
    others = sorted(
        p.name for p in folder.iterdir() if p.name.startswith("params") or p.suffix in (".npz", ".pt", ".bin")
    )
    if others:
        raise SAELoadError(
            f"{folder} has no params.safetensors (found {others}). Only Gemma Scope 2 safetensors weights are "
            "loaded; pickle/npz files are never read."
        )
    raise SAELoadError(f"{folder} has no params.safetensors; download it next to config.json.")
