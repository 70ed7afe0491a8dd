"""A random SAE in the Gemma Scope 2 layout whose thresholds are calibrated on a model's real activations.

Real Gemma Scope 2 weights need a model hub. This SAE has random unit-norm decoder rows, ``w_enc = w_dec.T``
and ``b_enc = 0``; each feature's threshold is its ``1 - l0 / width`` quantile of pre-activations over real
text, so about ``l0`` features fire per token on similar text, as for a real SAE of that L0.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import torch

CALIBRATION_TEXT = (
    "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex. "
    "Complex is better than complicated. Flat is better than nested. Sparse is better than dense. "
    "Readability counts. Special cases aren't special enough to break the rules. Although practicality "
    "beats purity. Errors should never pass silently. Unless explicitly silenced. In the face of ambiguity, "
    "refuse the temptation to guess. There should be one-- and preferably only one --obvious way to do it. "
)


def _calibration_text() -> str:
    import json

    return CALIBRATION_TEXT + (json.__doc__ or "") + (re.__doc__ or "")


def calibrated_sae(
    gm: Any,
    layer: int,
    width: int = 16384,
    l0: float = 50,
    *,
    folder: str | Path | None = None,
    text: str | None = None,
    seed: int = 0,
    max_tokens: int = 1024,
    window: int = 128,
) -> Any:
    """A ``resid_post`` JumpReLU SAE in the Gemma Scope 2 layout, loaded with ``load_sae``.

    Each feature's threshold is its ``1 - l0 / width`` quantile of pre-activations over ``text``
    (default: stdlib docstrings) in ``window``-token prompts, so about ``l0`` features fire per token on
    similar text.
    """
    from gemscope_widgets.backend.dictionaries.folder import save_gemma_scope_folder
    from gemscope_widgets.backend.dictionaries.loading import load_sae
    from gemscope_widgets.backend.gemma.capture import capture
    from gemscope_widgets.backend.gemma.sites import hook_point

    hook = hook_point("resid_post", layer)
    ids = gm.prompt(text or _calibration_text()).input_ids[1:max_tokens]
    # Windows of `window` tokens, each behind its own <bos>, as prompts of that length see them.
    n = max(1, len(ids) // (window - 1))
    windows = ids[: n * (window - 1)].reshape(n, window - 1)
    bos = torch.full((n, 1), int(gm.tokenizer.bos_token_id))
    with torch.inference_mode():
        x = capture(gm, torch.cat([bos, windows], dim=1), [hook])[hook]
    x = x[:, 1:].reshape(-1, x.shape[-1]).float().cpu()  # <bos> has a huge norm: leave it out
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(width, x.shape[-1], generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    pre = x @ w_dec.T
    q = 1.0 - l0 / width
    k = max(1, round(q * (pre.shape[0] - 1)))
    threshold = pre.sort(dim=0).values[k].clamp_min(1e-3)  # torch.quantile refuses very large inputs
    config = {
        "hf_hook_point_in": hook,
        "hf_hook_point_out": hook,
        "width": width,
        "model_name": gm.name,
        "architecture": "jump_relu",
        "l0": l0,
        "affine_connection": False,
        "type": "sae",
    }
    params = {
        "w_enc": w_dec.T.contiguous(),
        "b_enc": torch.zeros(width),
        "threshold": threshold,
        "w_dec": w_dec,
        "b_dec": torch.zeros(x.shape[-1]),
    }
    if folder is None:
        folder = Path(tempfile.mkdtemp()) / f"resid_post/layer_{layer}_width_{width}_l0_{int(l0)}"
    return load_sae(save_gemma_scope_folder(folder, config, params))
