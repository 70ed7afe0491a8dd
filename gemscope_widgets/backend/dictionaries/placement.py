"""Where an SAE runs: on the model's device, so activations never cross devices per token.

Gemma's activations are captured on the model's device; an SAE left on another device makes every encode
copy them (and every steering step copy reconstructions back). :func:`place_sae` moves the SAE's buffers to
the model's device and keeps their dtype (the math stays float32 whatever the storage).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel


def sae_device(sae: Any) -> torch.device:
    """The device of the SAE's weights (where its activations come out)."""
    device: torch.device = next(iter(sae.buffers())).device
    return device


def place_sae(sae: Any, gm: GemmaModel) -> Any:
    """Move ``sae`` (in place) to ``gm.device`` when it is elsewhere; returns it."""
    device = getattr(gm, "device", None)
    if device is not None and isinstance(sae, torch.nn.Module) and sae_device(sae) != torch.device(device):
        sae.to(device)
    return sae


__all__ = ["place_sae", "sae_device"]
