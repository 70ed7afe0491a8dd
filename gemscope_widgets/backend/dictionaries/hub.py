"""Gemma Scope 2 folders from the Hugging Face hub, through the huggingface_hub cache.

Only the folder's ``config.json`` and its safetensors are fetched (or found in the cache when the hub is
offline: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``); a missing file says which ``hf download`` command
fetches it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gemscope_widgets.backend.dictionaries.folder import layer_file_index, load_sae_folder
from gemscope_widgets.backend.dictionaries.registry import AnySAE
from gemscope_widgets.backend.runtime import hub_offline
from gemscope_widgets.errors import SAELoadError


def _download_command(repo_id: str, folder: str, layered: bool | None) -> str:
    if layered:
        return f'hf download {repo_id} --include "{folder}/config.json" --include "{folder}/params_layer_*.safetensors"'
    return f"hf download {repo_id} {folder}/config.json {folder}/params.safetensors"


def _hub_file(repo_id: str, filename: str, folder: str, revision: str | None, layered: bool | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                local_files_only=offline,
            )
        )
    except GatedRepoError as exc:
        raise SAELoadError(
            f"{repo_id} is gated: accept its licence on huggingface.co and log in (hf auth login)."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise SAELoadError(f"No hub repository {repo_id!r} (or no access to it).") from exc
    except RevisionNotFoundError as exc:
        raise SAELoadError(f"{repo_id} has no revision {revision!r}.") from exc
    except LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set and it is" if offline else "the hub is unreachable and it is"
        raise SAELoadError(
            f"{repo_id}/{filename} is needed for the SAE {folder!r}, but {why} not in the local hub cache. "
            f"Download it first (online): {_download_command(repo_id, folder, layered)}"
        ) from exc
    except EntryNotFoundError as exc:
        raise SAELoadError(
            f"{repo_id} has no file {filename!r}: check the folder name {folder!r} "
            "(e.g. resid_post/layer_9_width_16k_l0_medium)."
        ) from exc
    except OSError as exc:  # network failures surface as OSError subclasses
        raise SAELoadError(f"Could not fetch {repo_id}/{filename}: {exc}") from exc


def _list_layer_files(repo_id: str, folder: str, revision: str | None, snapshot_folder: Path) -> list[str]:
    if hub_offline():
        names = [p.name for p in snapshot_folder.glob("params_layer_*.safetensors")]
    else:
        from huggingface_hub import HfApi

        try:
            entries = HfApi().list_repo_tree(repo_id, path_in_repo=folder, revision=revision)
            names = [Path(e.path).name for e in entries]
        except Exception as exc:  # any listing failure falls back to what is cached
            names = [p.name for p in snapshot_folder.glob("params_layer_*.safetensors")]
            if not names:
                raise SAELoadError(f"Could not list {repo_id}/{folder}: {exc}") from exc
    indexed = [(layer_file_index(n), n) for n in names]
    return [n for i, n in sorted((i, n) for i, n in indexed if i is not None)]


def load_sae_from_hub(repo_id: str, folder: str, *, revision: str | None = None) -> AnySAE:
    """Fetch (or reuse from the hub cache) ``config.json`` + params of ``repo_id/folder`` and load them."""
    folder = folder.strip("/")
    cfg_path = _hub_file(repo_id, f"{folder}/config.json", folder, revision, None)
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SAELoadError(f"{repo_id}/{folder}/config.json is not valid JSON: {exc}") from exc
    layered = (raw.get("type") in ("clt", "crosscoder")) or folder.split("/")[0] in ("clt", "crosscoder")
    if layered:
        names = _list_layer_files(repo_id, folder, revision, cfg_path.parent)
        if not names:
            raise SAELoadError(
                f"No params_layer_{{i}}.safetensors files for {repo_id}/{folder}. "
                f"Download them first: {_download_command(repo_id, folder, True)}"
            )
        for n in names:
            _hub_file(repo_id, f"{folder}/{n}", folder, revision, True)
    else:
        _hub_file(repo_id, f"{folder}/params.safetensors", folder, revision, False)
    return load_sae_folder(cfg_path.parent, name=folder, repo_id=repo_id)
