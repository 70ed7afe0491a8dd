"""Interventions on an attribution graph's feature nodes: clamp, scale or ablate them, re-run the model, compare.

A feature node is ``(layer, position, feature)``. Clamping it to ``v`` adds ``(v - a) · w_dec[f]`` to the MLP
output of its layer (for a CLT, of every layer it writes to) at that position. Three regimes, as circuit-tracer's
``ReplacementModel.feature_intervention`` (``circuit_tracer/replacement_model/``, 0.5.0) defines them:

* **iterative** (the default: ``freeze_attention=False``, ``constrained_layers=None``): ``a`` is the feature's
  activation computed from the MLP input of the same forward pass; the reconstruction error is kept and every other
  part of the model (attention, norms, other features' MLPs) runs for real, so effects propagate. This is the
  package's steering ``clamp`` mode, run through :class:`~gemscope_widgets.backend.steering.plan.SteeringPlan`.
* **frozen attention** (``freeze_attention=True``): as iterative, with every layer's attention pattern held at its
  value on the prompt (the attention output is ``o_proj(pattern · v_proj(h))`` for the live input ``h``).
* **constrained** (``constrained_layers=`` a range or list of layers; attention is then frozen too): each layer in
  the set has its MLP output held at the prompt's value (its transcoder activations and error node unchanged),
  except for the affine skip ``x @ W_skip`` (recomputed from the live MLP input, since the graph treats it as a
  linear path, not a node) and the intervened features, whose ``a`` is the activation *on the prompt*. When the set
  holds every layer, every RMSNorm's scale (input, post-attention, pre-feedforward, final) is frozen as well: the
  model is then exactly the graph's local replacement model, linear in the intervened activations, and clamping a
  source feature from ``a`` to ``a + δ`` changes every target's input by ``δ / a × adjacency_matrix[target,
  source]`` (the graph's claim about its direct edges: ``result.node_input_changes`` against
  ``result.predicted_input_changes``). The delta of an intervened feature is also added to layers it writes to
  that are outside the set (circuit-tracer drops it there).

Node inputs are read as the graph defines them (:mod:`.graph`): a feature's pre-activation
``x · w_enc[:, f] + b_enc[f]`` at its layer and position, a token logit node's ``logit − mean(logits)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.circuits.replacement import FrozenForward, Replacement, zero_positions
from gemscope_widgets.backend.circuits.transcoder_set import TranscoderSet, load_transcoders
from gemscope_widgets.backend.gemma.hooks import HookFn, hooked
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.backend.gemma.sites import Site
from gemscope_widgets.backend.steering.plan import SteeringPlan, StepState, model_lock
from gemscope_widgets.backend.steering.spec import SteeringSpec
from gemscope_widgets.errors import GraphError

if TYPE_CHECKING:
    from gemscope_widgets.backend.circuits.graph import AttributionGraph

MODES = ("set", "scale", "ablate")


@dataclass(frozen=True)
class TopLogit:
    """One next-token candidate: id, text, probability."""

    token_id: int
    token: str
    probability: float


@dataclass
class InterventionResult:
    """Next-token predictions before and after an intervention.

    ``changes``: per intervened node ``(node, layer, pos, feature, activation_before, target)``;
    ``top_before`` / ``top_after``: the ``top_k`` most likely next tokens; ``logit_probabilities_before`` /
    ``_after``: probabilities of the graph's token targets (``logit_tokens``: ``graph.logit_tokens`` less any
    direction target, which has no probability), aligned with them;
    ``compared``: every token of the logit nodes and of both top lists, once, as ``(token_id, text, p_before,
    p_after)`` with both probabilities known (a token that enters the top list after the intervention keeps its
    probability before it);
    ``node_inputs_before`` / ``_after``: ``[n_nodes]`` every node's input (as ``graph.node_inputs``) on the plain
    model and under the intervention; ``predicted_input_changes``: ``[n_nodes]`` what the graph's direct edges
    predict, ``Σ_s (target_s − a_s) / a_s × adjacency_matrix[:, s]`` over the intervened nodes ``s`` (exact when
    every layer is constrained; a first-order direct-effect reading otherwise).
    """

    changes: list[tuple[int, int, int, int, float, float]]
    top_before: list[TopLogit]
    top_after: list[TopLogit]
    logit_tokens: list[int]
    logit_probabilities_before: list[float]
    logit_probabilities_after: list[float]
    compared: list[tuple[int, str, float, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    node_inputs_before: torch.Tensor | None = field(default=None, repr=False)
    node_inputs_after: torch.Tensor | None = field(default=None, repr=False)
    predicted_input_changes: torch.Tensor | None = field(default=None, repr=False)

    @property
    def node_input_changes(self) -> torch.Tensor | None:
        """``[n_nodes]``: each node's input after minus before (features: pre-activation; token logits:
        ``logit − mean``; NaN for direction targets, zero for error and token nodes)."""
        if self.node_inputs_before is None or self.node_inputs_after is None:
            return None
        return self.node_inputs_after - self.node_inputs_before

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what a widget sends to the browser)."""
        return {
            "changes": [list(c) for c in self.changes],
            "top_before": [t.__dict__ for t in self.top_before],
            "top_after": [t.__dict__ for t in self.top_after],
            "logit_tokens": self.logit_tokens,
            "logit_probabilities_before": self.logit_probabilities_before,
            "logit_probabilities_after": self.logit_probabilities_after,
            "compared": [list(c) for c in self.compared],
        }

    def __repr__(self) -> str:
        lines = [f"InterventionResult({len(self.changes)} node(s) changed)"]
        for (b, a) in zip(self.top_before, self.top_after, strict=False):
            lines.append(f"  {b.token!r:>16} {b.probability:7.4f}   ->   {a.token!r:>16} {a.probability:7.4f}")
        return "\n".join(lines)


def attach_replacement(graph: AttributionGraph, model: Any, transcoders: Any) -> None:
    """Give ``graph`` the model and transcoder set to re-run (after ``AttributionGraph.load``)."""
    tset = transcoders if isinstance(transcoders, TranscoderSet) else load_transcoders(transcoders)
    tset.check_model(model)
    if model.n_layers != graph.n_layers:
        raise GraphError(f"The graph has {graph.n_layers} layers but {model.name} has {model.n_layers}.")
    graph.replacement = Replacement(model, tset, zero_positions(model, graph.input_tokens))


def _top(probs: torch.Tensor, k: int, tokenizer: Any) -> list[TopLogit]:
    p, idx = torch.topk(probs, min(k, probs.numel()))
    texts = token_strings(tokenizer, idx.tolist())
    return [TopLogit(int(i), t, float(q)) for i, t, q in zip(idx.tolist(), texts, p.tolist(), strict=True)]


def expand_supernodes(graph: AttributionGraph, interventions: Mapping[Any, float]) -> list[tuple[Any, float]]:
    """``interventions`` with each supernode name replaced by its members (each member gets the value).

    Raises GraphError for a supernode with a member that is not a feature node, or a node given twice."""
    groups = graph.supernodes
    out: list[tuple[Any, float]] = []
    for ref, value in interventions.items():
        if isinstance(ref, str) and ref in groups:
            others = [m for m in groups[ref] if m >= graph.n_selected]
            if others:
                raise GraphError(
                    f"Supernode {ref!r} holds a {graph.node_kind(others[0])} node ({graph.node_id(others[0])}); only "
                    "feature nodes can be clamped or scaled: intervene on its features by name or index."
                )
            out += [(m, value) for m in groups[ref]]
        else:
            out.append((ref, value))
    seen: set[int] = set()
    for ref, _ in out:
        node = graph.node_index(ref)
        if node in seen:
            raise GraphError(f"Node {graph.node_id(node)} is given twice (directly and through a supernode?).")
        seen.add(node)
    return out


def constrained_layer_set(graph: AttributionGraph, constrained_layers: Any) -> frozenset[int] | None:
    """``constrained_layers`` (None, a ``range`` or an iterable of layer indices) as a set, checked against the
    graph's layers. Raises GraphError for an empty set, a non-integer or a layer outside ``0..n_layers − 1``."""
    if constrained_layers is None:
        return None
    if isinstance(constrained_layers, (str, bytes)) or not isinstance(constrained_layers, (range, Iterable)):
        raise GraphError(
            f"constrained_layers must be a range or a list of layer indices (e.g. range({graph.n_layers})), got "
            f"{constrained_layers!r}."
        )
    layers = list(constrained_layers)
    if not layers:
        raise GraphError("constrained_layers is empty: pass None for no constrained layer, or e.g. range(0, 6).")
    bad = [x for x in layers if isinstance(x, bool) or not isinstance(x, (int, torch.Tensor)) or
           not 0 <= int(x) < graph.n_layers]
    if bad:
        raise GraphError(
            f"constrained_layers must hold layers 0..{graph.n_layers - 1} of this graph's model; {bad[0]!r} is not one."
        )
    return frozenset(int(x) for x in layers)


def _site(module: torch.nn.Module, kind: Any, name: str) -> Site:
    return Site(hook_point=name, layer=-1, module=module, kind=kind)


def _recorders(gm: Any, layers: Sequence[int], xs: dict[int, torch.Tensor]) -> list[tuple[Site, HookFn]]:
    """Pairs keeping each of ``layers``' MLP input (the ``pre_feedforward_layernorm`` output, float32 ``[T, d]``)."""

    def keep(layer: int) -> HookFn:
        def fn(out: torch.Tensor) -> None:
            xs[layer] = out[0].detach().float()

        return fn

    return [(_site(gm.layers[j].pre_feedforward_layernorm, "output", f"x{j}"), keep(j)) for j in layers]


def _frozen_norm(norm: torch.nn.Module, scale: torch.Tensor, name: str) -> list[tuple[Site, HookFn]]:
    """Pairs replacing ``norm``'s output by ``scale ⊙ input`` (its scale on the prompt, ``[T, d]``)."""
    held: dict[str, torch.Tensor] = {}

    def read(inp: torch.Tensor) -> None:
        held["in"] = inp

    def write(out: torch.Tensor) -> torch.Tensor:
        return (scale * held["in"].float()).to(out.dtype)

    return [(_site(norm, "input", name), read), (_site(norm, "output", name), write)]


def freeze_pairs(
    gm: Any,
    fwd: FrozenForward,
    tset: TranscoderSet,
    constrained: frozenset[int] | None,
    deltas: Mapping[int, torch.Tensor],
) -> list[tuple[Site, HookFn]]:
    """Hook pairs (for :func:`~gemscope_widgets.backend.gemma.hooks.hooked`) that run ``gm`` on the prompt of
    ``fwd`` (batch 1, the whole prompt in one forward) with attention patterns frozen; with ``constrained``, those
    layers' MLP outputs held at the prompt's value plus the live affine skip's change plus ``deltas[layer]``
    (``[T, d]``), every other layer's MLP output plus its ``deltas``; when ``constrained`` holds every layer, every
    norm scale frozen too (module docstring)."""
    all_frozen = constrained is not None and len(constrained) == gm.n_layers
    pairs: list[tuple[Site, HookFn]] = []
    for i, block in enumerate(gm.layers):
        h: dict[str, torch.Tensor] = {}
        if all_frozen:
            pairs += _frozen_norm(block.input_layernorm, fwd.s_in[i], f"in{i}")

        def keep_h(out: torch.Tensor, h: dict[str, torch.Tensor] = h) -> None:
            h["h"] = out

        def attend(out: torch.Tensor, i: int = i, h: dict[str, torch.Tensor] = h) -> torch.Tensor:
            return fwd.attention_mix(i, h["h"].float()).to(out.dtype)

        pairs += [(_site(block.input_layernorm, "output", f"h{i}"), keep_h),
                  (_site(block.self_attn, "output", f"attn{i}"), attend)]
        if all_frozen:
            pairs += _frozen_norm(block.post_attention_layernorm, fwd.s_pa[i], f"pa{i}")
            pairs += _frozen_norm(block.pre_feedforward_layernorm, fwd.s_pf[i], f"pf{i}")
        if constrained is None:
            continue
        x: dict[str, torch.Tensor] = {}

        def keep_x(out: torch.Tensor, x: dict[str, torch.Tensor] = x) -> None:
            x["x"] = out

        def mlp_out(out: torch.Tensor, i: int = i, x: dict[str, torch.Tensor] = x) -> torch.Tensor:
            delta = deltas.get(i)
            if i not in constrained:
                return out if delta is None else (out.float() + delta).to(out.dtype)
            new = fwd.mlp_out[i].clone()
            skip = tset.skip(i) if i in tset.output_layers else None
            if skip is not None:
                new += (x["x"][0].float() - fwd.x[i]) @ skip.to(new.device)
            if delta is not None:
                new += delta
            return new.unsqueeze(0).to(out.dtype)

        pairs += [(_site(block.pre_feedforward_layernorm, "output", f"x{i}"), keep_x),
                  (_site(block.post_feedforward_layernorm, "output", f"mlp{i}"), mlp_out)]
    if all_frozen:
        pairs += _frozen_norm(gm.final_norm, fwd.s_final, "final")
    return pairs


def _run(
    gm: Any, ids: torch.Tensor, pairs: Sequence[Any], layers: Sequence[int]
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """``([V] last-position logits (float32, CPU), {layer: MLP input [T, d]})`` of ``gm`` on ``ids`` with ``pairs``."""
    xs: dict[int, torch.Tensor] = {}
    with torch.no_grad(), hooked(*pairs, *_recorders(gm, layers, xs)):
        logits = gm.model(input_ids=ids.reshape(1, -1).to(gm.device), use_cache=False).logits[0, -1]
    return logits.float().cpu(), xs


def _node_inputs(graph: AttributionGraph, tset: TranscoderSet, xs: Mapping[int, torch.Tensor],
                 logits: torch.Tensor) -> torch.Tensor:
    """``[n_nodes]`` node inputs as ``graph.node_inputs`` defines them, from MLP inputs and last-position logits."""
    out = torch.zeros(graph.n_nodes)
    feats = graph.selected_active_features
    for layer in feats[:, 0].unique().tolist():
        rows = (feats[:, 0] == layer).nonzero().flatten()
        pos, f = feats[rows, 1], feats[rows, 2]
        x = xs[layer].to(tset.device)
        w_enc, b_enc = tset.w_enc(layer), tset.b_enc(layer)
        pre = (x[pos.to(x.device)] * w_enc[:, f.to(x.device)].T).sum(-1) + b_enc[f.to(x.device)]
        out[rows] = pre.float().cpu()
    ids = graph.logit_tokens
    vocab = logits.shape[-1]
    logit_inputs = torch.full((len(ids),), float("nan"))
    tokens = ids < vocab
    logit_inputs[tokens] = logits[ids[tokens]] - logits.mean()
    out[graph.logit_slice] = logit_inputs
    return out


def intervene_graph(
    graph: AttributionGraph,
    interventions: Any,
    *,
    mode: str = "set",
    top_k: int = 10,
    freeze_attention: bool = False,
    constrained_layers: Any = None,
) -> InterventionResult:
    """Clamp (``mode="set"``), scale (``mode="scale"``: factor × the node's activation on the prompt) or ablate
    (``mode="ablate"``: clamp to 0; ``interventions`` may then be a list of nodes) feature nodes and supernodes, and
    return the next-token predictions and node inputs before and after. ``freeze_attention`` and
    ``constrained_layers`` choose the regime (module docstring; circuit-tracer's ``feature_intervention``).
    See :meth:`AttributionGraph.intervene`.

    Raises GraphError for a graph without its model (call ``graph.attach``), a non-feature node, an unknown
    mode, a non-finite value, or ``constrained_layers`` outside the model's layers.
    """
    rep = graph.replacement
    if rep is None:
        frozen = " (a frozen-attention intervention re-runs the prompt's forward pass on it)" if (
            freeze_attention or constrained_layers is not None) else ""
        raise GraphError(
            "This graph has no model attached (it was loaded from a file): call graph.attach(model, transcoders) "
            f"first{frozen}."
        )
    if mode not in MODES:
        raise GraphError(f"Unknown intervention mode {mode!r}: use 'set' (clamp to a value), 'scale' or 'ablate'.")
    if mode == "ablate" and not isinstance(interventions, Mapping):
        if isinstance(interventions, (str, int)) or not isinstance(interventions, Iterable):
            interventions = [interventions]
        interventions = {ref: 0.0 for ref in interventions}
    if not isinstance(interventions, Mapping) or not interventions:
        raise GraphError("Pass interventions as a non-empty {node: value} dict, e.g. {12: 0.0}.")
    constrained = constrained_layer_set(graph, constrained_layers)
    gm, tset = rep.model, rep.transcoders
    changes = []
    for ref, value in expand_supernodes(graph, interventions):
        node = graph.node_index(ref)
        if node >= graph.n_selected:
            raise GraphError(
                f"Node {ref!r} is a {graph.node_kind(node)} node; only feature nodes (0..{graph.n_selected - 1}) can "
                "be clamped, scaled or ablated."
            )
        try:
            value = 0.0 if mode == "ablate" else float(value)
        except (TypeError, ValueError):
            raise GraphError(f"The value for node {ref!r} is not a number: {value!r}.") from None
        if not math.isfinite(value):
            raise GraphError(f"The value for node {ref!r} is not finite: {value}.")
        layer, pos, feature = graph.selected_active_features[node].tolist()
        activation = float(graph.selected_activation_values[node])
        target = value * activation if mode == "scale" else value
        changes.append((node, layer, pos, feature, activation, target))
    ids = graph.input_tokens
    n = int(ids.numel())
    pairs: list[Any] = []
    if constrained is None:
        by_pos: dict[int, list[Any]] = {}
        for _, layer, pos, feature, _, target in changes:
            spec = SteeringSpec(
                feature=tset.dictionary_feature(layer, feature),
                strength=target,
                mode="clamp",
                positions="all",
                sae=tset.dictionary(layer),
            )
            by_pos.setdefault(pos, []).append(spec)
        for pos, specs in by_pos.items():
            state = StepState(prompt_len=n)
            others = torch.ones(1, n, dtype=torch.bool)
            others[0, pos] = False  # "special" positions are left alone: all but this one
            state.begin(0, others)
            pairs += SteeringPlan(gm, specs, state).pairs()
    layers = sorted({int(x) for x in graph.selected_active_features[:, 0].tolist()})
    with model_lock(gm):
        logits_before, xs_before = _run(gm, ids, [], layers)
        if freeze_attention or constrained is not None:
            fwd = rep.frozen(ids)
            deltas: dict[int, torch.Tensor] = {}
            for _, layer, pos, feature, activation, target in changes:
                for j, vec in tset.write_vectors(layer, torch.tensor([feature])).items():
                    d = deltas.setdefault(j, torch.zeros(n, fwd.x.shape[-1], device=fwd.x.device))
                    d[pos] += (target - activation) * vec[0].to(d.device)
            pairs = freeze_pairs(gm, fwd, tset, constrained, deltas) + pairs
        logits_after, xs_after = _run(gm, ids, pairs, layers)
    before = torch.softmax(logits_before, dim=-1)
    after = torch.softmax(logits_after, dim=-1)

    predicted = torch.zeros(graph.n_nodes)
    for node, _, _, _, activation, target in changes:
        if activation != 0.0:
            predicted += (target - activation) / activation * graph.adjacency_matrix[:, node]

    # Direction targets (a logit difference, a behaviour direction: ids >= the vocabulary) have no probability.
    logit_ids = [i for i in graph.logit_tokens.tolist() if i < before.shape[-1]]
    top_before, top_after = _top(before, top_k, gm.tokenizer), _top(after, top_k, gm.tokenizer)
    union = list(dict.fromkeys([*logit_ids, *(t.token_id for t in top_before), *(t.token_id for t in top_after)]))
    compared = [
        (i, text, float(before[i]), float(after[i]))
        for i, text in zip(union, token_strings(gm.tokenizer, union), strict=True)
    ]
    return InterventionResult(
        changes=changes,
        top_before=top_before,
        top_after=top_after,
        logit_tokens=logit_ids,
        logit_probabilities_before=before[logit_ids].tolist(),
        logit_probabilities_after=after[logit_ids].tolist(),
        compared=compared,
        info={
            "mode": mode,
            "freeze_attention": bool(freeze_attention or constrained is not None),
            "constrained_layers": sorted(constrained) if constrained is not None else None,
        },
        node_inputs_before=_node_inputs(graph, tset, xs_before, logits_before),
        node_inputs_after=_node_inputs(graph, tset, xs_after, logits_after),
        predicted_input_changes=predicted,
    )
