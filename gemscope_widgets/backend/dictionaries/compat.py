"""Check that an SAE fits a model before any run: clear errors naming both sides, warnings for -it/-pt."""

from __future__ import annotations

from typing import Any

from gemscope_widgets.backend.gemma.names import GEMMA_SIZES, parse_gemma_name, scope_repo_id
from gemscope_widgets.errors import SAEModelMismatch, warn_user

__all__ = ["SAEModelWarning", "check_compatible", "parse_gemma_name"]


class SAEModelWarning(UserWarning):
    """The SAE runs on this model but was trained on a sibling (e.g. an -it SAE on a -pt model)."""


def _attn_dim(text_config: Any) -> int:
    heads = int(text_config.num_attention_heads)
    head_dim = getattr(text_config, "head_dim", None) or int(text_config.hidden_size) // heads
    return heads * int(head_dim)


def check_compatible(gm: Any, sae: Any) -> list[str]:
    """Raise :class:`SAEModelMismatch` when ``sae`` cannot run on ``gm``; return (and warn) softer issues.

    Checked: the model size in the SAE's ``model_name`` vs the model's name (when both are Gemma names),
    the SAE's input width vs the model's (``d_model``, or heads x head_dim at ``attn_out``), and every
    layer index vs the model's depth. A model or SAE whose name has no Gemma size is compared on
    dimensions only (and gets no -it/-pt warning).
    """
    cfg = sae.config
    model_name = str(gm.name)
    d_model = int(gm.d_model)
    n_layers = int(gm.n_layers)
    sae_label = f"{cfg.name}{f' ({cfg.repo_id})' if cfg.repo_id else ''}"
    trained_on = cfg.model_name or "an unnamed model"

    sae_parsed = parse_gemma_name(cfg.model_name) or parse_gemma_name(cfg.repo_id)
    model_parsed = parse_gemma_name(model_name)
    instruct = bool(gm.is_instruct)
    if sae_parsed and model_parsed and sae_parsed[:2] != model_parsed[:2]:
        generation, size, _ = model_parsed
        hint = (
            f": use {scope_repo_id(size, instruct)}"
            if generation == "3" and size in GEMMA_SIZES
            else ""
        )
        raise SAEModelMismatch(
            f"The SAE {sae_label} was trained on {trained_on} (d_in {cfg.d_in}) but the model is "
            f"{model_name} (d_model {d_model}){hint}."
        )

    if cfg.site == "attn_out":
        expected, what = _attn_dim(gm.text_config), "num_attention_heads x head_dim"
    else:
        expected, what = d_model, "d_model"
    if cfg.d_in != expected:
        raise SAEModelMismatch(
            f"The SAE {sae_label} reads vectors of size d_in {cfg.d_in} at {cfg.hook_in}, but the model "
            f"{model_name} has {what} {expected} there; it was trained on {trained_on}. "
            "Pick an SAE trained for this model."
        )
    if cfg.site != "attn_out" and cfg.d_out != d_model:
        raise SAEModelMismatch(
            f"The SAE {sae_label} writes vectors of size {cfg.d_out} but the model {model_name} has "
            f"d_model {d_model}."
        )

    layers = sorted(set(cfg.layers_in) | set(cfg.layers_out))
    too_deep = [layer for layer in layers if layer >= n_layers]
    if too_deep:
        raise SAEModelMismatch(
            f"The SAE {sae_label} hooks layer {too_deep[0]}, but the model {model_name} has only {n_layers} "
            f"layers (0..{n_layers - 1}); it was trained on {trained_on}."
        )
    if cfg.kind == "clt" and len(cfg.layers_in) != n_layers:
        raise SAEModelMismatch(
            f"The cross-layer transcoder {sae_label} spans {len(cfg.layers_in)} layers but the model "
            f"{model_name} has {n_layers}; it was trained on {trained_on}."
        )

    found: list[str] = []
    if sae_parsed and model_parsed and sae_parsed[2] != instruct:
        sae_kind = "instruction-tuned (-it)" if sae_parsed[2] else "pretrained (-pt)"
        model_kind = "instruction-tuned (-it)" if instruct else "pretrained (-pt)"
        size = model_parsed[1]
        found.append(
            f"The SAE {sae_label} was trained on the {sae_kind} {trained_on} but the model {model_name} is "
            f"{model_kind}; features will be noisier. Prefer {scope_repo_id(size, instruct)}."
        )
    for message in found:
        warn_user(message, SAEModelWarning)
    return found
