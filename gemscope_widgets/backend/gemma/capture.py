"""Capturing activations at hook points, stopping after the deepest layer needed."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from gemscope_widgets.backend.gemma.hooks import HookFn, StopForward, hooked, stop_after
from gemscope_widgets.backend.gemma.sites import resolve_site

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel


def capture(
    gm: GemmaModel,
    input_ids: torch.Tensor,
    hook_points: Sequence[str],
    *,
    stop_early: bool = True,
    attention_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Run the decoder on ``input_ids`` ``[B, T]`` (or ``[T]``) and return each hook point's activation.

    With ``stop_early`` the forward pass ends right after the deepest layer any hook point needs: no later
    layers and no ``lm_head`` run. Even without it, only the decoder stack runs (never the unembedding).
    Activations keep the model's dtype and device; each is ``[B, T, d]``.
    """
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if attention_mask is not None and attention_mask.dim() == 1:
        attention_mask = attention_mask.unsqueeze(0)
    sites = [resolve_site(gm, hp) for hp in dict.fromkeys(hook_points)]
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str) -> HookFn:
        def fn(tensor: torch.Tensor) -> None:
            captured[name] = tensor.detach()

        return fn

    pairs = [(site, keep(site.hook_point)) for site in sites]
    if stop_early and sites:
        pairs.append(stop_after(gm.layers[max(site.layer for site in sites)]))
    kwargs = {"input_ids": input_ids.to(gm.device), "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(gm.device)
    with torch.inference_mode(), hooked(*pairs), contextlib.suppress(StopForward):
        gm.text_model(**kwargs)
    return captured
