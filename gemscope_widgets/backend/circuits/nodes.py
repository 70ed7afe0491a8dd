"""Addressing the nodes of an attribution graph: kinds, ``(layer, pos, feature)``, Neuronpedia node ids, labels.

Node order (circuit-tracer's): selected features, error nodes (layer-major, then position), token nodes (one per
position), logit nodes. Node ids are Neuronpedia's graph JSON ids (as circuit-tracer's ``create_graph_files``
writes them since v0.5.1): ``{layer}_{feature}_{pos}`` for features, ``{layer}_-1_{pos}`` for errors,
``E_{token}_{pos}`` for tokens and ``{n_layers + 1}_{token}_{pos}`` for logits. The error ids circuit-tracer wrote
before, ``0_{layer}_{pos}``, are still read (decoderesearch/circuit-tracer#78: they collide with a layer-0 feature
whose index is the layer; the feature wins).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from gemscope_widgets.errors import GraphError

NODE_KINDS = ("feature", "error", "token", "logit")


class LogitTarget(NamedTuple):
    """A logit node's token, as circuit-tracer's ``LogitTarget`` (``token_str``, ``vocab_idx``)."""

    token_str: str
    vocab_idx: int


class NodeInfo(NamedTuple):
    """What a node is: ``kind`` in ``NODE_KINDS``; ``layer`` (-1 for tokens, ``n_layers`` for logits),
    ``pos`` (the last position for logits), ``feature`` (feature index, or the token id for token and logit
    nodes, -1 for errors)."""

    kind: str
    layer: int
    pos: int
    feature: int


class GraphNodes:
    """Node addressing for :class:`~gemscope_widgets.backend.circuits.graph.AttributionGraph` (a mixin: it reads
    the graph's fields and sizes)."""

    n_layers: int
    input_tokens: Tensor
    logit_tokens: Tensor
    logit_probabilities: Tensor
    active_features: Tensor
    selected_features: Tensor
    activation_values: Tensor
    input_token_strings: list[str] | None
    logit_token_strings: list[str] | None
    feature_labels: dict[tuple[int, int], str]

    # ---- sizes and slices ----------------------------------------------------------------------------------

    @property
    def n_pos(self) -> int:
        """Number of prompt positions (``len(input_tokens)``)."""
        return int(self.input_tokens.numel())

    @property
    def n_active(self) -> int:
        """Number of active features on the prompt (rows of ``active_features``)."""
        return int(self.active_features.shape[0])

    @property
    def n_selected(self) -> int:
        """Number of feature nodes."""
        return int(self.selected_features.numel())

    @property
    def n_logits(self) -> int:
        """Number of logit nodes."""
        return int(self.logit_tokens.numel())

    @property
    def n_nodes(self) -> int:
        """Total number of nodes."""
        return self.n_selected + (self.n_layers + 1) * self.n_pos + self.n_logits

    @property
    def feature_slice(self) -> slice:
        return slice(0, self.n_selected)

    @property
    def error_slice(self) -> slice:
        return slice(self.n_selected, self.n_selected + self.n_layers * self.n_pos)

    @property
    def token_slice(self) -> slice:
        start = self.n_selected + self.n_layers * self.n_pos
        return slice(start, start + self.n_pos)

    @property
    def logit_slice(self) -> slice:
        start = self.n_selected + (self.n_layers + 1) * self.n_pos
        return slice(start, start + self.n_logits)

    @property
    def logit_token_ids(self) -> Tensor:
        """Alias of ``logit_tokens`` (circuit-tracer 0.5's name)."""
        return self.logit_tokens

    @property
    def logit_targets(self) -> list[LogitTarget]:
        """The logit nodes as circuit-tracer 0.5's ``LogitTarget(token_str, vocab_idx)`` records."""
        strings = self.logit_token_strings or [""] * self.n_logits
        return [LogitTarget(s, int(t)) for s, t in zip(strings, self.logit_tokens.tolist(), strict=True)]

    @property
    def selected_active_features(self) -> Tensor:
        """``[n_selected, 3]`` (layer, pos, feature) of the feature nodes, in node order."""
        return self.active_features[self.selected_features]

    @property
    def selected_activation_values(self) -> Tensor:
        """``[n_selected]`` activations of the feature nodes, in node order."""
        return self.activation_values[self.selected_features]

    # ---- nodes -----------------------------------------------------------------------------------------------

    def _check_node(self, i: Any) -> int:
        try:
            i = int(i)
        except (TypeError, ValueError):
            raise GraphError(f"Node {i!r} is not an integer node index.") from None
        if not 0 <= i < self.n_nodes:
            raise GraphError(f"Node {i} does not exist: this graph has nodes 0..{self.n_nodes - 1}.")
        return int(i)

    def node_kind(self, i: int) -> str:
        """``"feature"``, ``"error"``, ``"token"`` or ``"logit"``."""
        return self.node_info(i).kind

    def node_kinds(self) -> list[str]:
        """The kind of every node, in node order."""
        return (
            ["feature"] * self.n_selected
            + ["error"] * (self.n_layers * self.n_pos)
            + ["token"] * self.n_pos
            + ["logit"] * self.n_logits
        )

    def node_info(self, i: int) -> NodeInfo:
        """``NodeInfo(kind, layer, pos, feature)`` of node ``i``."""
        i = self._check_node(i)
        if i < self.n_selected:
            layer, pos, feature = self.active_features[self.selected_features[i]].tolist()
            return NodeInfo("feature", layer, pos, feature)
        j = i - self.n_selected
        if j < self.n_layers * self.n_pos:
            layer, pos = divmod(j, self.n_pos)
            return NodeInfo("error", layer, pos, -1)
        j -= self.n_layers * self.n_pos
        if j < self.n_pos:
            return NodeInfo("token", -1, j, int(self.input_tokens[j]))
        j -= self.n_pos
        return NodeInfo("logit", self.n_layers, self.n_pos - 1, int(self.logit_tokens[j]))

    def node_index(self, ref: Any) -> int:
        """A node index from an int, a ``(layer, pos, feature)`` feature triple or a Neuronpedia ``node_id``.

        Feature triples and ``node_id``s of features must name a selected feature node, else GraphError.
        """
        if isinstance(ref, str):
            return self._node_from_id(ref)
        if isinstance(ref, (tuple, list)) and len(ref) == 3:
            layer, pos, feature = (int(v) for v in ref)
            match = (self.selected_active_features == torch.tensor([layer, pos, feature])).all(dim=1).nonzero()
            if not len(match):
                raise GraphError(
                    f"Feature {feature} at layer {layer}, position {pos} is not a feature node of this graph."
                )
            return int(match[0, 0])
        return self._check_node(ref)

    def _node_from_id(self, node_id: str) -> int:
        parts = node_id.split("_")
        try:
            if len(parts) != 3:
                raise ValueError(node_id)
            head, a, b = parts[0], int(parts[1]), int(parts[2])
        except ValueError:
            raise GraphError(
                f"Node id {node_id!r} is not of the form layer_feature_pos, layer_-1_pos, E_token_pos or "
                "{n_layers + 1}_token_pos."
            ) from None
        if head == "E":
            return int(self.token_slice.start + self._check_pos(b))
        if head == str(self.n_layers + 1):
            hits = (self.logit_tokens == a).nonzero()
            if not len(hits):
                raise GraphError(f"Token {a} is not a logit node of this graph.")
            return int(self.logit_slice.start + int(hits[0, 0]))
        layer = int(head)
        if a == -1 and 0 <= layer < self.n_layers:
            return int(self.error_slice.start + layer * self.n_pos + self._check_pos(b))
        if layer == 0:
            # "0_{layer}_{pos}" is Neuronpedia's error id, the same shape as a layer-0 feature's id: a selected
            # layer-0 feature wins, otherwise it is the error node.
            match = (self.selected_active_features == torch.tensor([0, b, a])).all(dim=1).nonzero()
            if len(match):
                return int(match[0, 0])
            if 0 <= a < self.n_layers:
                return int(self.error_slice.start + a * self.n_pos + self._check_pos(b))
        return self.node_index((layer, b, a))

    def _check_pos(self, pos: int) -> int:
        if not 0 <= pos < self.n_pos:
            raise GraphError(f"Position {pos} is outside the prompt (0..{self.n_pos - 1}).")
        return pos

    def node_id(self, i: int) -> str:
        """Neuronpedia's node id: ``{layer}_{feature}_{pos}`` (features), ``{layer}_-1_{pos}`` (errors),
        ``E_{token}_{pos}`` (tokens), ``{n_layers + 1}_{token}_{pos}`` (logits)."""
        kind, layer, pos, feature = self.node_info(i)
        if kind == "feature":
            return f"{layer}_{feature}_{pos}"
        if kind == "error":
            return f"{layer}_-1_{pos}"
        if kind == "token":
            return f"E_{feature}_{pos}"
        return f"{self.n_layers + 1}_{feature}_{pos}"

    def _token_text(self, pos: int) -> str:
        if self.input_token_strings is not None:
            return self.input_token_strings[pos]
        return str(int(self.input_tokens[pos]))

    def node_label(self, i: int) -> str:
        """A short human label: ``L3 #1234 @5 " Paris"``, ``error L3 @5``, ``token @5 " Paris"``,
        ``logit " Rome" p=0.412``; a feature's label from ``feature_labels`` is appended after a colon."""
        kind, layer, pos, feature = self.node_info(i)
        if kind == "feature":
            text = f"L{layer} #{feature} @{pos} {self._token_text(pos)!r}"
            label = self.feature_labels.get((layer, feature))
            return f"{text}: {label}" if label else text
        if kind == "error":
            return f"error L{layer} @{pos}"
        if kind == "token":
            return f"token @{pos} {self._token_text(pos)!r}"
        j = i - self.logit_slice.start
        token = self.logit_token_strings[j] if self.logit_token_strings else str(feature)
        return f"logit {token!r} p={float(self.logit_probabilities[j]):.3f}"


def feature_triples(graph: GraphNodes, nodes: Sequence[int]) -> Tensor:
    """``[len(nodes), 3]`` (layer, pos, feature) of feature nodes; GraphError if one is not a feature node."""
    nodes = [graph._check_node(i) for i in nodes]
    bad = [i for i in nodes if i >= graph.n_selected]
    if bad:
        raise GraphError(f"Node(s) {bad} are not feature nodes (features are nodes 0..{graph.n_selected - 1}).")
    return graph.selected_active_features[torch.tensor(nodes, dtype=torch.long)].reshape(-1, 3)
