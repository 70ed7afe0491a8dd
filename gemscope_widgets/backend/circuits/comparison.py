"""Two attribution graphs side by side: which features and edges one prompt's circuit has and the other's lacks.

Two prompts (a request and its jailbreak, a known and an unknown entity) have different lengths, so nodes are
matched by *what* they are, not where: a feature by ``(layer, feature)``, an error node by its layer, a token node
by its text, a logit node by its token. A key's **influence** in a graph is the sum, over the positions where it
sits, of its nodes' influence on the logits (circuit-tracer's ``compute_node_influence``, weighted by the logit
probabilities) divided by the total influence of all non-logit nodes of that graph, so the two graphs' numbers are
shares and compare directly. A key is **kept** when one of its nodes survives the graph's ``prune`` at the given
thresholds. An edge between keys carries the sum of the kept edges' weights between their nodes.

Comparing attribution graphs across prompts is the workflow of "On the Biology of a Large Language Model"
(Lindsey et al., 2025), e.g. the jailbreak and entity-recognition case studies, done there by eye.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from gemscope_widgets.backend.views import view_factory
from gemscope_widgets.errors import GraphError

NodeKey = tuple[Any, ...]
"""``("feature", layer, feature)``, ``("error", layer)``, ``("token", text)`` or ``("logit", token text)``."""


@dataclass(frozen=True)
class KeyChange:
    """One node key's influence share in each graph (0 where absent) and whether each graph's pruning kept it."""

    key: NodeKey
    label: str
    influence_a: float
    influence_b: float
    kept_a: bool
    kept_b: bool

    @property
    def delta(self) -> float:
        """``influence_b − influence_a``."""
        return self.influence_b - self.influence_a


@dataclass(frozen=True)
class EdgeChange:
    """An edge between two node keys: summed kept weight in each graph (0 where absent)."""

    source: NodeKey
    target: NodeKey
    weight_a: float
    weight_b: float

    @property
    def delta(self) -> float:
        """``weight_b − weight_a``."""
        return self.weight_b - self.weight_a


@dataclass
class GraphComparison:
    """The answer of :func:`compare_graphs`.

    ``only_a`` / ``only_b``: feature keys kept in one graph and not kept in the other, by influence in the graph
    that keeps them; ``shared``: feature keys kept in both; ``largest_changes``: every feature key of either graph
    by ``|delta|``; ``edges_only_a`` / ``edges_only_b``: kept edges (between kept keys) absent from the other
    graph's kept edges, by ``|weight|``; ``overlap``: Jaccard index of the kept feature keys; ``weighted_overlap``:
    ``Σ min(a, b) / Σ max(a, b)`` over feature keys' influence shares; ``labels``: every key's label (as
    :func:`key_label` gives it). :meth:`widget` draws it with the differences highlighted.
    """

    prompt_a: str
    prompt_b: str
    only_a: list[KeyChange]
    only_b: list[KeyChange]
    shared: list[KeyChange]
    largest_changes: list[KeyChange]
    edges_only_a: list[EdgeChange]
    edges_only_b: list[EdgeChange]
    overlap: float
    weighted_overlap: float
    thresholds: tuple[float, float] = field(default=(0.8, 0.98))
    labels: dict[NodeKey, str] = field(default_factory=dict, repr=False)

    def widget(self, **kwargs: Any) -> Any:
        """This comparison drawn in a notebook cell: what only one graph keeps, side by side, and the largest
        changes in influence. The view is registered by the widget layer (``backend/views.py``)."""
        return view_factory("GraphComparison")(self, **kwargs)

    def __repr__(self) -> str:
        def rows(items: list[KeyChange], n: int = 5) -> str:
            return "".join(f"\n    {c.label}: {c.influence_a:.3f} -> {c.influence_b:.3f}" for c in items[:n])

        return (
            f"GraphComparison(A={self.prompt_a[:40]!r}, B={self.prompt_b[:40]!r}: {len(self.shared)} features kept "
            f"in both, {len(self.only_a)} only in A, {len(self.only_b)} only in B; overlap {self.overlap:.2f}, "
            f"weighted {self.weighted_overlap:.2f}"
            f"\n  only in A:{rows(self.only_a) or ' none'}\n  only in B:{rows(self.only_b) or ' none'}"
            f"\n  largest changes:{rows(self.largest_changes) or ' none'})"
        )


def node_key(graph: Any, i: int) -> NodeKey:
    """The position-free key of node ``i`` of ``graph`` (see :data:`NodeKey`)."""
    info = graph.node_info(i)
    if info.kind == "feature":
        return ("feature", info.layer, info.feature)
    if info.kind == "error":
        return ("error", info.layer)
    if info.kind == "token":
        return ("token", graph._token_text(info.pos))
    return ("logit", graph.node_label(i))


def key_label(graph: Any, key: NodeKey) -> str:
    """A position-free label: ``L3 #812`` (and the feature's label where the graph has one), ``error L3``, the
    token's text."""
    if key[0] == "feature":
        text = graph.feature_labels.get((key[1], key[2]), "")
        return f"L{key[1]} #{key[2]}" + (f" {text}" if text else "")
    if key[0] == "error":
        return f"error L{key[1]}"
    return str(key[1])


def _summarise(graph: Any, node_threshold: float, edge_threshold: float) -> tuple[dict[NodeKey, float],
                                                                                    set[NodeKey],
                                                                                    dict[tuple[NodeKey, NodeKey],
                                                                                         float],
                                                                                    dict[NodeKey, str]]:
    influence = graph.node_influence().double()
    total = float(influence[: graph.logit_slice.start].sum())
    if not total > 0:
        raise GraphError("This graph has no influence on its logits (an empty or all-zero graph): nothing to compare.")
    pruned = graph.prune(node_threshold, edge_threshold)
    keys = [node_key(graph, i) for i in range(graph.n_nodes)]
    shares: dict[NodeKey, float] = {}
    labels: dict[NodeKey, str] = {}
    kept: set[NodeKey] = set()
    for i, key in enumerate(keys):
        if key[0] == "logit":
            continue
        shares[key] = shares.get(key, 0.0) + float(influence[i]) / total
        labels.setdefault(key, key_label(graph, key))
        if bool(pruned.node_mask[i]):
            kept.add(key)
    edges: dict[tuple[NodeKey, NodeKey], float] = {}
    targets, sources = torch.nonzero(pruned.edge_mask, as_tuple=True)
    weights = graph.adjacency_matrix[targets, sources].double()
    for t, s, w in zip(targets.tolist(), sources.tolist(), weights.tolist()):
        pair = (keys[s], keys[t])
        edges[pair] = edges.get(pair, 0.0) + w
    return shares, kept, edges, labels


def compare_graphs(a: Any, b: Any, *, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                   k: int = 20) -> GraphComparison:
    """Compare attribution graphs ``a`` and ``b`` (two prompts, same model and transcoders) by node keys.

    ``node_threshold`` / ``edge_threshold``: each graph's ``prune`` thresholds (circuit-tracer's defaults);
    ``k``: how many entries each list keeps. Influence shares and kept sets are defined in the module docstring.
    Raises :class:`GraphError` for graphs of different models or layer counts, a graph without influence on its
    logits, or a bad ``k``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GraphError(f"k must be a positive integer, got {k!r}.")
    if a.n_layers != b.n_layers or (a.model_name and b.model_name and a.model_name != b.model_name):
        raise GraphError(
            f"These graphs come from different models ({a.model_name or '?'}, {a.n_layers} layers vs "
            f"{b.model_name or '?'}, {b.n_layers} layers): attribute both prompts with the same model and "
            "transcoders."
        )
    share_a, kept_a, edges_a, labels_a = _summarise(a, node_threshold, edge_threshold)
    share_b, kept_b, edges_b, labels_b = _summarise(b, node_threshold, edge_threshold)
    features = sorted({key for key in (*share_a, *share_b) if key[0] == "feature"})

    def change(key: NodeKey) -> KeyChange:
        return KeyChange(key, labels_a.get(key) or labels_b.get(key, ""), share_a.get(key, 0.0),
                         share_b.get(key, 0.0), key in kept_a, key in kept_b)

    changes = [change(key) for key in features]
    only_a = sorted((c for c in changes if c.kept_a and not c.kept_b), key=lambda c: -c.influence_a)[:k]
    only_b = sorted((c for c in changes if c.kept_b and not c.kept_a), key=lambda c: -c.influence_b)[:k]
    shared = sorted((c for c in changes if c.kept_a and c.kept_b), key=lambda c: -abs(c.delta))[:k]
    largest = sorted(changes, key=lambda c: (-abs(c.delta), c.key))[:k]
    kept_a_f = {key for key in kept_a if key[0] == "feature"}
    kept_b_f = {key for key in kept_b if key[0] == "feature"}
    union = kept_a_f | kept_b_f
    overlap = len(kept_a_f & kept_b_f) / len(union) if union else 1.0
    lo = sum(min(c.influence_a, c.influence_b) for c in changes)
    hi = sum(max(c.influence_a, c.influence_b) for c in changes)

    def edge_list(mine: dict[tuple[NodeKey, NodeKey], float], other: dict[tuple[NodeKey, NodeKey], float],
                  a_side: bool) -> list[EdgeChange]:
        out = [EdgeChange(s, t, w if a_side else other.get((s, t), 0.0), other.get((s, t), 0.0) if a_side else w)
               for (s, t), w in mine.items() if (s, t) not in other]
        return sorted(out, key=lambda e: -abs(e.weight_a if a_side else e.weight_b))[:k]

    return GraphComparison(
        prompt_a=a.input_string, prompt_b=b.input_string, only_a=only_a, only_b=only_b, shared=shared,
        largest_changes=largest, edges_only_a=edge_list(edges_a, edges_b, True),
        edges_only_b=edge_list(edges_b, edges_a, False), overlap=overlap,
        weighted_overlap=lo / hi if hi > 0 else 1.0, thresholds=(node_threshold, edge_threshold),
        labels={**labels_b, **labels_a},
    )
