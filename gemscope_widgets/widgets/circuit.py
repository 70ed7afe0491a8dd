"""Circuit: an attribution graph drawn inline in a notebook cell, pruned live, linked to feature panes.

Token positions run across, layers up (token embeddings at the bottom, logits on top). Node size follows
influence on the logits, edge colour the sign of the direct effect and edge width its size. A threshold slider
prunes in the browser without a kernel round trip: every node and edge carries its *cumulative influence
rank* (the share of total influence held by the nodes / edges ranked above it, as circuit-tracer's
``prune_graph`` computes), and the view keeps those under the slider's value.

Data crosses as one binary blob: node arrays and the edges as sparse COO (``uint32`` source and target,
``float32`` weight and rank), described by a JSON header. Token and label text is set as text, never HTML.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import anywidget
import ipywidgets
import numpy as np
import torch
import traitlets

from gemscope_widgets.errors import GemscopeError

from .bundle import bundle_path
from .messages import MessageTable, parse_message

_BUNDLE = bundle_path("circuit")

MAX_EDGES = 20_000  # the strongest edges (by influence) sent to the browser
MAX_NODE_RANK = 0.99  # feature / error nodes ranked below this share of influence are never drawn
KIND_CODES = {"feature": 0, "error": 1, "token": 2, "logit": 3}
NODE_ARRAYS = ("kind", "layer", "pos", "feature", "node", "activation", "influence", "rank")
EDGE_ARRAYS = ("source", "target", "weight", "rank")
_DTYPES = {"uint16": "<u2", "uint32": "<u4", "float32": "<f4"}
_NODE_DTYPES = {
    "kind": "uint16", "layer": "uint16", "pos": "uint16", "feature": "uint32", "node": "uint32",
    "activation": "float32", "influence": "float32", "rank": "float32",
}


class CircuitError(GemscopeError):
    """A bad argument to the circuit view (threshold, node reference, intervention)."""


def _exclusive_rank(scores: torch.Tensor) -> torch.Tensor:
    """Each entry's share of ``scores.sum()`` held by the entries ranked strictly above it (0 for the top one)."""
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores = scores[order].double()
    total = sorted_scores.sum().clamp(min=1e-30)
    before = (torch.cumsum(sorted_scores, 0) - sorted_scores) / total
    out = torch.empty_like(scores, dtype=torch.float32)
    out[order] = before.float()
    return out


class _Blob:
    """Concatenated little-endian arrays with their ``{offset, length, dtype}`` references."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, values: Any, dtype: str) -> dict[str, Any]:
        pad = (-self.size) % 4
        if pad:
            self.parts.append(b"\0" * pad)
            self.size += pad
        arr = np.ascontiguousarray(np.asarray(values, dtype=_DTYPES[dtype]))
        ref = {"offset": self.size, "length": int(arr.size), "dtype": dtype}
        data = arr.tobytes()
        self.parts.append(data)
        self.size += len(data)
        return ref

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def _feature_top_logits(graph: Any, model: Any, transcoders: Any, nodes: list[int], k: int) -> list[list[Any]]:
    """Top ``k`` tokens each feature node's decoder promotes (direct logit effect), ``[]`` when not computable."""
    if model is None or transcoders is None or not nodes:
        return [[] for _ in nodes]
    from gemscope_widgets.backend.analysis.logit_lens import norm_gain
    from gemscope_widgets.backend.gemma.prompts import token_strings

    by_layer = _transcoders_by_layer(transcoders)
    gain = norm_gain(model.final_norm).cpu()
    w_u = model.lm_head.weight.detach()
    out: list[list[Any]] = [[] for _ in nodes]
    rows, where = [], []
    for j, i in enumerate(nodes):
        _, layer, _, feature = graph.node_info(i)
        tc = by_layer.get(layer)
        if tc is None:
            continue
        direction = torch.zeros(model.d_model)
        for vec in tc.write_directions(feature).values():
            direction += vec.detach().float().cpu()
        rows.append(direction * gain)
        where.append(j)
    with torch.inference_mode():
        for a in range(0, len(rows), 64):
            block = torch.stack(rows[a : a + 64]).to(w_u.device, w_u.dtype)
            values, ids = (block @ w_u.T).float().topk(k, dim=-1)
            for r, (vals, toks) in enumerate(zip(values.cpu().tolist(), ids.cpu().tolist())):
                strings = token_strings(model.tokenizer, toks)
                out[where[a + r]] = [[s, float(v)] for s, v in zip(strings, vals)]
    return out


def _transcoders_by_layer(transcoders: Any) -> dict[int, Any]:
    """``{layer: transcoder}`` from a list of one-layer transcoders or a TranscoderSet-like object."""
    if isinstance(transcoders, dict):
        return {int(k): v for k, v in transcoders.items()}
    items = getattr(transcoders, "transcoders", transcoders)
    if isinstance(items, dict):
        return {int(k): v for k, v in items.items()}
    out = {}
    for tc in items:
        layers = tc.config.layers_in
        if len(layers) == 1:
            out[int(layers[0])] = tc
    return out


def encode_graph(
    graph: Any,
    *,
    max_edges: int = MAX_EDGES,
    max_node_rank: float = MAX_NODE_RANK,
    model: Any = None,
    transcoders: Any = None,
    top_logits_k: int = 5,
    max_logit_nodes: int = 256,
) -> tuple[dict[str, Any], bytes]:
    """The graph as ``(header, blob)`` for the browser.

    Nodes sent: every token and logit node, and the feature / error nodes whose cumulative influence rank is
    under ``max_node_rank``. Edges sent: the ``max_edges`` most influential edges between sent nodes (edge
    influence as circuit-tracer's ``compute_edge_influence``, on the graph restricted to the sent nodes).
    Node ``rank`` / edge ``rank`` are exclusive cumulative influence shares in [0, 1): the browser keeps those
    under its thresholds. With ``model`` and ``transcoders``, the ``max_logit_nodes`` most influential
    feature nodes carry their top ``top_logits_k`` promoted tokens.
    """
    if max_edges < 1:
        raise CircuitError(f"max_edges must be positive, got {max_edges}.")
    n = graph.n_nodes
    influence = graph.node_influence().float()
    kinds = graph.node_kinds()
    node_rank = _exclusive_rank(influence)
    always = torch.zeros(n, dtype=torch.bool)
    always[graph.token_slice] = True
    always[graph.logit_slice] = True
    keep = always | ((node_rank < max_node_rank) & (influence > 0))
    nodes = keep.nonzero().flatten()
    local = torch.full((n,), -1, dtype=torch.long)
    local[nodes] = torch.arange(len(nodes))

    edge_scores = graph.edge_influence(keep)
    sub = edge_scores[nodes][:, nodes]
    weights = graph.adjacency_matrix[nodes][:, nodes]
    tgt, src = (sub > 0).nonzero(as_tuple=True)
    scores = sub[tgt, src]
    if len(scores) > max_edges:
        top = torch.topk(scores, max_edges).indices
        tgt, src, scores = tgt[top], src[top], scores[top]
    total_edge = edge_scores[edge_scores > 0].double().sum().clamp(min=1e-30)
    order = torch.argsort(scores, descending=True, stable=True)
    tgt, src, scores = tgt[order], src[order], scores[order]
    edge_rank = ((torch.cumsum(scores.double(), 0) - scores.double()) / total_edge).float()

    infos = [graph.node_info(int(i)) for i in nodes]
    arrays = {
        "kind": [KIND_CODES[kinds[int(i)]] for i in nodes],
        "layer": [info.layer + 1 for info in infos],  # token embeddings (layer -1) sit in row 0
        "pos": [info.pos for info in infos],
        "feature": [max(info.feature, 0) for info in infos],
        "node": nodes.tolist(),
        "activation": _node_values(graph, nodes),
        "influence": influence[nodes].tolist(),
        "rank": torch.where(always[nodes], torch.zeros(len(nodes)), node_rank[nodes]).tolist(),
    }
    blob = _Blob()
    refs = {name: blob.add(arrays[name], _NODE_DTYPES[name]) for name in NODE_ARRAYS}
    edge_refs = {
        "source": blob.add(src.numpy(), "uint32"),
        "target": blob.add(tgt.numpy(), "uint32"),
        "weight": blob.add(weights[tgt, src].numpy(), "float32"),
        "rank": blob.add(edge_rank.numpy(), "float32"),
    }
    features = [j for j, i in enumerate(nodes.tolist()) if kinds[i] == "feature"]
    features.sort(key=lambda j: -float(influence[int(nodes[j])]))
    chosen = features[:max_logit_nodes]
    top = _feature_top_logits(graph, model, transcoders, [int(nodes[j]) for j in chosen], top_logits_k)
    top_logits: dict[str, Any] = {str(j): t for j, t in zip(chosen, top) if t}
    labels = {}
    for j in features:
        _, layer, _, feature = infos[j]
        label = graph.feature_labels.get((layer, feature))
        if label:
            labels[str(j)] = str(label)
    header = {
        "version": 1,
        "prompt": graph.input_string,
        "tokens": list(graph.input_token_strings or [str(t) for t in graph.input_tokens.tolist()]),
        "logit_tokens": list(graph.logit_token_strings or [str(t) for t in graph.logit_tokens.tolist()]),
        "logit_probabilities": [float(p) for p in graph.logit_probabilities.tolist()],
        "n_layers": int(graph.n_layers),
        "n_nodes_total": int(n),
        "n_edges_total": int((graph.adjacency_matrix != 0).sum()),
        "nodes": refs,
        "edges": edge_refs,
        "n_nodes": len(nodes),
        "n_edges": len(scores),
        "labels": labels,
        "top_logits": top_logits,
        "model": graph.model_name or "",
        "scan": graph.scan if isinstance(graph.scan, str) else "",
        "bytes": blob.size,
    }
    return header, blob.bytes()


def _node_values(graph: Any, nodes: torch.Tensor) -> list[float]:
    """Activation of feature nodes, probability of logit nodes, input norm of nothing else (0)."""
    values = torch.zeros(graph.n_nodes)
    values[graph.feature_slice] = graph.selected_activation_values
    values[graph.logit_slice] = graph.logit_probabilities
    return values[nodes].tolist()


class Circuit(anywidget.AnyWidget):
    """An attribution graph in a notebook cell; build it with ``scope.circuit(prompt)`` or ``graph.widget()``.

    Hover a node for its label, activation and top logits; click it to select it (its strongest inputs and
    outputs are highlighted, and :meth:`on_click` callbacks run, e.g. to open the feature pane); shift-click to
    add to the selection; "intervene" clamps or scales the selected features and shows the logit change
    (via ``graph.intervene``); "pin" keeps the selected nodes drawn whatever the thresholds, and pins are
    saved with the notebook.
    """

    _esm = _BUNDLE

    MESSAGES: ClassVar[MessageTable] = {"intervene": {"mode": frozenset({"set", "scale"}), "value": (float,)}}
    """What the view sends (``CircuitMessage`` in ``js/lib/protocol.ts``): intervene on the selected features."""

    _header = traitlets.Dict().tag(sync=True)
    """JSON description of the graph and of where each array lies in ``_data``."""
    _data = traitlets.Bytes(b"").tag(sync=True)
    """Node arrays and COO edges (see :func:`encode_graph`)."""
    node_threshold = traitlets.Float(0.8).tag(sync=True)
    """Keep feature / error nodes covering this share of total influence (circuit-tracer's default 0.8)."""
    edge_threshold = traitlets.Float(0.98).tag(sync=True)
    """Keep edges covering this share of total edge influence (circuit-tracer's default 0.98)."""
    selected = traitlets.List(traitlets.Int()).tag(sync=True)
    """Selected nodes (graph node indices)."""
    pinned = traitlets.List(traitlets.Int()).tag(sync=True)
    """Pinned nodes (graph node indices): always drawn; saved with the notebook."""
    clicked = traitlets.Int(-1).tag(sync=True)
    """The last clicked node (graph node index), -1 for none."""
    intervention = traitlets.Dict().tag(sync=True)
    """The last intervention: ``{"state": "running"|"done"|"error", "nodes", "mode", "value", "rows": [[token,
    before, after], ...], "message"}`` with probabilities before and after."""

    def __init__(self, graph: Any, header: dict[str, Any], data: bytes, **kwargs: Any) -> None:
        self.graph = graph
        self._click_callbacks: list[Callable[[int], Any]] = []
        super().__init__(_header=header, _data=data, **kwargs)
        self.on_msg(self._on_custom_msg)
        self.observe(self._on_clicked, names="clicked")

    @classmethod
    def build(
        cls,
        graph: Any,
        *,
        model: Any = None,
        transcoders: Any = None,
        node_threshold: float = 0.8,
        edge_threshold: float = 0.98,
        max_edges: int = MAX_EDGES,
    ) -> Circuit:
        """The view of ``graph``. ``model`` and ``transcoders`` (default: those attached by ``attribute``) add
        each feature's top promoted tokens to its hover card."""
        replacement = getattr(graph, "replacement", None)
        if model is None and replacement is not None:
            model = getattr(replacement, "model", None)
        if transcoders is None and replacement is not None:
            transcoders = getattr(replacement, "transcoders", None)
        header, data = encode_graph(graph, max_edges=max_edges, model=model, transcoders=transcoders)
        return cls(graph, header, data, node_threshold=node_threshold, edge_threshold=edge_threshold)

    @traitlets.validate("node_threshold", "edge_threshold")
    def _check_threshold(self, proposal: traitlets.Bunch) -> float:
        value = float(proposal["value"])
        if not 0.0 <= value <= 1.0:
            raise CircuitError(f"{proposal['trait'].name} must be between 0 and 1, got {value}.")
        return value

    @traitlets.validate("selected", "pinned")
    def _check_nodes(self, proposal: traitlets.Bunch) -> list[int]:
        n = int(self._header.get("n_nodes_total", 0)) if self._header else 0
        values = [int(v) for v in proposal["value"]]
        bad = [v for v in values if not 0 <= v < n]
        if bad:
            raise CircuitError(f"{proposal['trait'].name}: nodes {bad} do not exist; the graph has nodes 0..{n - 1}.")
        return list(dict.fromkeys(values))

    # --- python API ------------------------------------------------------------------------------------------

    def on_click(self, callback: Callable[[int], Any]) -> None:
        """Call ``callback(node)`` (a graph node index) whenever a node is clicked in the view."""
        self._click_callbacks.append(callback)

    def pin(self, nodes: Any) -> None:
        """Pin nodes (indices, ``(layer, pos, feature)`` triples or Neuronpedia node ids)."""
        self.pinned = [*self.pinned, *(self.graph.node_index(n) for n in nodes)]

    def intervene(self, nodes: Any, *, mode: str = "set", value: float = 0.0) -> dict[str, Any]:
        """Clamp (``mode="set"``) or scale (``mode="scale"``) feature ``nodes`` and show the logit change.

        Returns the :attr:`intervention` record. Errors (a non-feature node, a graph without a model) are shown
        in the view and re-raised.
        """
        nodes = [self.graph.node_index(n) for n in nodes]
        if mode not in ("set", "scale"):
            raise CircuitError(f"mode must be 'set' (clamp) or 'scale', got {mode!r}.")
        if not nodes:
            raise CircuitError("Select at least one feature node to intervene on.")
        base = {"nodes": nodes, "mode": mode, "value": float(value)}
        self.intervention = {**base, "state": "running", "rows": [], "message": ""}
        try:
            result = self.graph.intervene({n: float(value) for n in nodes}, mode=mode)
        except GemscopeError as exc:
            self.intervention = {**base, "state": "error", "rows": [], "message": str(exc)}
            raise
        self.intervention = {**base, "state": "done", "rows": intervention_rows(result), "message": ""}
        return self.intervention

    # --- events ----------------------------------------------------------------------------------------------

    def _on_clicked(self, change: dict[str, Any]) -> None:
        node = int(change["new"])
        if node < 0:
            return
        for callback in self._click_callbacks:
            callback(node)

    def _on_custom_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        try:
            kind, fields = parse_message(content, self.MESSAGES)
            if kind == "intervene":
                features = set(range(self.graph.n_selected))
                nodes = [n for n in self.selected if n in features]
                self.intervene(nodes, mode=fields["mode"], value=float(fields["value"]))
        except GemscopeError as exc:
            if self.intervention.get("state") != "error":
                self.intervention = {"state": "error", "rows": [], "message": str(exc)}


def intervention_rows(result: Any) -> list[list[Any]]:
    """``[[token, p_before, p_after], ...]`` from an intervention result, most likely (before) first."""
    if isinstance(result, dict):
        rows = result.get("rows")
        if rows is not None:
            return [[str(t), float(a), float(b)] for t, a, b in rows]
    before = getattr(result, "before", None)
    after = getattr(result, "after", None)
    if before is not None and after is not None:
        after_map = {str(t): float(p) for t, p in after}
        before_map = {str(t): float(p) for t, p in before}
        tokens = list(dict.fromkeys([str(t) for t, _ in before] + [str(t) for t, _ in after]))
        return [[t, before_map.get(t, float("nan")), after_map.get(t, float("nan"))] for t in tokens]
    raise CircuitError(f"Cannot read an intervention result of type {type(result).__name__}.")


class CircuitExplorer(ipywidgets.VBox):
    """``scope.circuit(prompt)``: a :class:`Circuit` with the feature pane of the clicked feature beneath.

    A click on a feature node opens it in a :class:`FeaturePane` of that layer's transcoder (one pane per
    layer, built on first use and kept). The graph itself is :attr:`graph`; the view is :attr:`circuit`.
    """

    def __init__(self, model: Any, graph: Any, transcoders: Any, circuit: Circuit) -> None:
        self.model = model
        self.graph = graph
        self.circuit = circuit
        self.transcoders = _transcoders_by_layer(transcoders)
        self.panes: dict[int, Any] = {}
        super().__init__([circuit])
        circuit.on_click(self._open_pane)

    @classmethod
    def build(cls, model: Any, graph: Any, transcoders: Any, **kwargs: Any) -> CircuitExplorer:
        """Builds the view of ``graph`` (keywords as :meth:`Circuit.build`)."""
        return cls(model, graph, transcoders, Circuit.build(graph, model=model, transcoders=transcoders, **kwargs))

    @property
    def pane(self) -> Any:
        """The feature pane now shown, or None before the first click on a feature."""
        return self.children[-1] if len(self.children) > 1 else None

    def show_feature(self, node: Any) -> Any:
        """Opens the pane of feature node ``node`` (index, ``(layer, pos, feature)`` or node id)."""
        from .feature_pane import FeaturePane

        kind, layer, _, feature = self.graph.node_info(self.graph.node_index(node))
        if kind != "feature":
            raise CircuitError(f"Node {node!r} is a {kind} node; only feature nodes have a feature pane.")
        if layer not in self.transcoders:
            raise CircuitError(f"No transcoder for layer {layer} in this set; its features have no pane.")
        pane = self.panes.get(layer)
        if pane is None:
            pane = FeaturePane(self.model, self.transcoders[layer], None, feature=feature)
            self.panes[layer] = pane
        elif pane.feature != feature:
            pane.show(feature)
        self.children = (self.circuit, pane)
        return pane

    def _open_pane(self, node: int) -> None:
        kind, layer, _, _ = self.graph.node_info(node)
        if kind == "feature" and layer in self.transcoders:
            self.show_feature(node)
