"""Hook points named as in Gemma Scope 2's ``config.json`` mapped onto the loaded modules.

Gemma Scope 2 names sites by Hugging Face module path (``model.layers.9.output``,
``model.layers.9.post_feedforward_layernorm.output``, ``model.layers.9.self_attn.o_proj.input``). The path to
the decoder layers differs between model classes and transformers versions, so names are resolved against
the layers we found rather than against the top-level module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import nn

from gemscope_widgets.errors import SAEModelMismatch

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

_HOOK_POINT = re.compile(r"^(?:[\w.]*?\.)?layers\.(\d+)(?:\.([\w.]+?))?\.(output|input)$")


@dataclass(frozen=True)
class Site:
    """Where a hook attaches: ``kind="output"`` is a forward hook, ``"input"`` a forward pre-hook (``args[0]``)."""

    hook_point: str
    layer: int
    module: nn.Module
    kind: Literal["output", "input"]


def parse_hook_point(hook_point: str) -> tuple[int, str, Literal["output", "input"]]:
    """Split ``model.layers.9.self_attn.o_proj.input`` into ``(9, "self_attn.o_proj", "input")``."""
    match = _HOOK_POINT.match(hook_point)
    if not match:
        raise SAEModelMismatch(
            f"Unrecognised hook point {hook_point!r}: expected a Hugging Face module path such as "
            "'model.layers.9.output' or 'model.layers.9.post_feedforward_layernorm.output'."
        )
    layer, sub, kind = match.groups()
    return int(layer), sub or "", kind  # type: ignore[return-value]


def resolve_site(gm: GemmaModel, hook_point: str) -> Site:
    """Find the module behind a hook point on this model."""
    layer, sub, kind = parse_hook_point(hook_point)
    if not 0 <= layer < gm.n_layers:
        raise SAEModelMismatch(
            f"Hook point {hook_point!r} names layer {layer}, but {gm.name} has layers 0–{gm.n_layers - 1}."
        )
    block = gm.layers[layer]
    try:
        module = block.get_submodule(sub) if sub else block
    except AttributeError as exc:
        raise SAEModelMismatch(
            f"Hook point {hook_point!r}: layer {layer} of {gm.name} has no submodule {sub!r}."
        ) from exc
    return Site(hook_point=hook_point, layer=layer, module=module, kind=kind)
