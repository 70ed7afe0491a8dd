"""Where an SAE runs: on the model's device, so activations never cross devices per token.

Gemma's activations are captured on the model's device; an SAE left on another device makes every encode
copy them (and every steering step copy reconstructions back). :func:`place_sae` moves the SAE's buffers to
the model's device and keeps their dtype (the math stays float32 whatever the storage).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.errors import DevicePlacementError

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


def require_model_device(sae: Any, gm: GemmaModel, purpose: str) -> None:
    """Raise :class:`~gemscope_widgets.errors.DevicePlacementError` when ``sae`` sits on another kind of device
    than the model (CPU vs an accelerator) for work that runs it at every decoding step (``purpose``): each
    step would copy activations across devices. Accelerator to accelerator (a model spread with
    ``device_map``) is allowed: those copies are what accelerate does between layers anyway."""
    device = torch.device(getattr(gm, "device", "cpu"))
    if not isinstance(sae, torch.nn.Module):
        return
    where = sae_device(sae)
    if where.type != device.type:
        name = getattr(sae, "config", sae).name
        raise DevicePlacementError(
            f"{name} is on {where} but the model runs on {device}: {purpose} would copy activations between "
            f"them at every step. Put it where the model is: Scope(model, sae) does, or "
            f"sae.to({str(device)!r})."
        )


__all__ = ["place_sae", "require_model_device", "sae_device"]
