"""``load_sae``: Gemma Scope 2 folders from disk, from the Hugging Face hub cache, or by SAELens name.

Only ``config.json`` and ``.safetensors`` files are read, over a memory map (:mod:`.safetensors_io`).
Folders are read by :mod:`.folder` into the class registered for their ``type`` (:mod:`.registry`);
hub access is :mod:`.hub`; names are parsed by :mod:`gemscope_widgets.backend.gemma.names`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gemscope_widgets.backend.dictionaries.folder import load_sae_folder, save_gemma_scope_folder
from gemscope_widgets.backend.dictionaries.hub import load_sae_from_hub
from gemscope_widgets.backend.dictionaries.registry import AnySAE
from gemscope_widgets.backend.gemma.names import GEMMA_SIZES, is_hub_id, resolve_saelens_name, split_scope_path
from gemscope_widgets.backend.runtime import resolve_device
from gemscope_widgets.errors import SAELoadError

# load_sae_folder and save_gemma_scope_folder are imported from here by most callers.
__all__ = ["AnySAE", "load_sae", "load_sae_folder", "load_sae_from_hub", "save_gemma_scope_folder"]


def load_sae(
    repo_or_path: str | os.PathLike[str],
    folder: str | None = None,
    *,
    device: Any = None,
    revision: str | None = None,
) -> AnySAE:
    """Load any Gemma Scope 2 SAE, transcoder, CLT or crosscoder.

    Accepts a local folder (``load_sae("path/to/layer_9_width_16k_l0_medium")``), a local root plus a
    folder, a hub repo plus a folder (``load_sae("google/gemma-scope-2-270m-pt",
    "resid_post/layer_9_width_16k_l0_medium")``, offline-aware via the huggingface_hub cache), or a
    SAELens release plus SAE id (``load_sae("gemma-scope-2-270m-pt-res", "layer_9_width_16k_l0_medium")``).
    """
    target = None if device is None else resolve_device(device, error=SAELoadError)
    sae = _load(repo_or_path, folder, revision)
    sae.eval()
    return sae.to(target) if target is not None else sae


def _load(repo_or_path: str | os.PathLike[str], folder: str | None, revision: str | None) -> AnySAE:
    text = os.fspath(repo_or_path)
    local = Path(text).expanduser()
    if folder is None:
        if local.exists():
            return load_sae_folder(local)
        scope_path = split_scope_path(text)
        if scope_path is not None:
            return load_sae_from_hub(*scope_path, revision=revision)
        raise SAELoadError(
            f"No such SAE folder: {text}. Pass a local Gemma Scope 2 folder, or a hub repo and folder, e.g. "
            'load_sae("google/gemma-scope-2-270m-pt", "resid_post/layer_9_width_16k_l0_medium").'
        )
    if local.is_dir():
        return load_sae_folder(local / folder, name=folder)
    saelens = resolve_saelens_name(text, folder)
    if saelens is not None:
        return load_sae_from_hub(*saelens, revision=revision)
    if text.startswith("gemma-scope-2-"):
        raise SAELoadError(
            f"Unknown SAELens release {text!r}. Known: gemma-scope-2-{{{','.join(GEMMA_SIZES)}}}-{{pt,it}}-"
            "{res,mlp,att,transcoders}[-all]; or pass the hub repo, e.g. google/gemma-scope-2-270m-pt."
        )
    if is_hub_id(text) and not local.exists():
        return load_sae_from_hub(text, folder, revision=revision)
    raise SAELoadError(f"{text!r} is neither a local folder nor a hub repo id (owner/name).")
