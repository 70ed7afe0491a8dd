"""What an attribution graph explains: its target nodes at the last position.

By default the targets are the most likely next tokens (circuit-tracer's ``max_n_logits`` / ``desired_logit_prob``);
a logit node's direction is its unembedding row minus the mean row, so its input is ``logit − mean(logits)``.
``attribute(..., targets=[...])`` chooses them instead, each one of:

* a **token**, as text that is exactly one token (``" Paris"``) or a token id: a logit node as above;
* a **direction** ``(label, vector)``, ``vector`` ``[d_model]`` in the space the unembedding reads (after the
  final norm): the target's input is ``vector · final_norm(h_last)``. :func:`logit_difference` makes the one for
  ``logit(a) − logit(b)`` (``W_U[a] − W_U[b]``; the mean row cancels); a behaviour direction read through the
  final norm is another.

Every target's row plus its ``bias_input`` equals its input (completeness), as for the default logits. Influence
weighs each token target by its probability and each direction target by 1 (a direction has no probability).
A direction gets the virtual token id ``vocab_size + i`` (as circuit-tracer numbers custom targets), so node ids
stay unique. Source: circuit-tracer's attribution targets (``attribution_targets``: tokens, strings or
``(label, vector)``), and the logit-difference targets of "Circuit Tracing" (Ameisen et al., 2025).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gemscope_widgets.backend.gemma.offload import resident
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.errors import AttributionError


@dataclass
class Targets:
    """The target nodes: ``ids [n]`` (token ids; ``vocab_size + i`` for directions), ``weights [n]`` (influence
    seeds), ``vecs [n, d]`` (directions read after the final norm), ``inputs [n]`` (each target's value on the
    prompt), ``labels`` (text shown for each)."""

    ids: Tensor
    weights: Tensor
    vecs: Tensor
    inputs: Tensor
    labels: list[str]


def vocab_size(gm: Any) -> int:
    """Rows of the unembedding: token ids at or above it are direction targets."""
    return int(gm.lm_head.weight.shape[0])


def token_id(gm: Any, token: Any) -> int:
    """The id of ``token`` (text that is exactly one token, or an id); AttributionError otherwise."""
    if isinstance(token, bool):
        raise AttributionError(f"A target token must be text or a token id, got {token!r}.")
    if isinstance(token, int):
        if not 0 <= token < vocab_size(gm):
            raise AttributionError(f"Token id {token} is outside the vocabulary (0..{vocab_size(gm) - 1}).")
        return token
    if isinstance(token, str):
        ids = gm.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            pieces = token_strings(gm.tokenizer, ids)
            raise AttributionError(
                f"{token!r} is {len(ids)} tokens {pieces}, not one: a target must be a single token (mind the "
                "leading space, e.g. ' Paris')."
            )
        return int(ids[0])
    raise AttributionError(f"A target token must be text or a token id, got {type(token).__name__}.")


def logit_difference(gm: Any, a: Any, b: Any) -> tuple[str, Tensor]:
    """The direction target ``logit(a) − logit(b)``: ``(label, W_U[a] − W_U[b])``, ``[d_model]`` float32.

    ``a``, ``b``: single tokens (text or ids). Raises AttributionError for anything else or ``a == b``.
    """
    ia, ib = token_id(gm, a), token_id(gm, b)
    if ia == ib:
        raise AttributionError(f"A logit difference needs two different tokens, got {a!r} twice.")
    ta, tb = token_strings(gm.tokenizer, [ia, ib])
    with resident(gm.model, gm.lm_head):
        w_u = gm.lm_head.weight
        vec = w_u[ia].float() - w_u[ib].float()
    return f"{ta} − {tb}", vec.detach().clone()


def resolve_targets(gm: Any, fwd: Any, targets: Sequence[Any] | None, max_logits: int,
                    logit_probability: float) -> Targets:
    """The target nodes of one attribution (see the module docstring); ``fwd`` is the captured frozen forward.

    Raises AttributionError for an empty list, a token that is not one token, a malformed or non-finite direction,
    or the same target twice.
    """
    logits = fwd.logits  # [V], before any soft-capping
    cap = getattr(gm.text_config, "final_logit_softcapping", None)
    probs = torch.softmax(torch.tanh(logits / cap) * cap if cap else logits, dim=-1)
    if targets is None:
        top_p, top_idx = torch.topk(probs, min(max_logits, probs.numel()))
        limit = torch.tensor(logit_probability, device=top_p.device)
        cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), limit))
        idx = top_idx[: cutoff + 1]
        return Targets(idx.cpu(), probs[idx].float().cpu(), centred_rows(gm, idx),
                       (logits[idx] - logits.mean()).float().cpu(),
                       token_strings(gm.tokenizer, idx.tolist()))
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence) or not targets:
        raise AttributionError(
            "targets must be a non-empty list of tokens (' Paris' or an id) and (label, vector) directions, e.g. "
            "[' Paris'] or [logit_difference(model, ' Paris', ' Rome')]."
        )
    normed = (fwd.s_final[-1] * fwd.r_final[-1]).float()  # what the unembedding reads at the last position
    vocab = vocab_size(gm)
    ids: list[int] = []
    weights: list[float] = []
    vecs: list[Tensor] = []
    inputs: list[float] = []
    labels: list[str] = []
    for i, target in enumerate(targets):
        if isinstance(target, tuple) and len(target) == 2 and isinstance(target[0], str):
            label, vector = target
            vec = torch.as_tensor(vector, dtype=torch.float32, device=normed.device).reshape(-1)
            if vec.numel() != normed.numel() or not bool(torch.isfinite(vec).all()) or not bool(vec.any()):
                raise AttributionError(
                    f"Target {label!r}: a direction must be {normed.numel()} finite numbers, not all zero "
                    f"(the model's d_model), got {tuple(torch.as_tensor(vector).shape)}."
                )
            ids.append(vocab + i)
            weights.append(1.0)
            vecs.append(vec)
            inputs.append(float(vec @ normed))
            labels.append(label)
        else:
            t = token_id(gm, target)
            ids.append(t)
            weights.append(float(probs[t]))
            vecs.append(centred_rows(gm, torch.tensor([t], device=logits.device))[0])
            inputs.append(float(logits[t] - logits.mean()))
            labels.append(token_strings(gm.tokenizer, [t])[0])
    if len(set(ids)) != len(ids):
        raise AttributionError("The same target is listed twice: give each token or direction once.")
    return Targets(torch.tensor(ids), torch.tensor(weights), torch.stack(vecs), torch.tensor(inputs), labels)


def centred_rows(gm: Any, idx: Tensor) -> Tensor:
    """A logit node's direction: ``W_U[idx] − mean row`` of the unembedding, float32 ``[n, d_model]`` on the
    unembedding's device, for token ids ``idx [n]``; its dot with the final normed residual is ``logit −
    mean(logits)`` before soft-capping (circuit-tracer's demeaned unembedding; loaded for the read if offloaded)."""
    with resident(gm.model, gm.lm_head):
        w_u = gm.lm_head.weight
        mean_row = torch.mean(w_u, dim=0, dtype=torch.float32)
        rows: Tensor = w_u[idx.to(w_u.device)].float() - mean_row
        return rows
