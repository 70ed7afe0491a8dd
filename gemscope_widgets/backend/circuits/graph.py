"""The attribution graph: nodes, the direct-effect adjacency matrix, influence, pruning, saving.

Field names, node order and the influence/pruning math follow circuit-tracer's ``Graph`` and
``prune_graph`` (``circuit_tracer/graph.py``, decoderesearch/circuit-tracer 0.5.0), which implement
"Circuit Tracing: Revealing Computational Graphs in Language Models" (Ameisen et al., 2025), so code
written for one reads the other.

Node order (``n_nodes = n_selected + n_layers * n_pos + n_pos + n_logits``)::

    selected features (in ``selected_features`` order)
    error nodes       (layer-major, then position: index = n_selected + layer * n_pos + pos)
    token nodes       (one per position)
    logit nodes       (in ``logit_tokens`` order, most likely first)

``adjacency_matrix[target, source]`` is the direct effect of ``source`` on ``target``'s input in the local
replacement model. Only feature and logit nodes have incoming edges (their rows); error and token rows are
zero. ``bias_input[target]`` is the part of the target's input that comes from biases (transcoder
``b_enc``/``b_dec``, attention/MLP-free constant terms) rather than from another node, so
``adjacency_matrix[t].sum() + bias_input[t] == node_inputs[t]`` (completeness). When ``max_feature_nodes`` left
some active features without a node, their direct effects are in ``unselected_input[t]`` and the identity reads
``adjacency_matrix[t].sum() + bias_input[t] + unselected_input[t] == node_inputs[t]``.

Files: ``save(path)`` writes one ``.safetensors`` file whose header metadata holds the non-tensor fields as
JSON; ``load(path)`` reads it back. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from gemscope_widgets.errors import GemscopeError

FORMAT = "gemscope-attribution-graph"
FORMAT_VERSION = 1
NODE_KINDS = ("feature", "error", "token", "logit")


class GraphError(GemscopeError):
    """A malformed attribution graph, a bad node reference or an unreadable graph file."""


class LogitTarget(NamedTuple):
    """A logit node's token, as circuit-tracer's ``LogitTarget`` (``token_str``, ``vocab_idx``)."""

    token_str: str
    vocab_idx: int


class PruneResult(NamedTuple):
    """``prune()``'s answer, as circuit-tracer's ``PruneResult``.

    ``node_mask [n_nodes] bool``, ``edge_mask [n_nodes, n_nodes] bool`` (row = target, column = source),
    ``cumulative_scores [n_nodes]``: each node's cumulative share of total influence when nodes are sorted
    by influence (the value Neuronpedia shows as a node's ``influence``).
    """

    node_mask: Tensor
    edge_mask: Tensor
    cumulative_scores: Tensor


class NodeInfo(NamedTuple):
    """What a node is: ``kind`` in ``NODE_KINDS``; ``layer`` (-1 for tokens, ``n_layers`` for logits),
    ``pos`` (the last position for logits), ``feature`` (feature index, or the token id for token and logit
    nodes, -1 for errors)."""

    kind: str
    layer: int
    pos: int
    feature: int


# ----------------------------------------------------------------------------------------------------------
# Influence and pruning (circuit-tracer's graph.py, same math)


def normalize_matrix(matrix: Tensor) -> Tensor:
    """``|A|`` with each row divided by its sum (rows summing to zero stay zero)."""
    normalized = matrix.abs()
    return normalized / normalized.sum(dim=1, keepdim=True).clamp(min=1e-10)


def compute_influence(a: Tensor, logit_weights: Tensor, max_iter: int = 1000) -> Tensor:
    """``logit_weights @ (A + A² + A³ + …)``, iterated until the product vanishes (the graph is acyclic)."""
    current = logit_weights @ a
    influence = current.clone()
    iterations = 0
    while current.any():
        if iterations >= max_iter:
            raise GraphError(f"Influence did not converge after {iterations} iterations: the graph has a cycle.")
        current = current @ a
        influence += current
        iterations += 1
    return influence


def compute_node_influence(adjacency_matrix: Tensor, logit_weights: Tensor) -> Tensor:
    """Each node's total (direct and indirect) influence on the weighted logits, on the row-normalised |A|."""
    return compute_influence(normalize_matrix(adjacency_matrix), logit_weights)


def compute_edge_influence(pruned_matrix: Tensor, logit_weights: Tensor) -> Tensor:
    """Each edge's influence: its row-normalised weight times its target's influence (logits included)."""
    normalized = normalize_matrix(pruned_matrix)
    influence = compute_influence(normalized, logit_weights) + logit_weights
    return normalized * influence[:, None]


def find_threshold(scores: Tensor, threshold: float) -> Tensor:
    """The score above which the highest scores cover ``threshold`` of the total (circuit-tracer's function).

    Scores are non-negative; only the positive ones are sorted (an edge-score matrix is mostly zeros), which gives
    circuit-tracer's answer: past the positive scores it returns 0.
    """
    positive = scores[scores > 0]
    if positive.numel() == 0:
        return torch.zeros((), dtype=scores.dtype)
    sorted_scores = torch.sort(positive, descending=True).values
    # The total summed as circuit-tracer sums it (over the sorted scores, zeros included): same rounding, same cut.
    total = torch.cat([sorted_scores, sorted_scores.new_zeros(scores.numel() - len(sorted_scores))]).sum()
    cumulative = torch.cumsum(sorted_scores, dim=0) / total
    index = int(torch.searchsorted(cumulative, torch.tensor(threshold, dtype=cumulative.dtype)).item())
    if index >= len(sorted_scores) and len(sorted_scores) < scores.numel():
        return torch.zeros((), dtype=scores.dtype)
    return sorted_scores[min(index, len(sorted_scores) - 1)]


# ----------------------------------------------------------------------------------------------------------


def _long(x: Any, name: str, ndim: int) -> Tensor:
    t = torch.as_tensor(x).detach().cpu()
    if t.is_floating_point():
        raise GraphError(f"{name} must hold integers, got {t.dtype}.")
    t = t.long()
    if t.ndim != ndim and not (t.numel() == 0 and ndim == 2):
        raise GraphError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}.")
    return t.reshape(-1, 3) if ndim == 2 else t


def _f32(x: Any) -> Tensor:
    return torch.as_tensor(x).detach().cpu().float()


@dataclass(eq=False)
class AttributionGraph:
    """An attribution graph of one prompt (see the module docstring for node order and conventions).

    Fields (circuit-tracer's ``Graph`` names):
        input_string: the prompt text.
        input_tokens: ``[n_pos]`` long, the token ids (``<bos>`` at position 0).
        active_features: ``[n_active, 3]`` long, rows of ``(layer, pos, feature)`` of every active feature.
        activation_values: ``[n_active]`` float32, aligned with ``active_features``.
        selected_features: ``[n_selected]`` long, indices into ``active_features`` of the feature nodes.
        adjacency_matrix: ``[n_nodes, n_nodes]`` float32, row = target, column = source.
        logit_tokens: ``[n_logits]`` long, the logit nodes' token ids (circuit-tracer 0.5: ``logit_targets``,
            a list of ``LogitTarget``; both are offered, see :attr:`logit_targets`).
        logit_probabilities: ``[n_logits]`` float32, their softmax probabilities at the last position.
        bias_input: ``[n_nodes]`` float32, the part of each node's input coming from biases, not nodes.
        n_layers: the model's number of layers (error nodes per position).
    Extra:
        node_inputs: ``[n_nodes]`` float32, each feature's pre-activation and each logit's demeaned logit
            (``logit - mean(logits)``) on the prompt; zero for error and token nodes.
        unselected_input: ``[n_nodes]`` float32, the part of each input coming from active features that got no
            node (only when ``max_feature_nodes`` < the number of active features; else zeros or None).
        input_token_strings / logit_token_strings: decoded tokens, for labels.
        model_name: canonical model id (e.g. ``google/gemma-3-270m``).
        scan: the transcoder set's identifier (Neuronpedia's ``scan``) or a list of folder names.
        feature_labels: optional ``{(layer, feature): label}`` used by :meth:`node_label` and exports.
        info: free JSON-able metadata (thresholds, timings, set description).
    """

    input_string: str
    input_tokens: Tensor
    active_features: Tensor
    activation_values: Tensor
    selected_features: Tensor
    adjacency_matrix: Tensor
    logit_tokens: Tensor
    logit_probabilities: Tensor
    bias_input: Tensor
    n_layers: int
    node_inputs: Tensor | None = None
    unselected_input: Tensor | None = None
    input_token_strings: list[str] | None = None
    logit_token_strings: list[str] | None = None
    model_name: str | None = None
    scan: str | list[str] | None = None
    feature_labels: dict[tuple[int, int], str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    # Not saved: what intervene() needs to re-run the model (set by attribute()).
    replacement: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.input_tokens = _long(self.input_tokens, "input_tokens", 1)
        self.active_features = _long(self.active_features, "active_features", 2)
        self.selected_features = _long(self.selected_features, "selected_features", 1)
        self.logit_tokens = _long(self.logit_tokens, "logit_tokens", 1)
        self.activation_values = _f32(self.activation_values)
        self.adjacency_matrix = _f32(self.adjacency_matrix)
        self.logit_probabilities = _f32(self.logit_probabilities)
        self.bias_input = _f32(self.bias_input)
        for name in ("node_inputs", "unselected_input"):
            if getattr(self, name) is not None:
                setattr(self, name, _f32(getattr(self, name)))
        self.n_layers = int(self.n_layers)
        self._validate()

    def _validate(self) -> None:
        n = self.n_nodes
        if self.adjacency_matrix.shape != (n, n):
            raise GraphError(
                f"adjacency_matrix has shape {tuple(self.adjacency_matrix.shape)}; with {self.n_selected} selected "
                f"features, {self.n_layers} layers × {self.n_pos} positions and {self.n_logits} logits it must be "
                f"({n}, {n})."
            )
        for name in ("bias_input", "node_inputs", "unselected_input"):
            t = getattr(self, name)
            if t is not None and t.shape != (n,):
                raise GraphError(f"{name} has shape {tuple(t.shape)}; it must be ({n},).")
        if self.activation_values.shape != (len(self.active_features),):
            raise GraphError("activation_values must have one value per row of active_features.")
        if self.logit_probabilities.shape != self.logit_tokens.shape:
            raise GraphError("logit_probabilities must have one value per logit token.")
        if self.n_selected and (self.selected_features.min() < 0 or self.selected_features.max() >= self.n_active):
            raise GraphError("selected_features must index rows of active_features.")

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

    @property
    def logit_weights(self) -> Tensor:
        """``[n_nodes]``: the logit probabilities on the logit nodes, zero elsewhere (influence's seed)."""
        w = torch.zeros(self.n_nodes)
        w[self.logit_slice] = self.logit_probabilities
        return w

    # ---- nodes -----------------------------------------------------------------------------------------------

    def _check_node(self, i: Any) -> int:
        try:
            i = int(i)
        except (TypeError, ValueError):
            raise GraphError(f"Node {i!r} is not an integer node index.") from None
        if not 0 <= i < self.n_nodes:
            raise GraphError(f"Node {i} does not exist: this graph has nodes 0..{self.n_nodes - 1}.")
        return i

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
                f"Node id {node_id!r} is not of the form layer_feature_pos, 0_layer_pos, E_token_pos or L_token_pos."
            ) from None
        if head == "E":
            return self.token_slice.start + self._check_pos(b)
        if head == str(self.n_layers + 1):
            hits = (self.logit_tokens == a).nonzero()
            if not len(hits):
                raise GraphError(f"Token {a} is not a logit node of this graph.")
            return self.logit_slice.start + int(hits[0, 0])
        layer = int(head)
        if layer == 0:
            # "0_{layer}_{pos}" is Neuronpedia's error id, the same shape as a layer-0 feature's id: a selected
            # layer-0 feature wins, otherwise it is the error node.
            match = (self.selected_active_features == torch.tensor([0, b, a])).all(dim=1).nonzero()
            if len(match):
                return int(match[0, 0])
            if 0 <= a < self.n_layers:
                return self.error_slice.start + a * self.n_pos + self._check_pos(b)
        return self.node_index((layer, b, a))

    def _check_pos(self, pos: int) -> int:
        if not 0 <= pos < self.n_pos:
            raise GraphError(f"Position {pos} is outside the prompt (0..{self.n_pos - 1}).")
        return pos

    def node_id(self, i: int) -> str:
        """Neuronpedia's node id: ``{layer}_{feature}_{pos}`` (features), ``0_{layer}_{pos}`` (errors),
        ``E_{token}_{pos}`` (tokens), ``{n_layers + 1}_{token}_{pos}`` (logits)."""
        kind, layer, pos, feature = self.node_info(i)
        if kind == "feature":
            return f"{layer}_{feature}_{pos}"
        if kind == "error":
            return f"0_{layer}_{pos}"
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

    # ---- influence and pruning -------------------------------------------------------------------------------

    def node_influence(self) -> Tensor:
        """``[n_nodes]``: each node's total influence on the logits, weighted by their probabilities
        (circuit-tracer ``compute_node_influence``). Logit nodes themselves get 0."""
        return compute_node_influence(self.adjacency_matrix, self.logit_weights)

    def edge_influence(self, node_mask: Tensor | None = None) -> Tensor:
        """``[n_nodes, n_nodes]``: each edge's influence (circuit-tracer ``compute_edge_influence``), computed on
        the adjacency matrix restricted to ``node_mask`` when given."""
        matrix = self.adjacency_matrix
        if node_mask is not None:
            matrix = matrix.clone()
            matrix[~node_mask] = 0
            matrix[:, ~node_mask] = 0
        return compute_edge_influence(matrix, self.logit_weights)

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
        """Keep the nodes covering ``node_threshold`` of total influence, then the edges covering
        ``edge_threshold``, then drop nodes left without outgoing (features, errors) or incoming (features) edges,
        until stable. Tokens and logits are always kept. Same algorithm and defaults as circuit-tracer's
        ``prune_graph`` (paper defaults 0.8 / 0.98).

        Raises GraphError for thresholds outside [0, 1].
        """
        for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if not 0.0 <= float(value) <= 1.0:
                raise GraphError(f"{name} must be between 0 and 1, got {value}.")
        n_keep = self.n_pos + self.n_logits  # tokens and logits, at the end
        logit_weights = self.logit_weights
        node_influence = compute_node_influence(self.adjacency_matrix, logit_weights)
        node_mask = node_influence >= find_threshold(node_influence, node_threshold)
        node_mask[-n_keep:] = True

        pruned = self.adjacency_matrix.clone()
        pruned[~node_mask] = 0
        pruned[:, ~node_mask] = 0
        edge_scores = compute_edge_influence(pruned, logit_weights)
        edge_mask = edge_scores >= find_threshold(edge_scores.flatten(), edge_threshold)

        n_feat = self.n_selected
        old = node_mask.clone()
        node_mask[:-n_keep] &= edge_mask[:, :-n_keep].any(0)
        node_mask[:n_feat] &= edge_mask[:n_feat].any(1)
        while not torch.equal(node_mask, old):
            old[:] = node_mask
            edge_mask[~node_mask] = False
            edge_mask[:, ~node_mask] = False
            node_mask[:-n_keep] &= edge_mask[:, :-n_keep].any(0)
            node_mask[:n_feat] &= edge_mask[:n_feat].any(1)

        sorted_scores, order = torch.sort(node_influence, descending=True)
        cumulative = torch.cumsum(sorted_scores, dim=0) / torch.sum(sorted_scores).clamp(min=1e-30)
        scores = torch.zeros_like(node_influence)
        scores[order] = cumulative
        return PruneResult(node_mask, edge_mask, scores)

    def scores(self) -> tuple[float, float]:
        """``(replacement_score, completeness_score)`` as circuit-tracer's ``compute_graph_scores``: the share
        of token→logit influence that avoids error nodes, and the influence-weighted share of node inputs that
        come from features or tokens rather than errors."""
        logit_weights = self.logit_weights
        normalized = normalize_matrix(self.adjacency_matrix)
        influence = compute_influence(normalized, logit_weights)
        token_inf = influence[self.token_slice].sum()
        error_inf = influence[self.error_slice].sum()
        replacement = token_inf / (token_inf + error_inf).clamp(min=1e-30)
        non_error = 1 - normalized[:, self.error_slice].sum(dim=-1)
        out = influence + logit_weights
        completeness = (non_error * out).sum() / out.sum()
        return float(replacement), float(completeness)

    # ---- interventions ---------------------------------------------------------------------------------------

    def intervene(self, interventions: Mapping[Any, float], *, mode: str = "set", top_k: int = 10) -> Any:
        """Clamp (``mode="set"``) or scale (``mode="scale"``) chosen feature nodes and re-run the model.

        ``interventions`` maps node references (node index, ``(layer, pos, feature)`` or Neuronpedia node id) to
        a value (the activation to clamp to, or the factor to scale by). Returns an
        :class:`~gemscope_widgets.backend.circuits.intervention.InterventionResult` with the top ``top_k``
        logits before and after, and the logit nodes' probabilities before and after.

        Needs the model and transcoders the graph was built with (attached by ``attribute``); a loaded graph
        raises GraphError until ``graph.attach(model, transcoders)`` is called.
        """
        from gemscope_widgets.backend.circuits.intervention import intervene_graph

        return intervene_graph(self, interventions, mode=mode, top_k=top_k)

    def attach(self, model: Any, transcoders: Any) -> AttributionGraph:
        """Attach the model and transcoder set (e.g. after :meth:`load`) so :meth:`intervene` can run."""
        from gemscope_widgets.backend.circuits.intervention import attach_replacement

        attach_replacement(self, model, transcoders)
        return self

    # ---- Neuronpedia graph JSON -------------------------------------------------------------------------------

    def to_neuronpedia(self, slug: str = "graph", **kwargs: Any) -> dict[str, Any]:
        """Neuronpedia graph JSON (pruned; see :func:`~.neuronpedia_json.to_neuronpedia`)."""
        from gemscope_widgets.backend.circuits.neuronpedia_json import to_neuronpedia

        return to_neuronpedia(self, slug, **kwargs)

    def save_neuronpedia(self, path: str | os.PathLike[str], slug: str | None = None, **kwargs: Any) -> Path:
        """Write Neuronpedia graph JSON to ``path`` (``.json``)."""
        from gemscope_widgets.backend.circuits.neuronpedia_json import save_neuronpedia

        return save_neuronpedia(self, path, slug, **kwargs)

    @classmethod
    def from_neuronpedia(cls, source: Any) -> AttributionGraph:
        """Read Neuronpedia graph JSON (path or dict), e.g. one downloaded from neuronpedia.org."""
        from gemscope_widgets.backend.circuits.neuronpedia_json import from_neuronpedia

        return from_neuronpedia(source)

    # ---- files -------------------------------------------------------------------------------------------------

    _TENSORS = (
        "input_tokens",
        "active_features",
        "activation_values",
        "selected_features",
        "adjacency_matrix",
        "logit_tokens",
        "logit_probabilities",
        "bias_input",
        "node_inputs",
        "unselected_input",
    )
    _OPTIONAL = ("node_inputs", "unselected_input")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the graph to one ``.safetensors`` file (tensors, with the other fields as JSON in its header)."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            raise GraphError(f"Save attribution graphs as .safetensors files, not {path.name!r}.")
        tensors = {k: getattr(self, k).contiguous() for k in self._TENSORS if getattr(self, k) is not None}
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "input_string": self.input_string,
            "n_layers": self.n_layers,
            "input_token_strings": self.input_token_strings,
            "logit_token_strings": self.logit_token_strings,
            "model_name": self.model_name,
            "scan": self.scan,
            "feature_labels": [[k[0], k[1], v] for k, v in self.feature_labels.items()],
            "info": self.info,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"graph": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AttributionGraph:
        """Read a graph written by :meth:`save`. Raises GraphError for a missing or foreign file."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise GraphError(f"No attribution graph file at {str(path)!r}.")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except Exception as exc:  # safetensors raises its own error types
            raise GraphError(f"{path.name} is not a readable .safetensors file: {exc}") from None
        try:
            meta = json.loads(header["graph"])
            if meta.get("format") != FORMAT:
                raise KeyError("format")
        except (KeyError, ValueError):
            raise GraphError(f"{path.name} is a .safetensors file but not an attribution graph.") from None
        missing = [k for k in cls._TENSORS if k not in tensors and k not in cls._OPTIONAL]
        if missing:
            raise GraphError(f"{path.name} lacks the tensor(s) {missing}.")
        return cls(
            input_string=meta["input_string"],
            n_layers=meta["n_layers"],
            input_token_strings=meta.get("input_token_strings"),
            logit_token_strings=meta.get("logit_token_strings"),
            model_name=meta.get("model_name"),
            scan=meta.get("scan"),
            feature_labels={(int(a), int(b)): str(c) for a, b, c in meta.get("feature_labels", [])},
            info=meta.get("info") or {},
            **{k: tensors.get(k) for k in cls._TENSORS},
        )

    def __repr__(self) -> str:
        return (
            f"AttributionGraph({self.input_string!r}, {self.n_pos} positions, {self.n_selected} of {self.n_active} "
            f"active features, {self.n_layers} layers, {self.n_logits} logits, {self.n_nodes} nodes)"
        )


def feature_triples(graph: AttributionGraph, nodes: Sequence[int]) -> Tensor:
    """``[len(nodes), 3]`` (layer, pos, feature) of feature nodes; GraphError if one is not a feature node."""
    nodes = [graph._check_node(i) for i in nodes]
    bad = [i for i in nodes if i >= graph.n_selected]
    if bad:
        raise GraphError(f"Node(s) {bad} are not feature nodes (features are nodes 0..{graph.n_selected - 1}).")
    return graph.selected_active_features[torch.tensor(nodes, dtype=torch.long)].reshape(-1, 3)
