"""The config record of a Gemma Scope 2 dictionary and the parsing of its ``config.json``.

A Gemma Scope 2 folder carries ``hf_hook_point_in`` / ``hf_hook_point_out`` (Hugging Face module paths,
with ``{all}`` or ``{5,9,12}`` placeholders for multi-layer kinds), ``width``, ``model_name``, ``l0``,
``affine_connection`` and ``type`` (``sae``, ``transcoder``, ``clt``, ``crosscoder``). Older uploads
have no ``type``; it is inferred as SAELens does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from gemscope_widgets.backend.gemma.names import SCOPE_SITE_FOLDERS, normalise_model_name
from gemscope_widgets.backend.gemma.sites import parse_hook_point, site_of
from gemscope_widgets.errors import GemscopeError, SAELoadError, SAEModelMismatch

KINDS = ("sae", "transcoder", "clt", "crosscoder")
SITES = ("resid_post", "mlp_out", "attn_out", "transcoder", "clt", "crosscoder")
REQUIRED_KEYS = ("w_enc", "b_enc", "threshold", "w_dec", "b_dec")
SKIP_KEY = "affine_skip_connection"
_BRACES = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class SAEConfig:
    """What a Gemma Scope 2 folder says about itself, with hook points expanded and shapes checked."""

    kind: str
    site: str
    hook_in: str
    hook_out: str
    hook_points_in: tuple[str, ...]
    hook_points_out: tuple[str, ...]
    layers_in: tuple[int, ...]
    layers_out: tuple[int, ...]
    width: int
    d_in: int
    d_out: int
    l0: float | None
    model_name: str | None
    affine: bool
    name: str
    repo_id: str | None
    path: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def layer(self) -> int:
        """The single layer of a one-layer SAE/transcoder (its input layer)."""
        if len(self.layers_in) != 1:
            raise GemscopeError(
                f"{self.name} spans layers {list(self.layers_in)}; use config.layers_in for multi-layer kinds."
            )
        return self.layers_in[0]


@dataclass(frozen=True)
class FolderConfig:
    """A parsed ``config.json`` before the weights are read: everything :class:`SAEConfig` needs but shapes."""

    kind: str
    hook_in: str
    hook_out: str
    l0: float | None
    model_name: str | None
    name: str
    repo_id: str | None
    path: str
    raw: dict[str, Any]

    def hook_points(self, n_slots: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The expanded input and output hook points, one per slot (weights file)."""
        hooks_in = expand_hook_point(self.hook_in, n_slots, self.name)
        hooks_out = expand_hook_point(self.hook_out, n_slots, self.name)
        if len(hooks_in) != n_slots or len(hooks_out) != n_slots:
            raise SAELoadError(
                f"{self.name}: config.json names {len(hooks_in)} hook points ({self.hook_in}) but there are "
                f"{n_slots} params_layer files."
            )
        return hooks_in, hooks_out

    def sae_config(self, *, n_slots: int, width: int, d_in: int, d_out: int, affine: bool) -> SAEConfig:
        """The full config once the weights told ``width``, ``d_in``, ``d_out`` and ``affine``."""
        hooks_in, hooks_out = self.hook_points(n_slots)
        said = self.raw.get("width")
        if isinstance(said, int) and said != width:
            raise SAELoadError(
                f"{self.path}/config.json says width {said} but the weights hold {width} features; "
                "the config and params files come from different SAEs."
            )
        return SAEConfig(
            kind=self.kind,
            site=_site(self.kind, self.hook_in, self.name),
            hook_in=self.hook_in,
            hook_out=self.hook_out,
            hook_points_in=hooks_in,
            hook_points_out=hooks_out,
            layers_in=_layers(hooks_in, self.name),
            layers_out=_layers(hooks_out, self.name),
            width=int(width),
            d_in=int(d_in),
            d_out=int(d_out),
            l0=self.l0,
            model_name=self.model_name,
            affine=affine,
            name=self.name,
            repo_id=self.repo_id,
            path=self.path,
            raw=self.raw,
        )


def read_folder_config(
    folder: Path, *, n_layer_files: int, name: str | None = None, repo_id: str | None = None
) -> FolderConfig:
    """Parse ``folder/config.json``; ``n_layer_files`` (``params_layer_{i}`` files present) helps infer the type."""
    raw = _read_json(folder)
    return FolderConfig(
        kind=_kind(raw, folder, n_layer_files),
        hook_in=str(raw["hf_hook_point_in"]),
        hook_out=str(raw["hf_hook_point_out"]),
        l0=float(raw["l0"]) if isinstance(raw.get("l0"), (int, float)) else None,
        model_name=normalise_model_name(raw.get("model_name")),
        name=_display_name(folder, name),
        repo_id=repo_id,
        path=str(folder),
        raw=raw,
    )


def check_keys(params: Mapping[str, Tensor], where: str) -> None:
    """Every JumpReLU tensor is present under its lowercase Gemma Scope 2 name."""
    missing = [k for k in REQUIRED_KEYS if k not in params]
    if missing:
        upper = [k for k in params if k.lower() in REQUIRED_KEYS and k not in REQUIRED_KEYS]
        hint = f" (found {upper}: keys must be lowercase as in Gemma Scope 2)" if upper else ""
        raise SAELoadError(f"{where} lacks {missing}{hint}; it has {sorted(params)}.")


def expand_hook_point(hook: str, n_files: int, name: str) -> tuple[str, ...]:
    """``model.layers.{all}.x`` over ``n_files`` layers, ``model.layers.{5,9}.x`` over the listed ones."""
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
        try:
            out.append(parse_hook_point(h)[0])
        except SAEModelMismatch:
            raise SAELoadError(f"{name}: hook point {h!r} names no layer (expected 'model.layers.N.…').") from None
    return tuple(out)


def _site(kind: str, hook_in: str, name: str) -> str:
    if kind in ("transcoder", "clt", "crosscoder"):
        return kind
    site = site_of(hook_in)
    if site is None:
        raise SAELoadError(
            f"{name}: hook point {hook_in!r} is not a Gemma Scope 2 site (resid_post: model.layers.N.output, "
            "mlp_out: ….post_feedforward_layernorm.output, attn_out: ….self_attn.o_proj.input)."
        )
    return site


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
    if kind not in KINDS:
        raise SAELoadError(
            f"{folder}/config.json has type {kind!r}; known Gemma Scope 2 types are {', '.join(KINDS)}."
        )
    return str(kind)


def _display_name(folder: Path, given: str | None) -> str:
    if given:
        return given.strip("/")
    if folder.parent.name in SCOPE_SITE_FOLDERS:
        return f"{folder.parent.name}/{folder.name}"
    return folder.name


def _read_json(folder: Path) -> dict[str, Any]:
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
    if not isinstance(raw.get("hf_hook_point_in"), str):
        raise SAELoadError(f"{cfg_path} has no 'hf_hook_point_in'; it is not a Gemma Scope 2 config.")
    raw.setdefault("hf_hook_point_out", raw["hf_hook_point_in"])
    return raw
