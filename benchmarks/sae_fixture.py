"""The benchmark SAE: random directions, thresholds calibrated on real activations, Gemma Scope 2 layout.

Real Gemma Scope 2 weights cannot be downloaded here, so the SAE has random unit-norm decoder rows with
``w_enc = w_dec.T`` and ``b_enc = 0``. Each feature's threshold is its ``1 - 50/width`` quantile of the
pre-activations at the SAE's layer over about 1k tokens of standard-library docstrings (``<bos>`` dropped),
so about 50 features fire per token, as for a real ``l0_medium`` SAE. The files are written exactly as
Gemma Scope 2 ships them (``config.json`` + ``params.safetensors``) and loaded through ``load_sae``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .texts import calibration_text

TARGET_L0 = 50
CALIBRATION_TOKENS = 1024
PARAM_KEYS = ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")


def fixture_folder(root: Path, layer: int, width: int) -> Path:
    label = f"{width // 1024}k" if width % 1024 == 0 else str(width)
    return root / "resid_post" / f"layer_{layer}_width_{label}_l0_medium"


def layer_activations(gm: Any, text: str, layer: int, n_tokens: int) -> torch.Tensor:
    """Residual stream after ``layer`` for the first ``n_tokens`` tokens of ``text`` (``<bos>`` dropped), fp32."""
    ids = gm.tokenizer(text, add_special_tokens=True)["input_ids"][: n_tokens + 1]
    captured: dict[str, torch.Tensor] = {}

    class _Stop(Exception):
        pass

    def hook(_module: Any, _args: Any, output: Any) -> None:
        captured["x"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = gm.layers[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            gm.text_model(input_ids=torch.tensor([ids], device=gm.device), use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["x"][0, 1:].float().cpu()


def calibrated_params(gm: Any, layer: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The SAE tensors, thresholds calibrated on ``gm``'s real activations at ``layer``."""
    d = gm.d_model
    generator = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(width, d, generator=generator)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    w_enc = w_dec.T.contiguous()
    b_enc = torch.zeros(width)
    b_dec = torch.randn(d, generator=generator) * 0.01
    x = layer_activations(gm, calibration_text(), layer, CALIBRATION_TOKENS)
    pre = x @ w_enc + b_enc
    q = 1.0 - TARGET_L0 / width
    # torch.quantile refuses more than 2**24 elements; a sort per feature does the same job.
    ordered = pre.sort(dim=0).values
    position = q * (ordered.shape[0] - 1)
    lo, frac = int(position), position - int(position)
    hi = min(lo + 1, ordered.shape[0] - 1)
    threshold = ordered[lo] * (1 - frac) + ordered[hi] * frac
    return {"w_enc": w_enc, "w_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": threshold.contiguous()}


def write_gemma_scope_2(folder: Path, params: dict[str, torch.Tensor], *, layer: int, model_name: str) -> Path:
    """Write ``params`` as a Gemma Scope 2 ``resid_post`` SAE folder (float32 safetensors + config.json)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    hook = f"model.layers.{layer}.output"
    save_file({k: params[k].float().contiguous() for k in PARAM_KEYS}, str(folder / "params.safetensors"))
    config = {
        "hf_hook_point_in": hook,
        "hf_hook_point_out": hook,
        "width": int(params["w_enc"].shape[1]),
        "model_name": model_name,
        "architecture": "jump_relu",
        "l0": TARGET_L0,
        "affine_connection": False,
        "type": "sae",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def read_params(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "params.safetensors"))


def ensure_fixture(gm: Any, root: Path, layer: int, width: int) -> Path:
    """The calibrated SAE folder for ``gm`` (written on first use; the calibration is deterministic)."""
    folder = fixture_folder(root, layer, width)
    if (folder / "config.json").is_file() and (folder / "params.safetensors").is_file():
        return folder
    params = calibrated_params(gm, layer, width)
    return write_gemma_scope_2(folder, params, layer=layer, model_name=gm.name)


def load_fixture(folder: Path) -> Any:
    """Load the fixture through the package's own loader, as a user would."""
    from gemscope_widgets.backend.dictionaries.loading import load_sae

    return load_sae(str(folder))
