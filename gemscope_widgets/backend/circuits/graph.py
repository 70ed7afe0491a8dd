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

The pieces live in modules of their own, re-exported here: node addressing (:mod:`.nodes`), influence and
pruning (:mod:`.influence`), graph files (:mod:`.graph_file`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gemscope_widgets.backend.circuits.graph_file import (
    FORMAT,
    FORMAT_VERSION,
    OPTIONAL,
    TENSORS,
    load_graph,
    save_graph,
)
from gemscope_widgets.backend.circuits.graph_steering import graph_steering_session, steer_graph
from gemscope_widgets.backend.circuits.group_suggestions import suggest_groups
from gemscope_widgets.backend.circuits.influence import (
    PruneResult,
    compute_edge_influence,
    compute_influence,
    compute_node_influence,
    find_threshold,
    graph_scores,
    normalize_matrix,
    prune_graph,
)
from gemscope_widgets.backend.circuits.intervention import attach_replacement, intervene_graph
from gemscope_widgets.backend.circuits.nodes import NODE_KINDS, GraphNodes, LogitTarget, NodeInfo, feature_triples
from gemscope_widgets.backend.views import view_factory
from gemscope_widgets.errors import GraphError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "NODE_KINDS",
    "AttributionGraph",
    "GraphError",
    "LogitTarget",
    "NodeInfo",
    "PruneResult",
    "compute_edge_influence",
    "compute_influence",
    "compute_node_influence",
    "feature_triples",
    "find_threshold",
    "normalize_matrix",
]


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
class AttributionGraph(GraphNodes):
    """An attribution graph of one prompt (see the module docstring for node order and conventions).

    Fields (circuit-tracer's ``Graph`` names):
        input_string: the prompt text.
        input_tokens: ``[n_pos]`` long, the token ids (``<bos>`` at position 0; -1 where a graph file did not
            say).
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

    @property
    def logit_weights(self) -> Tensor:
        """``[n_nodes]``: the logit probabilities on the logit nodes, zero elsewhere (influence's seed)."""
        w = torch.zeros(self.n_nodes)
        w[self.logit_slice] = self.logit_probabilities
        return w

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
        return prune_graph(
            self.adjacency_matrix,
            self.logit_weights,
            self.n_selected,
            self.n_pos + self.n_logits,
            node_threshold,
            edge_threshold,
        )

    def scores(self, pinned: Any = None) -> tuple[float, float]:
        """``(replacement_score, completeness_score)`` as circuit-tracer's ``compute_graph_scores``: the share
        of token→logit influence that avoids error nodes, and the influence-weighted share of node inputs that
        come from features or tokens rather than errors.

        ``pinned`` (node references, as :meth:`intervene` takes them, supernode names included): the scores of
        that subgraph as Neuronpedia's graph viewer computes them (``score.worker.ts``): every feature node not
        pinned is merged into the error node of its layer and position (its outgoing edges added to the error
        node's, its own edges removed), so what the pinned features do not explain counts as error; where that
        error node has no edge at all (pruned from a file), the feature is removed without merging, as there.
        """
        if pinned is None:
            return graph_scores(self.adjacency_matrix, self.logit_weights, self.token_slice, self.error_slice)
        groups = self.supernodes
        refs = [m for ref in pinned for m in (groups[ref] if isinstance(ref, str) and ref in groups else [ref])]
        keep = torch.zeros(self.n_nodes, dtype=torch.bool)
        keep[[self.node_index(ref) for ref in refs]] = True
        merged = ~keep[: self.n_selected]
        features = merged.nonzero().flatten()
        layer, pos = self.selected_active_features[features, 0], self.selected_active_features[features, 1]
        errors = self.error_slice.start + layer * self.n_pos + pos
        adj = self.adjacency_matrix.clone().float()
        # As the viewer: an error node with no edge at all (pruned from the file) takes nothing; the feature goes.
        has_edges = (adj[errors] != 0).any(1) | (adj[:, errors] != 0).any(0)
        adj.index_add_(1, errors[has_edges], adj[:, features[has_edges]])
        adj[features] = 0
        adj[:, features] = 0
        return graph_scores(adj, self.logit_weights, self.token_slice, self.error_slice)

    # ---- interventions ---------------------------------------------------------------------------------------

    def intervene(
        self,
        interventions: Any,
        *,
        mode: str = "set",
        top_k: int = 10,
        freeze_attention: bool = False,
        constrained_layers: Any = None,
    ) -> Any:
        """Clamp (``mode="set"``), scale (``mode="scale"``) or ablate (``mode="ablate"``) chosen feature nodes and
        re-run the model.

        ``interventions`` maps node references (node index, ``(layer, pos, feature)``, Neuronpedia node id, or a
        supernode's name: every member feature) to a value (the activation to clamp to, or the factor to scale by);
        for ``"ablate"`` a list of references will do. ``freeze_attention=True`` holds every attention pattern at
        its value on the prompt; ``constrained_layers`` (e.g. ``range(graph.n_layers)``) holds those layers' MLP
        outputs at the prompt's values except for the intervened features (and freezes attention; with every layer,
        every norm scale too), as circuit-tracer's ``feature_intervention``: then each target's input changes by
        ``δ / a × adjacency_matrix[target, source]`` (see :mod:`.intervention`). The defaults re-run the model
        iteratively (effects propagate through everything).
        Returns an :class:`~gemscope_widgets.backend.circuits.intervention.InterventionResult`: the top ``top_k``
        logits and the logit nodes' probabilities before and after, every node's input before and after
        (``node_input_changes``) and the changes the graph's edges predict (``predicted_input_changes``).

        Needs the model and transcoders the graph was built with (attached by ``attribute``); a loaded graph
        raises GraphError until ``graph.attach(model, transcoders)`` is called. Raises GraphError for
        ``constrained_layers`` outside ``0..n_layers − 1``.
        """
        return intervene_graph(
            self,
            interventions,
            mode=mode,
            top_k=top_k,
            freeze_attention=freeze_attention,
            constrained_layers=constrained_layers,
        )

    def steer(self, interventions: Any, *, mode: str = "set", positions: str = "all", **kwargs: Any) -> Any:
        """Baseline and steered multi-token continuations of the graph's prompt, with feature nodes (or supernodes)
        steered at ``positions`` (``"all"``, ``"prompt"``, ``"generated"``) through the package's ``generate``:
        ``mode`` ``"set"`` (clamp to the value), ``"scale"`` (clamp to value × the node's activation on the
        prompt), ``"ablate"`` or ``"add"`` (value × the decoder row). Keywords go to ``generate``
        (``max_new_tokens``, ``temperature``, ``on_token`` to stream). Returns a ``GenerationResult``; see
        :mod:`.graph_steering`. Raises GraphError as :meth:`intervene` does.
        """
        return steer_graph(self, interventions, mode=mode, positions=positions, **kwargs)

    def steering_session(self, interventions: Any, *, mode: str = "set", positions: str = "all",
                         **settings: Any) -> Any:
        """A ``SteeringSession`` on the graph's prompt holding the steering of :meth:`steer`: ``run()`` streams
        baseline and steered tokens to its ``listener`` in the background (the steering widget's session)."""
        return graph_steering_session(self, interventions, mode=mode, positions=positions, **settings)

    def attach(self, model: Any, transcoders: Any) -> AttributionGraph:
        """Attach the model and transcoder set (e.g. after :meth:`load`) so :meth:`intervene` can run.

        Raises GraphError for a graph whose token ids are not all known (read from a file without them)."""
        unknown = (self.input_tokens < 0).nonzero().flatten().tolist()
        if unknown:
            raise GraphError(
                f"Position(s) {unknown} of this graph have no token id (its file had no embedding node there), so "
                "it cannot be re-run on a model; attribute the prompt again instead."
            )
        attach_replacement(self, model, transcoders)
        return self

    # ---- attention: QK attribution ---------------------------------------------------------------------------

    def qk(self, layer: int, head: int, query_pos: int, key_pos: int, *, top: int = 10, target: Any = None) -> Any:
        """Why head ``head`` of ``layer`` attends from ``query_pos`` to ``key_pos``: its pre-softmax score split
        into (query node, key node) pairs (Kamath et al. 2025; a
        :class:`~gemscope_widgets.backend.circuits.qk.QKAttribution`, see :mod:`.qk`). The trace is kept in
        ``info["qk_tracing"]`` under ``target`` (default: the top logit at the last position, else the error node
        of ``layer`` at ``query_pos``) for the graph files. Needs the model attached (as :meth:`intervene`).
        Raises GraphError for a layer, head or position out of range, a key after the query or outside the
        sliding window."""
        from gemscope_widgets.backend.circuits.qk import trace_head

        return trace_head(self, layer, head, query_pos, key_pos, top=top, target=target)

    # ---- attention: head loadings ----------------------------------------------------------------------------

    def edge_heads(self, source: Any, target: Any) -> Any:
        """Which attention heads carry the edge ``source -> target`` (positions j ≠ i): its weight split exactly
        over (layer, query head), each path credited to the head of its last position-crossing hop (Kamath et al.
        2025's head loadings, in the frozen replacement model; see :mod:`.head_loadings`). Returns an
        :class:`~gemscope_widgets.backend.circuits.head_loadings.EdgeHeads` (``shares [n_layers, n_heads]``
        summing to ``weight``; ``heads``, largest ``|share|`` first). Needs the model attached (as :meth:`intervene`).
        Raises GraphError for an unknown node, a same-position edge, a target that is not a feature or logit."""
        from gemscope_widgets.backend.circuits.head_loadings import edge_heads

        return edge_heads(self, source, target)

    def head_loadings(self, node_threshold: float = 0.8, edge_threshold: float = 0.98, *,
                      progress: bool = True) -> Any:
        """Head loadings of every cross-position edge of the graph pruned by :meth:`prune` with these thresholds
        (a :class:`~gemscope_widgets.backend.circuits.head_loadings.HeadLoadings`, cached per graph)."""
        from gemscope_widgets.backend.circuits.head_loadings import head_loadings

        return head_loadings(self, node_threshold, edge_threshold, progress=progress)

    def top_heads(self, k: int = 10, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> list[Any]:
        """The ``k`` heads carrying the most cross-position influence over the kept cross-position edges of the
        pruned graph (:meth:`head_loadings`): ``HeadSummary(layer, head, influence, abs_share, n_top)``."""
        return list(self.head_loadings(node_threshold, edge_threshold).top(k))

    # ---- supernodes ----------------------------------------------------------------------------------------------

    def group(self, name: str, nodes: Any) -> list[int]:
        """Group ``nodes`` (indices, ``(layer, pos, feature)`` or node ids) as the supernode ``name``, stored as
        Neuronpedia's ``qParams.supernodes``; returns the member indices (see :mod:`.supernodes`)."""
        from gemscope_widgets.backend.circuits.supernodes import group

        return group(self, name, nodes)

    def ungroup(self, name: str) -> None:
        """Remove the supernode ``name``."""
        from gemscope_widgets.backend.circuits.supernodes import ungroup

        ungroup(self, name)

    @property
    def supernodes(self) -> dict[str, list[int]]:
        """``{name: [node index, ...]}`` of the graph's supernodes (made here or read from a graph file)."""
        from gemscope_widgets.backend.circuits.supernodes import supernodes

        return supernodes(self)

    def suggest_groups(self, **kwargs: Any) -> Any:
        """Suggested supernodes among the kept features: same position (or layer band) and similar outgoing edges
        (optionally shared logit-lens tokens), each with how well it preserves the graph's logit influence, groups
        that keep under 80% of it left out. Nothing changes
        until a suggestion is accepted (``s.accept(graph)`` or ``graph.group(s.name, s.members)``). Keywords and
        thresholds: :func:`~.group_suggestions.suggest_groups`; returns a ``GroupSuggestions``."""
        return suggest_groups(self, **kwargs)

    def grouped(self) -> Any:
        """The graph with each supernode merged into one node: summed edges and influence (a ``GroupedGraph``)."""
        from gemscope_widgets.backend.circuits.supernodes import grouped

        return grouped(self)

    # ---- Neuronpedia graph JSON -------------------------------------------------------------------------------

    def to_neuronpedia(self, slug: str | None = None, **kwargs: Any) -> dict[str, Any]:
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
        from gemscope_widgets.backend.circuits.neuronpedia_import import from_neuronpedia

        return from_neuronpedia(source)

    # ---- view --------------------------------------------------------------------------------------------------

    def widget(self, **kwargs: Any) -> Any:
        """This graph drawn live in a notebook cell (the view of ``scope.circuit``): a ``CircuitExplorer`` (the
        view with the clicked feature's pane beneath) when the model and transcoders are attached (``attribute``
        attaches them; or pass ``model=`` and ``transcoders=``), else the view alone (``Circuit``). Keywords:
        ``node_threshold``, ``edge_threshold``, ``max_edges``.

        The view is part of the widget layer (anywidget), which registers it
        (:func:`~gemscope_widgets.backend.views.register_view`); the backend only asks the registry for it.
        """
        return view_factory("AttributionGraph")(self, **kwargs)

    # ---- files -------------------------------------------------------------------------------------------------

    _TENSORS = TENSORS  # the fields saved as tensors (the others go to the file's JSON header)
    _OPTIONAL = OPTIONAL

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the graph to one ``.safetensors`` file (tensors, with the other fields as JSON in its header)."""
        return save_graph(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AttributionGraph:
        """Read a graph written by :meth:`save`. Raises GraphError for a missing or foreign file."""
        return load_graph(cls, path)

    def __repr__(self) -> str:
        return (
            f"AttributionGraph({self.input_string!r}, {self.n_pos} positions, {self.n_selected} of {self.n_active} "
            f"active features, {self.n_layers} layers, {self.n_logits} logits, {self.n_nodes} nodes)"
        )
