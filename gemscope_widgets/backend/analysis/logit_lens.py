"""Logit lens for SAE features: which tokens a feature's decoder direction promotes and suppresses.

The direct effect of a feature on the logits is ``W_U · (w_dec[f] ⊙ g)`` with ``g`` the final norm's gain.
Gemma's RMSNorm multiplies by ``1 + weight`` (the stored weight is an offset from 1), so using ``weight``
alone, as some published snippets do, gives wrong tokens. The norm's per-token ``1/rms`` scale is left out:
it is a positive scalar and does not change the ranking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch

from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.backend.gemma.sites import resolve_site

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel


def norm_gain(norm: torch.nn.Module) -> torch.Tensor:
    """The elementwise gain of an RMSNorm: ``1 + weight`` for Gemma's, ``weight`` otherwise."""
    weight = cast(torch.Tensor, norm.weight).detach().float()
    return 1.0 + weight if "Gemma" in type(norm).__name__ else weight


def feature_direction(gm: GemmaModel, sae: Any, f: int) -> torch.Tensor:
    """Feature ``f``'s write to the residual stream, ``[d_model]`` float32.

    One-layer SAEs and transcoders: ``w_dec[f]``. Cross-layer transcoders and crosscoders write to several
    layers; the residual stream adds them all up, so their directions are summed (the total direct effect).
    ``attn_out`` SAEs decode into the attention heads' output (the ``o_proj`` input), which ``o_proj`` maps
    into the residual stream; the ``post_attention_layernorm`` rescaling that follows is ignored.
    """
    total = torch.zeros(gm.d_model, dtype=torch.float32)
    for hook, vec in sae.write_directions(f).items():
        vec = vec.detach().float().cpu()
        if vec.shape[-1] != gm.d_model:
            site = resolve_site(gm, hook)
            o_proj = gm.layers[site.layer].get_submodule("self_attn.o_proj")
            vec = cast(torch.Tensor, o_proj.weight).detach().float().cpu() @ vec
        total += vec
    return total


def feature_logits(gm: GemmaModel, sae: Any, f: int) -> torch.Tensor:
    """``W_U · (direction ⊙ (1 + final_norm.weight))`` over the whole vocabulary, ``[V]`` float32."""
    direction = feature_direction(gm, sae, f) * norm_gain(gm.final_norm).cpu()
    w_u = gm.lm_head.weight.detach()
    with torch.inference_mode():
        return (w_u @ direction.to(w_u.device, w_u.dtype)).float().cpu()


def logit_lens(
    gm: GemmaModel, sae: Any, f: int, k: int = 10
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The ``k`` tokens feature ``f`` promotes most (``top``) and suppresses most (``bottom``), with values."""
    f = sae.check_feature(f)
    logits = feature_logits(gm, sae, f)
    k = min(int(k), logits.numel())
    top = torch.topk(logits, k)
    bottom = torch.topk(-logits, k)
    top_str = token_strings(gm.tokenizer, top.indices.tolist())
    bottom_str = token_strings(gm.tokenizer, bottom.indices.tolist())
    return (
        [(s, float(v)) for s, v in zip(top_str, top.values, strict=True)],
        [(s, float(-v)) for s, v in zip(bottom_str, bottom.values, strict=True)],
    )
