"""Interventions on an attribution graph's feature nodes: clamp or scale them, re-run the model, compare logits.

A feature node is ``(layer, position, feature)``. Clamping it to ``v`` adds ``(v - a) · w_dec[f]`` to the MLP
output of its layer (for a CLT, of every layer it writes to) at that position, where ``a`` is the feature's
activation computed from the MLP input of the same forward pass: the reconstruction error is kept and every other
part of the model (attention, norms, other features' MLPs) runs for real, so effects propagate. This is
circuit-tracer's default ("iterative") ``feature_intervention`` and the package's steering ``clamp`` mode; it runs
through :class:`~gemscope_widgets.backend.steering.plan.SteeringPlan` with one plan per intervened position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.circuits.replacement import Replacement, zero_positions
from gemscope_widgets.backend.circuits.transcoder_set import TranscoderSet, load_transcoders
from gemscope_widgets.backend.gemma.hooks import hooked
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.backend.steering.plan import SteeringPlan, StepState, model_lock
from gemscope_widgets.backend.steering.spec import SteeringSpec
from gemscope_widgets.errors import GraphError

if TYPE_CHECKING:
    from gemscope_widgets.backend.circuits.graph import AttributionGraph

MODES = ("set", "scale")


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
    probability before it).
    """

    changes: list[tuple[int, int, int, int, float, float]]
    top_before: list[TopLogit]
    top_after: list[TopLogit]
    logit_tokens: list[int]
    logit_probabilities_before: list[float]
    logit_probabilities_after: list[float]
    compared: list[tuple[int, str, float, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

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


def next_token_probabilities(gm: Any, ids: torch.Tensor, pairs: Sequence[Any] = ()) -> torch.Tensor:
    """``[V]`` next-token probabilities of the real model on ``ids [T]`` with the given hook pairs installed."""
    with torch.no_grad(), hooked(*pairs):
        logits = gm.model(input_ids=ids.reshape(1, -1).to(gm.device), use_cache=False).logits[0, -1]
    return torch.softmax(logits.float(), dim=-1).cpu()


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


def intervene_graph(
    graph: AttributionGraph, interventions: Mapping[Any, float], *, mode: str = "set", top_k: int = 10
) -> InterventionResult:
    """Clamp (``mode="set"``) or scale (``mode="scale"``: factor × the node's activation on the prompt) feature
    nodes and return the next-token predictions before and after. See :meth:`AttributionGraph.intervene`.

    Raises GraphError for a graph without its model (call ``graph.attach``), a non-feature node, an unknown
    mode or a non-finite value.
    """
    rep = graph.replacement
    if rep is None:
        raise GraphError(
            "This graph has no model attached (it was loaded from a file): call graph.attach(model, transcoders) "
            "first."
        )
    if mode not in MODES:
        raise GraphError(f"Unknown intervention mode {mode!r}: use 'set' (clamp to a value) or 'scale'.")
    if not isinstance(interventions, Mapping) or not interventions:
        raise GraphError("Pass interventions as a non-empty {node: value} dict, e.g. {12: 0.0}.")
    gm, tset = rep.model, rep.transcoders
    changes = []
    by_pos: dict[int, list[Any]] = {}
    for ref, value in expand_supernodes(graph, interventions):
        node = graph.node_index(ref)
        if node >= graph.n_selected:
            raise GraphError(
                f"Node {ref!r} is a {graph.node_kind(node)} node; only feature nodes (0..{graph.n_selected - 1}) can "
                "be clamped or scaled."
            )
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise GraphError(f"The value for node {ref!r} is not a number: {value!r}.") from None
        if not math.isfinite(value):
            raise GraphError(f"The value for node {ref!r} is not finite: {value}.")
        layer, pos, feature = graph.selected_active_features[node].tolist()
        activation = float(graph.selected_activation_values[node])
        target = value if mode == "set" else value * activation
        changes.append((node, layer, pos, feature, activation, target))
        spec = SteeringSpec(
            feature=tset.dictionary_feature(layer, feature),
            strength=target,
            mode="clamp",
            positions="all",
            sae=tset.dictionary(layer),
        )
        by_pos.setdefault(pos, []).append(spec)
    ids = graph.input_tokens
    n = int(ids.numel())
    pairs = []
    for pos, specs in by_pos.items():
        state = StepState(prompt_len=n)
        others = torch.ones(1, n, dtype=torch.bool)
        others[0, pos] = False  # "special" positions are left alone: all but this one
        state.begin(0, others)
        pairs += SteeringPlan(gm, specs, state).pairs()
    with model_lock(gm):
        before = next_token_probabilities(gm, ids)
        after = next_token_probabilities(gm, ids, pairs)

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
        info={"mode": mode},
    )
