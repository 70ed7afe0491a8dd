"""``load_sae``: Gemma Scope 2 folders from disk, from the Hugging Face hub cache, or by SAELens name.

Only ``config.json`` and ``.safetensors`` files are read. The safetensors header is parsed here and
the tensors are built over a private memory map of the file, so a 262k-wide SAE "loads" without
reading gigabytes; pages are read when used, and ``.to("cuda")`` copies.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gemscope_widgets.backend.dictionaries.sae import (
    Crosscoder,
    CrossLayerTranscoder,
    JumpReLUSAE,
    SAEConfig,
    validate_slot_shapes,
)
from gemscope_widgets.errors import SAELoadError

AnySAE = JumpReLUSAE | CrossLayerTranscoder | Crosscoder

REQUIRED_KEYS = ("w_enc", "b_enc", "threshold", "w_dec", "b_dec")
SKIP_KEY = "affine_skip_connection"
SITE_FOLDERS = (
    "resid_post",
    "mlp_out",
    "attn_out",
    "transcoder",
    "resid_post_all",
    "mlp_out_all",
    "attn_out_all",
    "transcoder_all",
    "clt",
    "crosscoder",
)
GEMMA_SIZES = ("270m", "1b", "4b", "12b", "27b")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024
_LAYER_FILE = re.compile(r"^params_layer_(\d+)\.safetensors$")
_BRACES = re.compile(r"\{([^{}]*)\}")
_LAYER_IN_HOOK = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_SAELENS_RELEASE = re.compile(r"^gemma-scope-2-(270m|1b|4b|12b|27b)-(pt|it)-(res|mlp|att|transcoders)(-all)?$")
_SAELENS_SITE = {"res": "resid_post", "mlp": "mlp_out", "att": "attn_out", "transcoders": "transcoder"}
_HUB_REPO = re.compile(r"^[\w.-]+/[\w.-]+$")


# ---------------------------------------------------------------- safetensors, memory-mapped


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file, backed by a private (copy-on-write) memory map."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise SAELoadError(f"{path} is not a .safetensors file; only safetensors weights are loaded.")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(8)
            n = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 0 < n <= min(_MAX_HEADER, size - 8):
                raise SAELoadError(
                    f"{path} is not a valid safetensors file (bad header length); re-download or re-save it."
                )
            header_bytes = fh.read(n)
    except OSError as exc:
        raise SAELoadError(f"Cannot read {path}: {exc}") from exc
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAELoadError(f"{path} is not a valid safetensors file (unreadable header): {exc}") from exc
    if not isinstance(header, dict):
        raise SAELoadError(f"{path} is not a valid safetensors file (header is not a JSON object).")
    header.pop("__metadata__", None)
    base = 8 + n
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    tensors: dict[str, Tensor] = {}
    for key, info in header.items():
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SAELoadError(f"{path}: tensor {key!r} has a malformed header entry {info!r}.") from exc
        itemsize = torch.empty(0, dtype=dtype).element_size()
        numel = 1
        for s in shape:
            numel *= s
        if end - start != numel * itemsize or start < 0 or base + end > size:
            raise SAELoadError(
                f"{path}: tensor {key!r} does not fit in the file (truncated or corrupt download?); "
                "delete it and download it again."
            )
        offset = base + start
        if offset % itemsize == 0:
            strides = []
            acc = 1
            for s in reversed(shape):
                strides.append(acc)
                acc *= s
            t = torch.empty(0, dtype=dtype).set_(storage, offset // itemsize, shape, tuple(reversed(strides)))
        else:  # misaligned writer: copy this one tensor
            raw = bytes(storage[offset : offset + numel * itemsize])
            t = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
        tensors[key] = t
    return tensors


def save_gemma_scope_folder(
    path: str | os.PathLike[str],
    config: Mapping[str, Any],
    params: Mapping[str, Tensor] | list[Mapping[str, Tensor]],
) -> Path:
    """Write a folder in the Gemma Scope 2 layout: ``config.json`` plus ``params.safetensors``.

    A list of parameter dicts writes ``params_layer_{i}.safetensors`` instead (CLTs, crosscoders).
    Tensors are stored float32, contiguous, under lowercase keys.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)

    def clean(p: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key, value in p.items():
            low = key.lower()
            if low in out:
                raise SAELoadError(f"Two parameters map to the same lowercase key {low!r}.")
            out[low] = value.detach().to("cpu", torch.float32).contiguous()
        return out

    (folder / "config.json").write_text(json.dumps(dict(config), indent=2))
    if isinstance(params, list):
        for stale in folder.glob("params_layer_*.safetensors"):
            stale.unlink()
        for i, p in enumerate(params):
            save_file(clean(p), str(folder / f"params_layer_{i}.safetensors"), metadata={"format": "pt"})
    else:
        save_file(clean(params), str(folder / "params.safetensors"), metadata={"format": "pt"})
    return folder


# ---------------------------------------------------------------- config parsing


def normalise_model_name(name: Any) -> str | None:
    """``gemma-v3-270m-pt`` / ``google/gemma-3-270m-pt`` -> ``google/gemma-3-270m`` (the HF id); others kept."""
    if not isinstance(name, str) or not name.strip():
        return None
    name = name.strip().replace("gemma-v3-", "gemma-3-")
    if "/" not in name and name.startswith("gemma-"):
        name = "google/" + name
    # The 270m base model is published without the -pt suffix.
    return re.sub(r"^google/gemma-3-270m-pt$", "google/gemma-3-270m", name)


def _expand(hook: str, n_files: int, name: str) -> tuple[str, ...]:
    match = _BRACES.search(hook)
    if match is None:
        return (hook,)
    body = match.group(1).strip()
    if body == "all":
        layers = list(range(n_files))
    else:
        try:
            layers = [int(p) for p in body.split(",")]
        except ValueError:
            raise SAELoadError(f"{name}: cannot expand hook point {hook!r} (unknown placeholder {{{body}}}).") from None
    return tuple(hook[: match.start()] + str(layer) + hook[match.end() :] for layer in layers)


def _layers(hooks: tuple[str, ...], name: str) -> tuple[int, ...]:
    out = []
    for h in hooks:
        m = _LAYER_IN_HOOK.search(h)
        if m is None:
            raise SAELoadError(f"{name}: hook point {h!r} names no layer (expected 'model.layers.N.…').")
        out.append(int(m.group(1)))
    return tuple(out)


def _site(kind: str, hook_in: str, name: str) -> str:
    if kind in ("transcoder", "clt", "crosscoder"):
        return kind
    if hook_in.endswith("self_attn.o_proj.input"):
        return "attn_out"
    if hook_in.endswith("post_feedforward_layernorm.output"):
        return "mlp_out"
    if re.search(r"layers\.\d+\.output$", hook_in):
        return "resid_post"
    raise SAELoadError(
        f"{name}: hook point {hook_in!r} is not a Gemma Scope 2 site (resid_post: model.layers.N.output, "
        "mlp_out: ….post_feedforward_layernorm.output, attn_out: ….self_attn.o_proj.input)."
    )


def _kind(raw: Mapping[str, Any], folder: Path, n_layer_files: int) -> str:
    kind = raw.get("type")
    if kind is None:  # older uploads: infer as SAELens does
        top = folder.parent.name
        if top in ("clt", "crosscoder"):
            kind = top
        elif n_layer_files:
            kind = "clt" if "{all}" in str(raw.get("hf_hook_point_in", "")) else "crosscoder"
        elif raw.get("hf_hook_point_in") != raw.get("hf_hook_point_out") or top.startswith("transcoder"):
            kind = "transcoder"
        else:
            kind = "sae"
    if kind not in ("sae", "transcoder", "clt", "crosscoder"):
        raise SAELoadError(
            f"{folder}/config.json has type {kind!r}; known Gemma Scope 2 types are sae, transcoder, clt, crosscoder."
        )
    return kind


def _display_name(folder: Path, given: str | None) -> str:
    if given:
        return given.strip("/")
    if folder.parent.name in SITE_FOLDERS:
        return f"{folder.parent.name}/{folder.name}"
    return folder.name


def _read_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise SAELoadError(
            f"{folder} has no config.json. A Gemma Scope 2 folder holds config.json plus params.safetensors "
            "(or params_layer_{i}.safetensors); download both."
        )
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAELoadError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise SAELoadError(f"{cfg_path} must hold a JSON object.")
    for key in ("hf_hook_point_in",):
        if not isinstance(raw.get(key), str):
            raise SAELoadError(f"{cfg_path} has no {key!r}; it is not a Gemma Scope 2 config.")
    raw.setdefault("hf_hook_point_out", raw["hf_hook_point_in"])
    return raw


def _layer_files(folder: Path) -> list[Path]:
    found = {}
    for p in folder.glob("params_layer_*.safetensors"):
        m = _LAYER_FILE.match(p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        return []
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
        raise SAELoadError(
            f"{folder} is missing params_layer_{missing[0]}.safetensors (found layers {sorted(found)}); "
            "download every params_layer_{i} file."
        )
    return [found[i] for i in range(len(found))]


def _check_keys(params: Mapping[str, Tensor], where: str) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in params]
    if missing:
        upper = [k for k in params if k.lower() in REQUIRED_KEYS and k not in REQUIRED_KEYS]
        hint = f" (found {upper}: keys must be lowercase as in Gemma Scope 2)" if upper else ""
        raise SAELoadError(f"{where} lacks {missing}{hint}; it has {sorted(params)}.")


def _as_fp32(params: dict[str, Tensor]) -> dict[str, Tensor]:
    # Gemma Scope 2 ships float32; other float dtypes are converted once here (this copies).
    return {k: (v if v.dtype == torch.float32 else v.to(torch.float32)) for k, v in params.items()}


def load_sae_folder(folder: str | os.PathLike[str], *, name: str | None = None, repo_id: str | None = None) -> AnySAE:
    """Load a Gemma Scope 2 folder from disk (``config.json`` + safetensors)."""
    folder = Path(folder).expanduser()
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise SAELoadError(f"No such SAE folder: {folder}.")
    raw = _read_config(folder)
    display = _display_name(folder, name)
    layer_files = _layer_files(folder)
    kind = _kind(raw, folder, len(layer_files))
    hook_in, hook_out = str(raw["hf_hook_point_in"]), str(raw["hf_hook_point_out"])
    common = {
        "kind": kind,
        "hook_in": hook_in,
        "hook_out": hook_out,
        "l0": float(raw["l0"]) if isinstance(raw.get("l0"), (int, float)) else None,
        "model_name": normalise_model_name(raw.get("model_name")),
        "name": display,
        "repo_id": repo_id,
        "path": str(folder),
        "raw": raw,
    }
    if kind in ("sae", "transcoder"):
        return _load_single(folder, raw, common)
    return _load_multi(folder, raw, common, layer_files)


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


def _load_single(folder: Path, raw: Mapping[str, Any], common: dict[str, Any]) -> JumpReLUSAE:
    path = _params_file(folder)
    params = _as_fp32(read_safetensors(path))
    _check_keys(params, str(path))
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
    if raw.get("affine_connection") and skip is None:
        raise SAELoadError(f"{folder}/config.json says affine_connection but {path.name} has no {SKIP_KEY}.")
    _check_width(raw, width, folder)
    if common["kind"] == "sae" and d_in != d_out:
        raise SAELoadError(f"{path}: an SAE must reconstruct its input, but d_in={d_in} and d_out={d_out}.")
    hooks_in = _expand(common["hook_in"], 1, common["name"])
    hooks_out = _expand(common["hook_out"], 1, common["name"])
    config = SAEConfig(
        site=_site(common["kind"], common["hook_in"], common["name"]),
        hook_points_in=hooks_in,
        hook_points_out=hooks_out,
        layers_in=_layers(hooks_in, common["name"]),
        layers_out=_layers(hooks_out, common["name"]),
        width=int(width),
        d_in=int(d_in),
        d_out=int(d_out),
        affine=skip is not None,
        **common,
    )
    return JumpReLUSAE(
        config,
        w_enc=w_enc,
        b_enc=params["b_enc"],
        threshold=params["threshold"],
        w_dec=w_dec,
        b_dec=params["b_dec"],
        affine_skip_connection=skip,
    )


def _check_width(raw: Mapping[str, Any], width: int, folder: Path) -> None:
    said = raw.get("width")
    if isinstance(said, int) and said != width:
        raise SAELoadError(
            f"{folder}/config.json says width {said} but the weights hold {width} features; "
            "the config and params files come from different SAEs."
        )


def _load_multi(folder: Path, raw: Mapping[str, Any], common: dict[str, Any], files: list[Path]) -> AnySAE:
    kind, display = common["kind"], common["name"]
    if not files:
        if (folder / "params.safetensors").is_file():
            raise SAELoadError(
                f"{folder}: a {kind} stores one params_layer_{{i}}.safetensors per layer, but only "
                "params.safetensors was found."
            )
        raise SAELoadError(f"{folder}: no params_layer_{{i}}.safetensors files for this {kind}; download them.")
    slots = []
    for path in files:
        params = _as_fp32(read_safetensors(path))
        _check_keys(params, str(path))
        slots.append(params)
    hooks_in = _expand(common["hook_in"], len(files), display)
    hooks_out = _expand(common["hook_out"], len(files), display)
    if len(hooks_in) != len(files) or len(hooks_out) != len(files):
        raise SAELoadError(
            f"{display}: config.json names {len(hooks_in)} hook points ({common['hook_in']}) but there are "
            f"{len(files)} params_layer files."
        )
    d_in = int(slots[0]["w_enc"].shape[0]) if slots[0]["w_enc"].dim() == 2 else -1
    validate_slot_shapes(kind, display, slots, d_in)
    shared = kind == "crosscoder" and slots[0]["w_dec"].dim() == 2
    width = int(slots[0]["w_enc"].shape[1]) if shared else sum(int(s["w_enc"].shape[1]) for s in slots)
    _check_width(raw, width, folder)
    affine = [SKIP_KEY in s for s in slots]
    if any(affine) and not all(affine):
        raise SAELoadError(f"{display}: only some params_layer files have {SKIP_KEY}.")
    if raw.get("affine_connection") and not all(affine):
        raise SAELoadError(f"{folder}/config.json says affine_connection but the files have no {SKIP_KEY}.")
    config = SAEConfig(
        site=kind,
        hook_points_in=hooks_in,
        hook_points_out=hooks_out,
        layers_in=_layers(hooks_in, display),
        layers_out=_layers(hooks_out, display),
        width=width,
        d_in=d_in,
        d_out=d_in,
        affine=all(affine),
        **common,
    )
    cls = CrossLayerTranscoder if kind == "clt" else Crosscoder
    return cls(config, slots)


# ---------------------------------------------------------------- hub and SAELens names


def resolve_saelens_name(release: str, sae_id: str) -> tuple[str, str] | None:
    """``("gemma-scope-2-270m-pt-res", "layer_9_width_16k_l0_medium")`` -> ``(repo_id, folder)``, else None."""
    m = _SAELENS_RELEASE.match(release)
    if m is None:
        return None
    size, variant, site, all_suffix = m.groups()
    site_folder = _SAELENS_SITE[site] + ("_all" if all_suffix else "")
    sae_id = sae_id.strip("/")
    head, _, rest = sae_id.partition("/")
    if rest and head in SITE_FOLDERS:
        sae_id = rest  # SAELens keeps the transcoder/ prefix in the id; accept it with or without
    return f"google/gemma-scope-2-{size}-{variant}", f"{site_folder}/{sae_id}"


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in ("1", "ON", "YES", "TRUE")


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

    offline = _offline()
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
    if _offline():
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
    return sorted((n for n in names if _LAYER_FILE.match(n)), key=lambda n: int(_LAYER_FILE.match(n).group(1)))  # type: ignore[union-attr]


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


def _resolve_device(device: Any) -> torch.device | None:
    if device is None:
        return None
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    target = _resolve_device(device)
    sae = _load(repo_or_path, folder, revision)
    sae.eval()
    return sae.to(target) if target is not None else sae


def _load(repo_or_path: str | os.PathLike[str], folder: str | None, revision: str | None) -> AnySAE:
    text = os.fspath(repo_or_path)
    local = Path(text).expanduser()
    if folder is None:
        if local.exists():
            return load_sae_folder(local)
        m = re.match(r"^(google/gemma-scope-2-[\w.-]+)/(.+)$", text)
        if m:
            return load_sae_from_hub(m.group(1), m.group(2), revision=revision)
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
    if _HUB_REPO.match(text) and not local.exists():
        return load_sae_from_hub(text, folder, revision=revision)
    raise SAELoadError(f"{text!r} is neither a local folder nor a hub repo id (owner/name).")
