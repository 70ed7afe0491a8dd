"""Train a whole set of affine skip-transcoders (one per layer) and write it in the exact Gemma Scope 2 layout::

    <root>/transcoder_all/layer_{L}_width_{W}_l0_{S}_affine/{config.json, params.safetensors}
    <root>/training.json        (the recipe and each layer's TranscoderReport)

One activation pass collects every layer's MLP input and output into bfloat16 files on disk (:mod:`.mlp_pairs`)
and the layers are fitted a group at a time from them (:mod:`.transcoder_fit`), so memory holds one group's
data, not the whole collection. Every folder loads with ``load_sae`` like a downloaded one.
"""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gemscope_widgets.backend.dictionaries.loading import save_gemma_scope_folder
from gemscope_widgets.backend.gemma.model import GemmaModel
from gemscope_widgets.backend.memory import releases_buffers_on_error, return_freed_memory
from gemscope_widgets.backend.training.activations import default_training_texts, token_windows
from gemscope_widgets.backend.training.mlp_pairs import (
    MlpPairStore,
    collect_mlp_pairs,
    mlp_in_point,
    mlp_out_point,
    store_mlp_pairs,
)
from gemscope_widgets.backend.training.transcoder_fit import TranscoderReport, fit_transcoders
from gemscope_widgets.cache import cache_dir, staged_dir
from gemscope_widgets.errors import TrainingError

__all__ = [
    "MlpPairStore", "TranscoderReport", "collect_mlp_pairs", "fit_transcoders", "folder_name", "mlp_in_point",
    "mlp_out_point", "store_mlp_pairs", "train_transcoders", "transcoder_config", "width_label",
]


def width_label(width: int) -> str:
    """Gemma Scope 2's width spelling: 16384 -> ``16k``, 1536 -> ``1536``."""
    return f"{width // 1024}k" if width % 1024 == 0 else str(width)


def folder_name(layer: int, width: int, l0_label: str, affine: bool = True) -> str:
    """``layer_{L}_width_{W}_l0_{S}[_affine]``: the name of one transcoder folder under ``transcoder_all/``."""
    return f"layer_{layer}_width_{width_label(width)}_l0_{l0_label}" + ("_affine" if affine else "")



def transcoder_config(model_name: str, layer: int, width: int, l0: float) -> dict[str, Any]:
    """The ``config.json`` of one Gemma Scope 2 ``transcoder_all/..._affine`` folder of ``model_name``'s
    ``layer``, with the measured L0."""
    return {
        "hf_hook_point_in": mlp_in_point(layer),
        "hf_hook_point_out": mlp_out_point(layer),
        "width": int(width),
        "model_name": model_name,
        "architecture": "jump_relu",
        "l0": round(float(l0)),
        "affine_connection": True,
        "type": "transcoder",
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch_folder() -> Path:
    """A new folder for one training's activations, ``cache_dir("scratch")/mlp_pairs.{host}.{pid}.*``; folders
    that dead processes of this host left behind (a killed kernel cannot clean up) are removed first."""
    root = cache_dir("scratch")
    host = socket.gethostname().replace(".", "-")
    for old in root.glob(f"mlp_pairs.{host}.*"):
        pid = old.name.split(".")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"mlp_pairs.{host}.{os.getpid()}.", dir=root))


@releases_buffers_on_error
def train_transcoders(
    gm: Any | Callable[[], Any],
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
    ``out_dir/training.json`` with the recipe, the wall time in seconds (activations and fit) and each
    layer's :class:`TranscoderReport`. The root appears
    by one atomic rename. ``corpus`` defaults to the offline training texts; its documents are shuffled (by
    ``seed``) before they are cut into windows, so a budget of ``n_tokens`` samples the whole corpus rather than
    its first documents. Activations go to bfloat16 files in a scratch folder under ``cache_dir("scratch")``
    (``n_tokens × layers × 2 × d_model × 2`` bytes of disk, removed afterwards, also on an interrupt, and by the
    next training if the process was killed); memory
    holds one group of layers' data at a time (``layers_at_once``, a :func:`~.transcoder_fit.fit_transcoders`
    option).

    ``gm`` is the model, or a function of no arguments that returns one (for example the same weights loaded in
    bfloat16 for a fast activation pass): the function is called once, and its model is released as soon as the
    activations are on disk, so the fit does not hold a second copy of the model beside the caller's (about
    0.5 GB for the 270M in bfloat16).
    """
    if callable(gm) and not isinstance(gm, GemmaModel):
        gm = gm()
    layers = list(range(gm.n_layers)) if layers is None else sorted(set(int(layer) for layer in layers))
    bad = [layer for layer in layers if not 0 <= layer < gm.n_layers]
    if bad or not layers:
        raise TrainingError(f"layers {bad or layers} are outside the model's 0..{gm.n_layers - 1}.")
    if width < 2:
        raise TrainingError(f"width must be at least 2, got {width}.")
    start = time.perf_counter()
    texts = list(default_training_texts() if corpus is None else corpus)
    random.Random(seed).shuffle(texts)
    torch.manual_seed(seed)
    windows = token_windows(gm.tokenizer, texts, ctx, max_windows=n_tokens // (ctx - 1) + 2)
    scratch = scratch_folder()
    threads = torch.get_num_threads()
    try:
        pairs = store_mlp_pairs(gm, windows, layers, scratch, max_tokens=n_tokens, progress=progress)
        model_name = gm.name
        del gm  # the fit reads the activations from disk; a model loaded for the pass goes with this reference
        gc.collect()
        return_freed_memory()
        params, reports = fit_transcoders(
            pairs.inputs, pairs.outputs, width=width, target_l0=target_l0, steps=steps, batch_size=batch_size,
            layers=layers, seed=seed, progress=progress, **fit_options,
        )
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(scratch, ignore_errors=True)
    out = Path(out_dir)
    with staged_dir(out) as tmp:
        for layer, p, rep in zip(layers, params, reports):
            folder = tmp / "transcoder_all" / folder_name(layer, width, l0_label)
            save_gemma_scope_folder(folder, transcoder_config(model_name, layer, width, rep.l0), p)
        recipe = {"width": width, "target_l0": target_l0, "n_tokens": pairs.n, "steps": steps,
                  "batch_size": batch_size, "ctx": ctx, "seed": seed, **fit_options}
        (tmp / "training.json").write_text(
            json.dumps({"model": model_name, "recipe": recipe, "seconds": round(time.perf_counter() - start, 1),
                        "layers": [asdict(r) for r in reports]}, indent=2)
        )
    del params, pairs
    gc.collect()
    return_freed_memory()  # the fit's buffers, before whatever the caller does next beside the loaded set
    return out
