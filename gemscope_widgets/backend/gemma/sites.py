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

# The one table of Gemma Scope 2 sites: site name -> (hook point in, hook point out), with {layer} for the layer.
# resid_post / mlp_out / attn_out SAEs read and write one point; transcoders (and CLTs, per layer) read the
# MLP's input (after its pre-norm) and write its normed output. Source: the ``config.json`` of google/gemma-scope-2-*.
SITE_HOOK_POINTS: dict[str, tuple[str, str]] = {
    "resid_post": ("model.layers.{layer}.output", "model.layers.{layer}.output"),
    "mlp_out": (
        "model.layers.{layer}.post_feedforward_layernorm.output",
        "model.layers.{layer}.post_feedforward_layernorm.output",
    ),
    "attn_out": ("model.layers.{layer}.self_attn.o_proj.input", "model.layers.{layer}.self_attn.o_proj.input"),
    "transcoder": (
        "model.layers.{layer}.pre_feedforward_layernorm.output",
        "model.layers.{layer}.post_feedforward_layernorm.output",
    ),
}
SAE_SITES = ("resid_post", "mlp_out", "attn_out")  # sites whose SAEs read and write the same point

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


def site_hook_points(site: str, layer: int | str) -> tuple[str, str]:
    """``(hf_hook_point_in, hf_hook_point_out)`` of a Gemma Scope 2 site at ``layer``.

    ``layer`` may be the string ``"{all}"`` to get the cross-layer transcoder's template. Raises
    ``KeyError`` for an unknown site (callers turn it into their own error with the list of sites).
    """
    hook_in, hook_out = SITE_HOOK_POINTS[site]
    return hook_in.format(layer=layer), hook_out.format(layer=layer)


def hook_point(site: str, layer: int) -> str:
    """The hook point a resid_post / mlp_out / attn_out SAE reads at ``layer`` (``KeyError`` if unknown)."""
    if site not in SAE_SITES:
        raise KeyError(site)
    return site_hook_points(site, layer)[0]


def site_of(hook_point_in: str) -> str | None:
    """The single-point site (resid_post / mlp_out / attn_out) a hook point belongs to, or ``None``."""
    try:
        _, sub, kind = parse_hook_point(hook_point_in)
    except SAEModelMismatch:
        return None
    for site in SAE_SITES:
        _, want_sub, want_kind = parse_hook_point(SITE_HOOK_POINTS[site][0].format(layer=0))
        if (sub, kind) == (want_sub, want_kind):
            return site
    return None


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
