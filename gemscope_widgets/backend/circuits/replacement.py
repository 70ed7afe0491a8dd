"""The local replacement model of one prompt: Gemma 3 with attention patterns and norm scales frozen.

"Circuit Tracing: Revealing Computational Graphs in Language Models" (Ameisen et al., 2025), §"local
replacement model", as implemented for Gemma 3 by circuit-tracer 0.5.0 (its nnsight Gemma 3 mapping freezes
the attention softmax and the ``rsqrt`` of every RMSNorm: input, q, k, post-attention, pre- and
post-feedforward, final). With those frozen, and each MLP output split into transcoder features (nodes), an
error per (layer, position) (a node), the affine skip ``x @ W_skip`` (a linear path) and the decoder bias (a
constant), the residual stream is a linear function of the node outputs. This module captures one forward
pass of the real model and applies the transpose of that linear map to gradients: no autograd is used.

Per layer ``l`` and position ``t`` (``⊙`` is an elementwise product with a frozen per-position vector)::

    r_mid = r_pre + s_pa ⊙ O( Σ_s A[t, s] · V(s_in ⊙ r_pre[s]) )      (q/k norms only shape A: frozen)
    x     = s_pf ⊙ r_mid                                              (transcoder input)
    r_post = r_mid + Σ_features a·w_dec + error + b_dec + x @ W_skip  (transcoder output = MLP output)
    logits = (s_f ⊙ r_L) @ W_U.T

where ``s_* = (1 + w_*) / sqrt(mean(h²) + eps)`` is the RMSNorm's frozen scale on its input ``h``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from gemscope_widgets.backend.circuits.transcoder_set import TranscoderSet
from gemscope_widgets.backend.gemma.offload import resident
from gemscope_widgets.errors import ReplacementError


def norm_scale(norm: torch.nn.Module, h: Tensor) -> Tensor:
    """Gemma 3 RMSNorm's frozen scale ``(1 + w) * rsqrt(mean(h²) + eps)`` ``[..., d]`` (float32)."""
    h = h.float()
    weight, eps = cast(Tensor, norm.weight), cast(float, norm.eps)
    return (1.0 + weight.float()) * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def zero_positions(gm: Any, input_ids: Tensor) -> int:
    """How many leading positions get no feature and no error node (their MLP output is a constant).

    As circuit-tracer: ``<bos>`` (position 0), whose residual norm is huge and whose features carry no
    information about the prompt; for instruction-tuned Gemma 3 also ``<start_of_turn>user\\n`` (positions 0-3)
    when the prompt starts with that template (circuit-tracer zeroes 0-3 for every -it model).
    """
    n = 1
    if getattr(gm, "is_instruct", False) and input_ids.numel() >= 4:
        tok = gm.tokenizer
        start = tok.convert_tokens_to_ids("<start_of_turn>")
        if int(input_ids[1]) == start and "\n" in tok.decode([int(input_ids[3])]):
            n = 4
    return min(n, int(input_ids.numel()))


@contextlib.contextmanager
def eager_attention(config: Any) -> Iterator[None]:
    """Run the model's attention with transformers' eager implementation inside the block (restored after): only
    it returns the attention weights; it computes the same function as the default one."""
    old = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = old


@contextlib.contextmanager
def _forward_hooks(pairs: list[tuple[torch.nn.Module, str, Any]]) -> Iterator[None]:
    """Register (module, "fwd"|"pre", fn) hooks acting only on this thread's forwards; always removed."""
    owner = threading.get_ident()
    handles = []

    def wrap(fn: Any) -> Any:
        def hook(*args: Any) -> None:
            if threading.get_ident() == owner:
                fn(*args)

        return hook

    try:
        for module, kind, fn in pairs:
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(wrap(fn)))
            else:
                handles.append(module.register_forward_hook(wrap(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


def _first(x: Any) -> Tensor:
    first: Tensor = x[0] if isinstance(x, tuple) else x
    return first


@dataclass
class FrozenForward:
    """Everything captured from one forward pass of the real model on one prompt (float32, batch dim dropped).

    Shapes: ``r_pre`` / ``r_mid`` / ``x`` / ``mlp_out`` / ``s_in`` / ``s_pa`` / ``s_pf``: ``[L, T, d]``;
    ``patterns``: ``[L, H, T, T]`` (query, key); ``r_final`` / ``s_final``: ``[T, d]``; ``logits``: ``[T, V]``
    only for the last position (``[V]``).
    """

    input_ids: Tensor
    r_pre: Tensor
    r_mid: Tensor
    x: Tensor
    mlp_out: Tensor
    s_in: Tensor
    s_pa: Tensor
    s_pf: Tensor
    patterns: Tensor
    r_final: Tensor
    s_final: Tensor
    logits: Tensor
    w_o: list[Tensor] = field(default_factory=list)  # [d, H*dh] per layer
    w_v: list[Tensor] = field(default_factory=list)  # [n_kv*dh, d] per layer
    n_heads: int = 0
    n_kv: int = 0
    head_dim: int = 0

    @property
    def n_layers(self) -> int:
        return int(self.r_pre.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.r_pre.shape[1])

    # ---- the frozen linear map and its transpose ---------------------------------------------------------------

    def attention_mix(self, layer: int, h: Tensor) -> Tensor:
        """The attention module's output (``o_proj``, before ``post_attention_layernorm``) ``[..., T, d]`` for its
        input ``h [..., T, d]`` (the ``input_layernorm`` output), with the prompt's patterns frozen: values and the
        output projection act on ``h``; queries and keys (and their norms) only made the patterns."""
        t = h.shape[-2]
        v = h @ self.w_v[layer].T  # [..., T, n_kv*dh]
        v = v.unflatten(-1, (self.n_kv, self.head_dim))
        group = self.n_heads // self.n_kv
        a = self.patterns[layer, :, :t, :t].unflatten(0, (self.n_kv, group))  # [kv, g, T, S]
        z = torch.einsum("kgts,...skd->...tkgd", a, v).flatten(-3)  # [..., T, H*dh]
        return z @ self.w_o[layer].T

    def attention_forward(self, layer: int, r_pre: Tensor) -> Tensor:
        """The frozen attention block's output ``[..., T, d]`` for residuals ``r_pre [..., T, d]``."""
        t = r_pre.shape[-2]
        return self.s_pa[layer, :t] * self.attention_mix(layer, self.s_in[layer, :t] * r_pre)

    def attention_backward(self, layer: int, g_mid: Tensor) -> Tensor:
        """Transpose of :meth:`attention_forward`: gradient at ``r_pre`` from gradient ``g_mid [B, P, d]``."""
        p = g_mid.shape[-2]
        g_z = (self.s_pa[layer, :p] * g_mid) @ self.w_o[layer]  # [B, P, H*dh]
        g_z = g_z.unflatten(-1, (self.n_kv, self.n_heads // self.n_kv, self.head_dim))  # [B, P, kv, g, dh]
        a = self.patterns[layer, :, :p, :p].unflatten(0, (self.n_kv, self.n_heads // self.n_kv))
        g_v = torch.einsum("kgts,btkgd->bskd", a, g_z).flatten(-2)  # [B, P, kv*dh]
        return self.s_in[layer, :p] * (g_v @ self.w_v[layer])


def capture_forward(gm: Any, input_ids: Tensor) -> FrozenForward:
    """Run ``gm`` on ``input_ids [T]`` once and capture what the local replacement model freezes.

    Raises :class:`ReplacementError` when the captured pieces do not recompose the model's own residual stream
    (a check that the frozen linear map is the model's: it catches an unexpected architecture or hook layout).
    """
    text_model = gm.text_model
    config = text_model.config
    if getattr(config, "attn_logit_softcapping", None):
        raise ReplacementError("Attention logit soft-capping is not supported by the frozen-attention replacement.")
    n_layers = gm.n_layers
    store: dict[str, list[Any]] = {k: [None] * n_layers for k in ("r_pre", "pat", "attn", "r_mid", "x", "mlp")}
    final: dict[str, Tensor] = {}
    pairs: list[tuple[torch.nn.Module, str, Any]] = []

    def keep(name: str, layer: int, how: str) -> Any:
        def fn(module: Any, args: Any, out: Any = None) -> None:
            if how == "in":
                store[name][layer] = args[0].detach()
            elif how == "weights":
                store[name][layer] = out[1].detach()
            else:
                store[name][layer] = _first(out).detach()

        return fn

    for i, block in enumerate(gm.layers):
        pairs += [
            (block, "pre", keep("r_pre", i, "in")),
            (block.self_attn, "fwd", keep("pat", i, "weights")),
            (block.post_attention_layernorm, "pre", keep("attn", i, "in")),
            (block.pre_feedforward_layernorm, "pre", keep("r_mid", i, "in")),
            (block.pre_feedforward_layernorm, "fwd", keep("x", i, "out")),
            (block.post_feedforward_layernorm, "fwd", keep("mlp", i, "out")),
        ]

    def keep_final(module: Any, args: Any) -> None:
        final["r"] = args[0].detach()

    pairs.append((gm.final_norm, "pre", keep_final))
    ids = input_ids.reshape(1, -1).to(gm.device)
    with torch.no_grad(), eager_attention(config), _forward_hooks(pairs):
        out = text_model(input_ids=ids, use_cache=False)
        hidden = _first(out.last_hidden_state if hasattr(out, "last_hidden_state") else out)
        logits = gm.lm_head(hidden[:, -1]).float()[0]
    missing = [k for k, v in store.items() if any(t is None for t in v)]
    if missing or "r" not in final:
        raise ReplacementError(
            f"Could not capture {missing or ['final norm input']} from {type(gm.model).__name__}; the frozen "
            "replacement needs eager attention weights and every Gemma 3 norm."
        )
    stack = {k: torch.stack([t[0].float() for t in v]) for k, v in store.items()}
    patterns = stack["pat"]
    r_final = final["r"][0].float()
    s_in, s_pa, s_pf, w_o, w_v = [], [], [], [], []
    for i, b in enumerate(gm.layers):  # weights read outside a forward: loaded one layer at a time if offloaded
        with resident(gm.model, b):
            s_in.append(norm_scale(b.input_layernorm, stack["r_pre"][i]))
            s_pa.append(norm_scale(b.post_attention_layernorm, stack["attn"][i]))
            s_pf.append(norm_scale(b.pre_feedforward_layernorm, stack["r_mid"][i]))
            w_o.append(b.self_attn.o_proj.weight.detach().float().clone())
            w_v.append(b.self_attn.v_proj.weight.detach().float().clone())
    with resident(gm.model, gm.final_norm):
        s_final = norm_scale(gm.final_norm, r_final)
    attn0 = gm.layers[0].self_attn
    n_heads = int(config.num_attention_heads)
    n_kv = int(config.num_key_value_heads)
    head_dim = int(getattr(config, "head_dim", None) or gm.d_model // n_heads)
    if attn0.v_proj.bias is not None or attn0.o_proj.bias is not None:
        raise ReplacementError("Attention projections with biases are not supported (Gemma 3 has none).")
    fwd = FrozenForward(
        input_ids=input_ids.reshape(-1).cpu(),
        r_pre=stack["r_pre"],
        r_mid=stack["r_mid"],
        x=stack["x"],
        mlp_out=stack["mlp"],
        s_in=torch.stack(s_in),
        s_pa=torch.stack(s_pa),
        s_pf=torch.stack(s_pf),
        patterns=patterns,
        r_final=r_final,
        s_final=s_final,
        logits=logits,
        w_o=w_o,
        w_v=w_v,
        n_heads=n_heads,
        n_kv=n_kv,
        head_dim=head_dim,
    )
    _check_recomposition(fwd, 1e-3 if gm.dtype == torch.float32 else 5e-2)
    return fwd


def _check_recomposition(fwd: FrozenForward, tol: float) -> None:
    # The frozen attention map applied to the captured r_pre must give the captured r_mid, and the next layer's
    # input must be r_mid + MLP output: otherwise the graph would not describe this model.
    for layer in range(fwd.n_layers):
        r_mid = fwd.r_pre[layer] + fwd.attention_forward(layer, fwd.r_pre[layer])
        scale = fwd.r_mid[layer].abs().max().clamp(min=1e-6)
        err = float((r_mid - fwd.r_mid[layer]).abs().max() / scale)
        nxt = fwd.r_pre[layer + 1] if layer + 1 < fwd.n_layers else fwd.r_final
        err2 = float((fwd.r_mid[layer] + fwd.mlp_out[layer] - nxt).abs().max() / nxt.abs().max().clamp(min=1e-6))
        if err > tol or err2 > tol:
            raise ReplacementError(
                f"Layer {layer}: the frozen attention/residual map does not recompose the model's residual stream "
                f"(relative error {max(err, err2):.2e}). This model's layer layout is not the Gemma 3 one expected."
            )


@dataclass
class Replacement:
    """The model and transcoder set a graph was built with (what interventions re-run).

    ``forward``: the prompt's captured :class:`FrozenForward`, made by :meth:`frozen` on first use (interventions
    with frozen attention need it; a plain intervention does not, so a graph does not hold it until then).
    ``target_vectors``: ``[n_logits, d]`` the logit nodes' directions after the final norm, as ``attribute`` chose
    them (head loadings inject them again; a direction target's vector is known from nothing else).
    """

    model: Any
    transcoders: TranscoderSet
    zero_positions: int
    forward: FrozenForward | None = field(default=None, repr=False)
    target_vectors: Tensor | None = field(default=None, repr=False)

    def frozen(self, input_ids: Tensor) -> FrozenForward:
        """The prompt's :class:`FrozenForward` (captured once, then kept). Raises ReplacementError as
        :func:`capture_forward`."""
        ids = input_ids.reshape(-1).cpu()
        if self.forward is None or not torch.equal(self.forward.input_ids, ids):
            self.forward = capture_forward(self.model, ids)
        return self.forward
