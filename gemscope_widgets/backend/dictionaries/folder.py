"""Gemma Scope 2 folders on disk: ``config.json`` plus ``params.safetensors`` (or ``params_layer_{i}`` files)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from gemscope_widgets.backend.dictionaries.config import read_folder_config
from gemscope_widgets.backend.dictionaries.registry import AnySAE, dictionary_class
from gemscope_widgets.backend.dictionaries.safetensors_io import write_safetensors
from gemscope_widgets.errors import SAELoadError

LAYER_FILE = re.compile(r"^params_layer_(\d+)\.safetensors$")


def load_sae_folder(folder: str | os.PathLike[str], *, name: str | None = None, repo_id: str | None = None) -> AnySAE:
    """Load a Gemma Scope 2 folder from disk (``config.json`` + safetensors), with the class of its ``type``."""
    folder = Path(folder).expanduser()
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise SAELoadError(f"No such SAE folder: {folder}.")
    layer_files = _layer_files(folder)
    cfg = read_folder_config(folder, n_layer_files=len(layer_files), name=name, repo_id=repo_id)
    return dictionary_class(cfg.kind).from_folder(folder, cfg, layer_files)


def save_gemma_scope_folder(
    path: str | os.PathLike[str],
    config: Mapping[str, Any],
    params: Mapping[str, Tensor] | list[Mapping[str, Tensor]],
) -> Path:
    """Write a folder in the Gemma Scope 2 layout: ``config.json`` plus ``params.safetensors``.

    A list of parameter dicts writes ``params_layer_{i}.safetensors`` instead (CLTs, crosscoders).
    Tensors are stored float32, contiguous, under lowercase keys.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2))
    if isinstance(params, list):
        for stale in folder.glob("params_layer_*.safetensors"):
            stale.unlink()
        for i, p in enumerate(params):
            write_safetensors(folder / f"params_layer_{i}.safetensors", p)
    else:
        write_safetensors(folder / "params.safetensors", params)
    return folder


def layer_file_index(name: str) -> int | None:
    """``params_layer_12.safetensors`` -> 12; None for any other file name."""
    m = LAYER_FILE.match(name)
    return int(m.group(1)) if m else None


def _layer_files(folder: Path) -> list[Path]:
    found = {}
    for p in folder.glob("params_layer_*.safetensors"):
        index = layer_file_index(p.name)
        if index is not None:
            found[index] = p
    if not found:
        return []
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
        raise SAELoadError(
            f"{folder} is missing params_layer_{missing[0]}.safetensors (found layers {sorted(found)}); "
            "download every params_layer_{i} file."
        )
    return [found[i] for i in range(len(found))]
