"""Feature statistics on disk: the folder format, the identity of a scan (its cache key) and the cache lookup.

A statistics folder holds ``stats.json`` (metadata, the cache key, imported example lists), ``stats.safetensors``
(every array) and ``labels.json`` (the user's own feature labels); an unfinished scan adds ``checkpoint.json`` +
``checkpoint.safetensors``. Only JSON and safetensors are ever read; the JSON is written last, so a folder with a
``stats.json`` always has the tensors that belong to it.

A scan's identity is everything that can change its result: every weight of the SAE and of the model (a SHA-256
of each tensor's bytes, remembered per tensor until it is modified in place or replaced), the tokenizer's
special ids, the corpus (:func:`~gemscope_widgets.backend.stats.corpus.corpus_fingerprint`), the scan parameters
and :data:`FORMAT_VERSION`. A folder whose stored key or format differs is never used: the scan is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from gemscope_widgets.cache import cache_dir, key_digest, name_slug
from gemscope_widgets.errors import StatsCacheError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats
    from gemscope_widgets.backend.stats.scan_state import ScanParams

FORMAT_VERSION = 2
"""Bumped whenever the folder layout or the meaning of a stored number changes; other versions are rebuilt."""
META_FILE = "stats.json"
TENSOR_FILE = "stats.safetensors"
LABEL_FILE = "labels.json"
CKPT_META = "checkpoint.json"
CKPT_TENSORS = "checkpoint.safetensors"
EMPTY_HIST_EXP = -(2**30)
"""``hist_exp`` of a feature that never fired (its histogram has no scale yet)."""
KINDS = ("top", "quantile")


# ---------------------------------------------------------------------- identity


_DIGESTS: dict[int, tuple[weakref.ref[Any], tuple[Any, ...], str]] = {}


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (moved to the CPU once; bfloat16 read as its raw bits).

    Remembered per tensor object while its storage, shape and in-place version counter are unchanged, so asking
    again is free and any in-place change (``sae.threshold[3] = 9.0``, an optimizer step, ``load_state_dict``)
    or replacement is noticed. Writes through ``tensor.data`` bypass PyTorch's version counter: after such a
    write call :func:`forget_digests`.
    """
    try:
        version = t._version
    except RuntimeError:  # inference tensors carry no version counter: never remembered
        version = None
    stamp = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), str(t.dtype), str(t.device), version)
    known = _DIGESTS.get(id(t))
    if version is not None and known is not None and known[0]() is t and known[1] == stamp:
        return known[2]
    flat = t.detach().reshape(-1).contiguous().cpu()
    raw = flat.view(torch.uint8) if flat.numel() else flat.to(torch.uint8)
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(raw.numpy().data)
    digest = h.hexdigest()
    if version is not None:
        key = id(t)
        _DIGESTS[key] = (weakref.ref(t, lambda _r: _DIGESTS.pop(key, None)), stamp, digest)
    return digest


def forget_digests() -> None:
    """Drop every remembered tensor hash (the next identity reads every weight again)."""
    _DIGESTS.clear()


def _weights_digest(module: torch.nn.Module) -> str:
    """One hash over every parameter and buffer of ``module`` (a tensor shared by two names counts once)."""
    h = hashlib.sha256()
    seen: set[tuple[int, int]] = set()
    named = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    for name, t in sorted(named, key=lambda kv: kv[0]):
        if t is None:
            continue
        if t.device.type == "meta":
            raise StatsCacheError(
                f"{name} is on the meta device (not loaded): its statistics cannot be identified or computed. "
                "Load the model with every layer on a real device (or offloaded through accelerate)."
            )
        key = (t.data_ptr(), t.numel())
        h.update(name.encode())
        h.update(b"=" if key in seen else tensor_digest(t).encode())
        seen.add(key)
    return h.hexdigest()[:32]


def sae_identity(sae: Any) -> dict[str, Any]:
    """Name, width, kind, hook points and a hash of every weight of the SAE (all bytes of all buffers)."""
    c = sae.config
    return {
        "name": c.name,
        "width": int(sae.width),
        "kind": str(getattr(c, "kind", "")),
        "hooks_in": list(c.hook_points_in),
        "weights": _weights_digest(sae),
    }


def model_identity(gm: GemmaModel) -> dict[str, Any]:
    """Name, dtype, the tokenizer's special ids and a hash of every weight of the model."""
    tok = gm.tokenizer
    return {
        "name": gm.name,
        "dtype": str(gm.dtype),
        "tokenizer": [len(tok), tok.bos_token_id, tok.pad_token_id],
        "weights": _weights_digest(gm.model),
    }


def cache_key(gm: GemmaModel, sae: Any, texts: Sequence[str], params: ScanParams) -> dict[str, Any]:
    """The fields that identify a scan: model, SAE, corpus fingerprint, parameters, format."""
    from gemscope_widgets.backend.stats.corpus import corpus_fingerprint

    return {
        "model": model_identity(gm),
        "sae": sae_identity(sae),
        "corpus": corpus_fingerprint(texts),
        "params": params.to_json(),
        "format": FORMAT_VERSION,
    }


def cache_folder(key: Mapping[str, Any]) -> Path:
    """``cache_dir("stats", "<sae name>-<hash of key>")`` (:func:`~gemscope_widgets.cache.key_digest`)."""
    return cache_dir("stats", f"{name_slug(key['sae']['name'])}-{key_digest(key)}")


def find_cached(gm: GemmaModel, sae: Any, corpus: Any = None, params: ScanParams | None = None) -> FeatureStats | None:
    """Statistics already on disk for this model + SAE + corpus + parameters (defaults when None), without
    scanning; ``None`` when there are none or they do not match (a damaged folder is left for
    :meth:`FeatureStats.load_or_scan` to rebuild)."""
    from gemscope_widgets.backend.stats.corpus import load_corpus
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats
    from gemscope_widgets.backend.stats.scan_state import ScanParams

    key = cache_key(gm, sae, load_corpus(corpus), params or ScanParams())
    folder = cache_folder(key)
    if not (folder / META_FILE).exists():
        return None
    try:
        return FeatureStats.load(folder, expect=key)
    except StatsCacheError:
        return None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


# ---------------------------------------------------------------------- folder format


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as UTF-8 JSON atomically (a temporary file renamed over ``path``)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def write_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write CPU copies of ``tensors`` as safetensors atomically."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def write_folder(folder: Path, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                 labels: Mapping[int, str]) -> None:
    """Tensors first, then ``stats.json`` (with :data:`FORMAT_VERSION`), then ``labels.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tensors(tensors, folder / TENSOR_FILE)
    write_json(folder / META_FILE, {**meta, "format": FORMAT_VERSION})
    write_labels(folder, labels)


def write_labels(folder: Path, labels: Mapping[int, str]) -> None:
    write_json(folder / LABEL_FILE, {str(k): v for k, v in sorted(labels.items())})


def read_folder(folder: Path, expect: Mapping[str, Any] | None = None
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[int, str]]:
    """``(meta, tensors, labels)`` of a statistics folder; :class:`StatsCacheError` when it is missing, damaged,
    of another format version, or (with ``expect``) of another cache key."""
    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StatsCacheError(f"No feature statistics in {folder} ({META_FILE} is missing).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StatsCacheError(f"{meta_path} is not valid JSON ({exc}); delete the folder to rebuild.") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise StatsCacheError(
            f"{meta_path} is not a format-{FORMAT_VERSION} feature statistics file (found format {found!r}, "
            "written by another version of gemscope_widgets)."
        )
    for name in ("sae_name", "width", "source"):
        if name not in meta:
            raise StatsCacheError(f"{meta_path} lacks the field {name!r}.")
    if expect is not None:
        stored = meta.get("key") or {}
        for name, value in _jsonable(dict(expect)).items():
            if stored.get(name) != value:
                raise StatsCacheError(f"The statistics in {folder} belong to another {name}.")
    try:
        tensors = load_file(str(folder / TENSOR_FILE)) if (folder / TENSOR_FILE).exists() else {}
    except Exception as exc:  # safetensors raises several types on a damaged file
        raise StatsCacheError(f"{folder / TENSOR_FILE} cannot be read ({exc}).") from exc
    _validate(tensors, meta, int(meta["width"]), folder)
    labels: dict[int, str] = {}
    label_path = folder / LABEL_FILE
    if label_path.exists():
        try:
            labels = {int(k): str(v) for k, v in json.loads(label_path.read_text("utf-8")).items()}
        except (ValueError, AttributeError) as exc:
            raise StatsCacheError(f"{label_path} is not a JSON object of labels ({exc}).") from exc
    return meta, tensors, labels


def remove_result(folder: Path) -> None:
    """Delete a folder's result files (not its labels), so a rebuild starts clean."""
    for name in (META_FILE, TENSOR_FILE):
        (folder / name).unlink(missing_ok=True)


def remove_checkpoint(folder: Path) -> None:
    for name in (CKPT_META, CKPT_TENSORS):
        (folder / name).unlink(missing_ok=True)


def write_checkpoint(folder: Path, key: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                     progress: Mapping[str, Any]) -> None:
    """The scanner's state (CPU copies) and its position, tied to the scan's key."""
    write_tensors(state, folder / CKPT_TENSORS)
    write_json(folder / CKPT_META, {"key": _jsonable(dict(key)), "format": FORMAT_VERSION, **progress})


def read_checkpoint(folder: Path, key: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """``(progress, state)`` of this scan's checkpoint, ``None`` when there is none;
    :class:`StatsCacheError` when it belongs to another scan or is damaged."""
    meta_path = folder / CKPT_META
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
        state = load_file(str(folder / CKPT_TENSORS))
    except Exception as exc:
        raise StatsCacheError(f"the checkpoint cannot be read ({exc})") from exc
    if meta.get("format") != FORMAT_VERSION or meta.get("key") != _jsonable(dict(key)):
        raise StatsCacheError("the checkpoint belongs to another scan")
    return meta, state


def _validate(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], width: int, folder: Path) -> None:
    for name in ("density", "max_act", "n_fired", "hist_exp"):
        if name in tensors and tuple(tensors[name].shape) != (width,):
            raise StatsCacheError(
                f"{folder}: tensor {name} has shape {tuple(tensors[name].shape)}, expected ({width},)."
            )
    if meta.get("source") != "scan":
        return
    params = meta.get("params") or {}
    required = ["density", "max_act", "hist_counts", "hist_exp", "doc_ids", "doc_ptr", "doc_tokens"]
    kinds = ["top"] + (["quantile"] if params.get("n_quantile") else [])
    required += [f"{k}_{n}" for k in kinds for n in ("value", "doc", "pos", "window")]
    missing = [n for n in required if n not in tensors]
    if missing:
        raise StatsCacheError(f"{folder}: the scan result lacks tensors {missing}.")
    if "vocab" not in meta or not isinstance(meta["vocab"], list):
        raise StatsCacheError(f"{folder}: the scan result lacks its token vocabulary.")
    for kind in kinds:
        k = params.get("top_k") if kind == "top" else params.get("n_quantile")
        if tuple(tensors[f"{kind}_doc"].shape) != (width, k):
            raise StatsCacheError(f"{folder}: {kind} examples have shape {tuple(tensors[f'{kind}_doc'].shape)}, "
                                  f"expected ({width}, {k}).")
    if tensors["hist_counts"].shape[0] != width:
        raise StatsCacheError(f"{folder}: the histograms are for {tensors['hist_counts'].shape[0]} features.")
    if int(tensors["doc_ptr"][-1]) != tensors["doc_tokens"].numel():
        raise StatsCacheError(f"{folder}: the document token store is truncated.")


__all__ = [
    "FORMAT_VERSION", "cache_folder", "cache_key", "find_cached", "model_identity", "read_folder",
    "sae_identity", "tensor_digest", "write_folder",
]
