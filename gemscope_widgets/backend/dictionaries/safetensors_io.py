"""Safetensors files, read over a private memory map and written float32 (the only weight format we touch).

The header is parsed here and each tensor is a view into a copy-on-write map of the file, so a 262k-wide
SAE "loads" without reading gigabytes; pages are read when used, and ``.to("cuda")`` copies. Pickle-based
formats are never read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from gemscope_widgets.errors import SAELoadError

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


def write_safetensors(path: str | os.PathLike[str], params: Mapping[str, Tensor]) -> Path:
    """Write ``params`` float32, contiguous, under lowercase keys (as Gemma Scope 2 ships them)."""
    from safetensors.torch import save_file

    out: dict[str, Tensor] = {}
    for key, value in params.items():
        low = key.lower()
        if low in out:
            raise SAELoadError(f"Two parameters map to the same lowercase key {low!r}.")
        out[low] = value.detach().to("cpu", torch.float32).contiguous()
    save_file(out, str(path), metadata={"format": "pt"})
    return Path(path)


def as_float32(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Gemma Scope 2 ships float32; other float dtypes are converted once here (this copies)."""
    return {k: (v if v.dtype == torch.float32 else v.to(torch.float32)) for k, v in params.items()}
