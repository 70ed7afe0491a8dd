"""Train a JumpReLU SAE on any Gemma 3 layer and save it in the exact Gemma Scope 2 layout.

The steps live in their own modules: :mod:`.activations` (token windows, activations at the hook point),
:mod:`.fit` (the JumpReLU fit, Gemma Scope 2's recipe). This module ties them together and writes the folder
(``config.json`` + ``params.safetensors`` + ``training.json``), which ``load_sae`` reads like any GS2 SAE.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gemscope_widgets.backend.analysis.matryoshka import MATRYOSHKA_KEY
from gemscope_widgets.backend.dictionaries.folder import save_gemma_scope_folder
from gemscope_widgets.backend.gemma import sites
from gemscope_widgets.backend.memory import releases_buffers_on_error, return_freed_memory
from gemscope_widgets.backend.training.activations import collect_activations, default_training_texts, token_windows
from gemscope_widgets.backend.training.fit import fit_jumprelu
from gemscope_widgets.cache import cache_dir, staged_dir
from gemscope_widgets.errors import TrainingError

SITES = sites.SAE_SITES


def hook_point(site: str, layer: int) -> str:
    """The Gemma Scope 2 ``hf_hook_point_in`` for a residual / MLP-out / attention-out SAE."""
    try:
        return sites.hook_point(site, layer)
    except KeyError:
        raise TrainingError(f"unknown SAE site {site!r}; use one of {', '.join(SITES)}.") from None


def gs2_config(gm: Any, point: str, width: int, l0: float) -> dict[str, Any]:
    """The ``config.json`` a Gemma Scope 2 SAE folder carries, with the measured L0."""
    return {
        "hf_hook_point_in": point,
        "hf_hook_point_out": point,
        "width": int(width),
        "model_name": gm.name,
        "architecture": "jump_relu",
        "l0": round(float(l0)),
        "affine_connection": False,
        "type": "sae",
    }


@releases_buffers_on_error
def train_sae(
    gm: Any,
    layer: int,
    *,
    site: str = "resid_post",
    width: int = 4096,
    target_l0: float = 48,
    corpus: Sequence[str] | None = None,
    n_tokens: int = 150_000,
    steps: int | None = None,
    batch_size: int = 1024,
    ctx: int = 128,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    **fit_options: Any,
) -> Path:
    """Train a JumpReLU SAE on ``gm``'s ``layer`` and write a Gemma Scope 2 folder; return its path.

    ``corpus`` defaults to the offline corpus that ships with Python. ``steps`` defaults to two passes
    over the ``n_tokens`` collected activations. The activation pass runs wherever ``gm`` is; ``device``
    picks where the SAE itself is fitted (default: CPU). Extra keywords go to :func:`fit_jumprelu`;
    ``matryoshka_groups=(128, 512, 1024, width)`` trains the nested prefixes as a Matryoshka SAE and records
    them in ``config.json`` under :data:`MATRYOSHKA_KEY`.
    The folder loads with ``load_sae`` like any GS2 SAE; its ``training.json`` holds the
    :class:`~.fit.TrainingReport`, the target, the seed and the wall time in seconds.
    """
    if not 0 <= layer < gm.n_layers:
        raise TrainingError(f"layer {layer} is outside the model's 0..{gm.n_layers - 1}.")
    point = hook_point(site, layer)
    if width < 2:
        raise TrainingError(f"width must be at least 2, got {width}.")
    start = time.perf_counter()
    if corpus is None:
        corpus = default_training_texts()
    torch.manual_seed(seed)
    windows = token_windows(gm.tokenizer, corpus, ctx, max_windows=n_tokens // (ctx - 1) + 2)
    acts = collect_activations(gm, point, windows, max_tokens=n_tokens, progress=progress)
    if len(acts) < batch_size:
        batch_size = len(acts)
    if steps is None:
        steps = max(1, 2 * len(acts) // batch_size)
    params, report = fit_jumprelu(
        acts, width=width, target_l0=target_l0, steps=steps, batch_size=batch_size, seed=seed,
        progress=progress, device=device, **fit_options,
    )
    del acts  # the activations (n_tokens × d_model floats) go now, and their pages back to the system
    return_freed_memory()
    config = gs2_config(gm, point, width, report.l0)
    if fit_options.get("matryoshka_groups") is not None:
        config[MATRYOSHKA_KEY] = [int(k) for k in fit_options["matryoshka_groups"]]
    if out_dir is None:
        out_dir = cache_dir("saes") / f"{gm.name.split('/')[-1]}_{site}_layer_{layer}_width_{width}_seed_{seed}"
    out = Path(out_dir)
    with staged_dir(out) as tmp:
        save_gemma_scope_folder(tmp, config, params)
        seconds = round(time.perf_counter() - start, 1)  # activations and fit
        record = {**report.__dict__, "target_l0": target_l0, "seed": seed, "seconds": seconds}
        (tmp / "training.json").write_text(json.dumps(record))
    return out
