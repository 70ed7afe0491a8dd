"""Ablating one attention edge in a real forward pass: head ``h`` of ``layer`` stops reading key position ``j`` from
query position ``i``, and the next-token logits are compared, beside controls.

Gemma 3's attention output at position ``i`` is ``o_proj(concat_h Σ_j A[h, i, j] · v[kv(h), j])`` (``o_proj`` has no
bias). Removing the one term ``A[h, i, j] · v[kv(h), j]`` changes that layer's attention output at ``i`` by
``-A[h, i, j] · W_O[:, h] v[kv(h), j]`` and nothing else at that layer (its queries, keys, values and every other
position are computed before the pattern is used); the change is added to the attention module's output at ``i``
and every later part of the model runs for real, so the effect propagates. This is **pattern ablation without
renormalisation**: the edge's information is removed and the head's other weights are kept, which is the
counterfactual the head loadings and QK attribution describe (a head's share of an edge is the drop with that
pattern entry masked; :mod:`.head_loadings`). With ``renormalise=True`` the row is renormalised instead (the head
then attends more to its other keys: ``(out - A_ij v_j) / (1 - A_ij)``), as a softmax with that key masked would.

Controls (:func:`attention_ablation_check`): the same ablation on every other head of the layer (same positions),
and on the same head at the control key: the key position other than ``j`` and ``<bos>`` whose attention weight is
closest to ``A[h, i, j]`` (a matched-size edit that removes other information). A head is supported as the channel
for the name → fact step when its ablation moves the target logit well beyond the controls'.

Method: attention pattern ablation as in Kamath et al. (2025), "Tracing Attention Computation Through Feature
Interactions" (transformer-circuits.pub/2025/attention-qk), and earlier activation-patching work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gemscope_widgets.backend.circuits.replacement import eager_attention
from gemscope_widgets.backend.circuits.targets import token_id
from gemscope_widgets.backend.gemma.attention import head_counts, kv_head, sliding_window
from gemscope_widgets.backend.gemma.offload import resident
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.backend.steering.plan import model_lock
from gemscope_widgets.errors import AttributionError, GraphError


@dataclass(frozen=True)
class AttentionEdgeAblation:
    """One ablated attention edge and the next-token logits before and after.

    ``pattern``: ``A[head, query_pos, key_pos]`` on the prompt (probability); ``tokens`` / ``token_ids``: the
    targets read at the last position; ``logits_before`` / ``logits_after`` (logit units) and
    ``probabilities_before`` / ``_after`` aligned with them.
    """

    layer: int
    head: int
    query_pos: int
    key_pos: int
    pattern: float
    renormalise: bool
    token_ids: list[int]
    tokens: list[str]
    logits_before: list[float]
    logits_after: list[float]
    probabilities_before: list[float]
    probabilities_after: list[float]

    @property
    def logit_change(self) -> list[float]:
        """``logits_after - logits_before`` per target token."""
        return [a - b for a, b in zip(self.logits_after, self.logits_before, strict=True)]

    def __repr__(self) -> str:
        changes = ", ".join(f"{t!r} {d:+.3f}" for t, d in zip(self.tokens, self.logit_change, strict=True))
        return (f"AttentionEdgeAblation(L{self.layer}.H{self.head} {self.query_pos}←{self.key_pos}, "
                f"A={self.pattern:.3f}: {changes})")


@dataclass(frozen=True)
class AttentionAblationCheck:
    """:attr:`ablation` beside its controls: :attr:`control_heads` (every other head of the layer, same positions)
    and :attr:`control_key` (same head, the matched-weight key; None when the prompt has no other key)."""

    ablation: AttentionEdgeAblation
    control_heads: list[AttentionEdgeAblation] = field(default_factory=list)
    control_key: AttentionEdgeAblation | None = None

    def rows(self) -> list[tuple[str, float, float]]:
        """``(what, pattern, change of the first target's logit)`` for the ablation and each control."""
        out = [(f"L{self.ablation.layer}.H{self.ablation.head} key {self.ablation.key_pos} (ablated)",
                self.ablation.pattern, self.ablation.logit_change[0])]
        for c in self.control_heads:
            out.append((f"L{c.layer}.H{c.head} key {c.key_pos} (control head)", c.pattern, c.logit_change[0]))
        if self.control_key is not None:
            c = self.control_key
            out.append((f"L{c.layer}.H{c.head} key {c.key_pos} (control key)", c.pattern, c.logit_change[0]))
        return out

    def __repr__(self) -> str:
        token = self.ablation.tokens[0]
        lines = [f"Logit change of {token!r} when one attention edge is removed:"]
        lines += [f"  {what:<40} A={p:.3f}  {d:+.4f}" for what, p, d in self.rows()]
        return "\n".join(lines)


def ablate_attention_edge(
    gm: Any, prompt: Any, layer: int, head: int, query_pos: int, key_pos: int, *,
    tokens: Sequence[Any] | None = None, renormalise: bool = False,
) -> AttentionEdgeAblation:
    """Remove head ``head``'s attention from ``query_pos`` to ``key_pos`` at ``layer`` and rerun the model.

    Args:
        gm: the model. prompt: text, chat messages or token ids (``gm.prompt``'s forms).
        layer, head: a layer and a query head of the model. query_pos, key_pos: prompt positions (negative counts
            from the end) with ``key_pos <= query_pos``; on a sliding-window layer ``query_pos - key_pos`` must be
            under the window.
        tokens: the target tokens read at the last position (text of one token each, or ids); default: the
            model's most likely next token on the prompt.
        renormalise: renormalise the head's row after removing the entry (module docstring); default: not.

    Returns an :class:`AttentionEdgeAblation`. The model is left as it was (hooks removed on every exit path).

    Raises GraphError for a layer, head or position out of range, a key after the query or outside the sliding
    window; AttributionError for a target that is not one token.
    """
    return _Run(gm, prompt, layer, tokens).ablate(head, query_pos, key_pos, renormalise)


def attention_ablation_check(
    gm: Any, prompt: Any, layer: int, head: int, query_pos: int, key_pos: int, *,
    tokens: Sequence[Any] | None = None, renormalise: bool = False,
) -> AttentionAblationCheck:
    """:func:`ablate_attention_edge` beside its controls (module docstring): each other head of ``layer`` at the
    same positions, and the same head at the key whose weight is closest to the ablated one's (not ``key_pos``,
    not position 0, inside the sliding window). One clean forward pass plus one per ablation. Errors as
    :func:`ablate_attention_edge`."""
    run = _Run(gm, prompt, layer, tokens)
    main = run.ablate(head, query_pos, key_pos, renormalise)
    n_heads = head_counts(gm)[0]
    heads = [run.ablate(h, query_pos, key_pos, renormalise) for h in range(n_heads) if h != main.head]
    row = run.pattern[main.head, main.query_pos].clone()
    row[[0, main.key_pos]] = float("nan")
    row[main.query_pos + 1:] = float("nan")
    window = sliding_window(gm, main.layer)
    if window is not None:
        row[: max(main.query_pos - window + 1, 0)] = float("nan")
    gap = (row - main.pattern).abs()
    key = None
    if bool(torch.isfinite(gap).any()):
        key = run.ablate(main.head, main.query_pos, int(torch.nan_to_num(gap, nan=float("inf")).argmin()), renormalise)
    return AttentionAblationCheck(main, heads, key)


class _Run:
    """One prompt's clean pass at ``layer`` (pattern, values, logits), then ablated passes."""

    def __init__(self, gm: Any, prompt: Any, layer: Any, tokens: Sequence[Any] | None) -> None:
        self.gm = gm
        self.ids = gm.prompt(prompt).input_ids.reshape(-1)
        self.n_pos = int(self.ids.numel())
        self.layer = _index(layer, gm.n_layers, "Layer", "this model has layers")
        self.attn = gm.layers[self.layer].self_attn
        self.n_heads, self.n_kv, self.head_dim = head_counts(gm)
        captured: dict[str, Tensor] = {}

        def keep_pattern(module: Any, args: Any, out: Any) -> None:
            captured["pattern"] = out[1][0].detach().float()

        def keep_values(module: Any, args: Any, out: Any) -> None:
            captured["v"] = out[0].detach().float()

        with model_lock(gm), eager_attention(gm.text_model.config), torch.no_grad():
            handles = [self.attn.register_forward_hook(keep_pattern),
                       self.attn.v_proj.register_forward_hook(keep_values)]
            try:
                logits = self._logits()
            finally:
                for h in handles:
                    h.remove()
        self.pattern: Tensor = captured["pattern"]  # [H, T, T]
        self.values = captured["v"].reshape(self.n_pos, self.n_kv, self.head_dim)  # [T, kv, dh]
        if tokens is None:
            self.token_ids = [int(logits.argmax())]
        else:
            self.token_ids = [token_id(gm, t) for t in tokens]
            if not self.token_ids:
                raise AttributionError("tokens is empty: give at least one target token, or None for the top one.")
        self.logits = logits

    def _logits(self) -> Tensor:
        out = self.gm.model(input_ids=self.ids.reshape(1, -1).to(self.gm.device), use_cache=False, logits_to_keep=1)
        logits: Tensor = out.logits[0, -1].float()
        return logits

    def ablate(self, head: Any, query_pos: Any, key_pos: Any, renormalise: bool) -> AttentionEdgeAblation:
        head = _index(head, self.n_heads, "Head", f"layer {self.layer} has heads")
        q = _index(query_pos, self.n_pos, "Query position", "the prompt has positions", negative=True)
        k = _index(key_pos, self.n_pos, "Key position", "the prompt has positions", negative=True)
        if k > q:
            raise GraphError(f"Key position {k} comes after query position {q}: a query attends only to keys at or "
                             "before it (causal mask).")
        window = sliding_window(self.gm, self.layer)
        if window is not None and q - k >= window:
            raise GraphError(f"Layer {self.layer} is a sliding-window layer (window {window}): query position {q} "
                             f"sees key positions {q - window + 1}..{q} only.")
        a = float(self.pattern[head, q, k])
        v = self.values[:, kv_head(self.gm, head)]  # [T, dh]
        if renormalise:
            row = self.pattern[head, q, : q + 1]
            old = row @ v[: q + 1]
            delta_head = (old - a * v[k]) / max(1.0 - a, 1e-12) - old
        else:
            delta_head = -a * v[k]
        with resident(self.attn.o_proj):
            w_o = self.attn.o_proj.weight.detach().float()[:, head * self.head_dim:(head + 1) * self.head_dim]
        delta = w_o @ delta_head.to(w_o.device)  # [d]

        def add(module: Any, args: Any, out: Any) -> Any:
            hidden = out[0] if isinstance(out, tuple) else out
            hidden = hidden.clone()
            hidden[0, q] += delta.to(hidden.device, hidden.dtype)
            return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

        with model_lock(self.gm), eager_attention(self.gm.text_model.config), torch.no_grad():
            handle = self.attn.register_forward_hook(add)
            try:
                after = self._logits()
            finally:
                handle.remove()
        ids = self.token_ids
        p_before, p_after = self.logits.softmax(-1), after.softmax(-1)
        return AttentionEdgeAblation(
            layer=self.layer, head=head, query_pos=q, key_pos=k, pattern=a, renormalise=renormalise,
            token_ids=list(ids), tokens=token_strings(self.gm.tokenizer, ids),
            logits_before=[float(self.logits[i]) for i in ids], logits_after=[float(after[i]) for i in ids],
            probabilities_before=[float(p_before[i]) for i in ids],
            probabilities_after=[float(p_after[i]) for i in ids],
        )


def _index(value: Any, n: int, name: str, valid: str, *, negative: bool = False) -> int:
    """``value`` as an index into ``range(n)`` (negative from the end when ``negative``); GraphError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise GraphError(f"{name} must be an integer, got {value!r}.")
    i = value + n if negative and value < 0 else value
    if not 0 <= i < n:
        raise GraphError(f"{name} {value} does not exist: {valid} 0..{n - 1}.")
    return i


__all__ = ["AttentionAblationCheck", "AttentionEdgeAblation", "ablate_attention_edge", "attention_ablation_check"]
