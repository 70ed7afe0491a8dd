"""Where the torch side runs: the device rule and whether the Hugging Face hub may be reached.

One rule for every loader: ``device="auto"`` is CUDA when present, else CPU; asking for CUDA on a machine
without it is a clear error, not a torch traceback later. The hub is offline when ``HF_HUB_OFFLINE`` or
``TRANSFORMERS_OFFLINE`` is set (read at call time, so a notebook may set it after import), as
huggingface_hub and transformers read them.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from gemscope_widgets.errors import GemscopeError, ModelLoadError

_TRUE = ("1", "ON", "YES", "TRUE")


def resolve_device(device: str | torch.device, *, error: type[GemscopeError] = ModelLoadError) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; any other value as ``torch.device``.

    Raises ``error`` (a :class:`GemscopeError`) when CUDA is asked for and not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise error(f"device={str(device)!r} was requested but CUDA is not available; use device='cpu'.")
    return resolved


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if env.strip().upper() in _TRUE:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False
    flag: Any = constants.HF_HUB_OFFLINE
    return bool(flag)
