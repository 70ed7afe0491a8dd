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

import numpy as np
import traitlets

from gemscope_widgets.backend.circuits.node_summary import group_summaries
from gemscope_widgets.backend.stats.holder import shared_holder
from gemscope_widgets.errors import GemscopeError

from .base import ViewWidget, error_text
from .bundle import bundle_path
from .circuit_heads import HeadRelay
from .circuit_payload import (  # noqa: F401 (the view's public names, also importable from here)
    KIND_CODES,
    MAX_EDGES,
    CircuitError,
    as_transcoder_set,
    encode_graph,
    feature_dictionary,
    kept_flags,
    payload_arrays,
)
from .feature_pane import FeaturePane
from .messages import PING, MessageTable
from .paned import PanedView
from .static_circuit import circuit_html, feature_label

_BUNDLE = bundle_path("circuit")

class Circuit(ViewWidget):
    """An attribution graph in a notebook cell; build it with ``scope.circuit(prompt)`` or ``graph.widget()``.

    Hover a node for its label, activation and top logits; click it to select it (its strongest inputs and
    outputs are highlighted, and :meth:`on_click` callbacks run, e.g. to open the feature pane); shift-click to
    add to the selection; "intervene" clamps or scales the selected features and shows the logit change
    (via ``graph.intervene``); "pin" keeps the selected nodes drawn whatever the thresholds, and pins are
    saved with the notebook.
    """

    _esm = _BUNDLE

    MESSAGES: ClassVar[MessageTable] = {
        "intervene": {"mode": frozenset({"set", "scale"}), "value": (float,)},
        "group": {"name": (str,)},
        "ungroup": {"name": (str,)},
        "suggest_groups": {},
        "accept_suggestion": {"index": (int,)},
        "edge_heads": {"source": (int,), "target": (int,), "request": (int,)},
        "head_qk": {"layer": (int,), "head": (int,), "query_pos": (int,), "key_pos": (int,), "request": (int,)},
        "ping": PING,
    }
    """What the view sends (``CircuitMessage`` in ``js/lib/protocol.ts``): intervene on the selected features;
    group the selected nodes under a name (a supernode, ``graph.group``); ungroup one; ask for suggested groups
    (``graph.suggest_groups`` at the view's thresholds) and accept one by its place in the list; ask which heads
    carry an edge, or why a head attends (answered by a ``CircuitReply`` message, :mod:`.circuit_heads`)."""
    HANDLERS: ClassVar[dict[str, str]] = {"intervene": "_on_intervene", "group": "_on_group", "ungroup": "_on_ungroup",
                                          "suggest_groups": "_on_suggest_groups",
                                          "accept_suggestion": "_on_accept_suggestion",
                                          "edge_heads": "_on_edge_heads", "head_qk": "_on_head_qk"}
    """Message type -> the method it calls (see :mod:`.base`)."""
    REPORTED = (Exception,)
    """A view's request must end in a message in the view, never a silent log line (:meth:`report_error`)."""

    _header = traitlets.Dict().tag(sync=True)
    """JSON description of the graph and of where each array lies in ``_data``."""
    _data = traitlets.Bytes(b"").tag(sync=True)
    """Node arrays and COO edges (see :func:`encode_graph`)."""
    _kept = traitlets.Bytes(b"").tag(sync=True)
    """``graph.prune()`` at the view's thresholds: one byte per payload node, then per payload edge (1: kept)."""
    _kept_at = traitlets.Dict().tag(sync=True)
    """The thresholds ``_kept`` was computed at, prune()'s node and edge counts, and what the payload lacks."""
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
    show_all = traitlets.Bool(False).tag(sync=True)
    """False (the default): the view opens on the legible subgraph (``legible_subgraph``: prune()'s nodes with the
    most influence on the top logit) and says what it leaves out; True: everything prune() keeps."""
    supernodes = traitlets.Dict().tag(sync=True)
    """``{name: [graph node index, ...]}``: the graph's supernodes (``graph.supernodes``, saved in its
    ``qParams.supernodes``); each is drawn as one node with summed edges. Set through :meth:`group` /
    :meth:`ungroup` (or the view's "group" control)."""
    _groups: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    """Each supernode read as one node against the payload's nodes (``node_summary.group_summaries``)."""
    group_message = traitlets.Unicode("").tag(sync=True)
    """Why the last grouping from the view failed ("" when it did not)."""
    suggestions = traitlets.Dict().tag(sync=True)
    """The view's suggested groups (:meth:`suggest_groups`): ``{"state": "done"|"error", "at": [node_threshold,
    edge_threshold], "items": [{"name", "members", "retention", "influence", "cosine"}], "dropped", "message",
    "request"}`` (``request`` counts the requests); an accepted item leaves the list. ``{}`` before the first."""
    intervention = traitlets.Dict().tag(sync=True)
    """The last intervention: ``{"state": "running"|"done"|"error", "nodes", "mode", "value", "rows": [[token,
    before, after], ...], "message"}`` with next-token probabilities before and after (None: not in the top list)."""

    def __init__(self, graph: Any, header: dict[str, Any], data: bytes, **kwargs: Any) -> None:
        self.graph = graph
        self._click_callbacks: list[Callable[[int], Any]] = []
        self.heads = HeadRelay(graph)  # the attention panel's answers, cached per graph
        super().__init__(_header=header, _data=data, **kwargs)
        self.observe(self._on_clicked, names="clicked")
        self.observe(self._reprune, names=["node_threshold", "edge_threshold"])
        self._reprune()
        self._sync_groups()

    @classmethod
    def build(
        cls,
        graph: Any,
        *,
        model: Any = None,
        transcoders: Any = None,
        node_threshold: float = 0.8,
        edge_threshold: float = 0.98,
        max_edges: int | None = None,
        show_all: bool = False,
    ) -> Circuit:
        """The view of ``graph``. ``model`` and ``transcoders`` (default: those attached by ``attribute``) add
        each feature's top promoted tokens to its hover card. At ``node_threshold`` / ``edge_threshold`` the view
        draws exactly the nodes and edges of ``graph.prune(node_threshold, edge_threshold)``; ``max_edges`` caps the
        edges sent to the browser (default: :data:`MAX_EDGES`, prune()'s edges first), and the view says how many of
        prune()'s edges a cap left out. The view opens on the legible subgraph (:attr:`show_all` False) unless
        ``show_all``."""
        replacement = getattr(graph, "replacement", None)
        if model is None and replacement is not None:
            model = getattr(replacement, "model", None)
        if transcoders is None and replacement is not None:
            transcoders = getattr(replacement, "transcoders", None)
        header, data = encode_graph(
            graph, node_threshold=node_threshold, edge_threshold=edge_threshold, max_edges=max_edges, model=model,
            transcoders=transcoders,
        )
        return cls(graph, header, data, node_threshold=node_threshold, edge_threshold=edge_threshold,
                   show_all=bool(show_all))

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

    def group(self, name: str, nodes: Any = None) -> list[int]:
        """Group ``nodes`` (default: the selected nodes) as the supernode ``name`` (``graph.group``; stored in
        the graph's ``qParams.supernodes``) and draw it as one node; returns the member node indices. Raises
        GraphError as ``graph.group`` does (no name, fewer than two nodes, a node of another group, a logit)."""
        members = self.graph.group(name, list(self.selected) if nodes is None else nodes)
        self._sync_groups()
        return list(members)

    def ungroup(self, name: str) -> None:
        """Remove the supernode ``name`` (``graph.ungroup``); its nodes are drawn one by one again."""
        self.graph.ungroup(name)
        self._sync_groups()

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
        except Exception as exc:
            self.intervention = {**base, "state": "error", "rows": [], "message": error_text(exc)}
            raise
        tokens = self.graph.input_token_strings or []
        changed = [
            [feature_label(layer, feature, pos, tokens[pos] if pos < len(tokens) else ""), act, target]
            for _node, layer, pos, feature, act, target in result.changes
        ]
        rows = intervention_rows(result)
        self.intervention = {**base, "state": "done", "rows": rows, "changed": changed, "message": ""}
        return self.intervention

    def static_html(self) -> str:
        """Script-free HTML of what the view draws (a saved notebook's fallback; see :mod:`.static_circuit`)."""
        return circuit_html(self)

    # --- events ----------------------------------------------------------------------------------------------

    def _reprune(self, _change: Any = None) -> None:
        """Recompute which payload nodes and edges ``graph.prune()`` keeps at the current thresholds (at build, the
        payload's own flags when it was pruned at these thresholds)."""
        pruned = self._header.get("pruned") or {}
        here = {"node_threshold": float(self.node_threshold), "edge_threshold": float(self.edge_threshold)}
        if _change is None and {k: pruned.get(k) for k in here} == here and "kept" in self._header["nodes"]:
            nodes = payload_arrays(self._header, self._data, "nodes", "kept")
            edges = payload_arrays(self._header, self._data, "edges", "kept")
            with self.hold_sync():
                self._kept = np.concatenate([nodes, edges]).astype(np.uint8).tobytes()
                self._kept_at = {**pruned, "left_out": self._header.get("left_out")}
            return
        at, flags = kept_flags(
            self.graph, self._header, self._data, float(self.node_threshold), float(self.edge_threshold)
        )
        with self.hold_sync():
            self._kept = flags
            self._kept_at = at

    def _sync_groups(self) -> None:
        """The graph's supernodes into the traits: names and members, and each read as one node."""
        nodes = payload_arrays(self._header, self._data, "nodes", "node")
        with self.hold_sync():
            self.supernodes = {name: list(members) for name, members in self.graph.supernodes.items()}
            self._groups = group_summaries(self.graph, nodes)

    def suggest_groups(self) -> None:
        """List ``graph.suggest_groups`` at the view's thresholds in the view (:attr:`suggestions`), each with how
        much of its members' influence the merged node keeps; nothing is grouped until one is accepted."""
        at = [float(self.node_threshold), float(self.edge_threshold)]
        request = int(self.suggestions.get("request", 0)) + 1  # a repeated answer is still a change the view sees
        try:
            found = self.graph.suggest_groups(node_threshold=at[0], edge_threshold=at[1])
        except GemscopeError as exc:
            self.suggestions = {"state": "error", "at": at, "items": [], "dropped": 0, "message": str(exc),
                                "request": request}
            return
        items = [{"name": s.name, "members": [int(m) for m in s.members], "retention": float(s.retention),
                  "influence": float(s.influence), "cosine": float(s.mean_cosine)} for s in found]
        self.suggestions = {"state": "done", "at": at, "items": items, "dropped": int(found.dropped), "message": "",
                            "request": request}

    def _on_suggest_groups(self) -> None:
        try:
            self.suggest_groups()
        except Exception as exc:  # the view waits for an answer: it must get one, with the reason
            at = [float(self.node_threshold), float(self.edge_threshold)]
            self.suggestions = {"state": "error", "at": at, "items": [], "dropped": 0, "message": error_text(exc),
                                "request": int(self.suggestions.get("request", 0)) + 1}

    def _on_accept_suggestion(self, index: int) -> None:
        items = list(self.suggestions.get("items", []))
        if not 0 <= index < len(items):
            self.group_message = "That suggestion is no longer listed: ask for suggestions again."
            return
        item = items[index]
        try:
            self.group(item["name"], item["members"])
        except GemscopeError as exc:  # e.g. a member grouped by hand since
            self.group_message = str(exc)
            return
        self.group_message = ""
        self.suggestions = {**self.suggestions, "items": items[:index] + items[index + 1:]}

    def _on_clicked(self, change: dict[str, Any]) -> None:
        node = int(change["new"])
        if node < 0:
            return
        for callback in self._click_callbacks:
            callback(node)

    def _on_edge_heads(self, source: int, target: int, request: int) -> None:
        self.send(self.heads.edge_heads(source, target, request))

    def _on_head_qk(self, layer: int, head: int, query_pos: int, key_pos: int, request: int) -> None:
        self.send(self.heads.head_qk(layer, head, query_pos, key_pos, request))

    def report_error(self, exc: BaseException) -> None:
        """A failed request from the view is shown as the intervention's error line."""
        self.intervention = {**self.intervention, "state": "error", "rows": [], "message": error_text(exc)}

    def _on_intervene(self, mode: str, value: float) -> None:
        features = set(range(self.graph.n_selected))
        nodes = [n for n in self.selected if n in features]
        self.intervene(nodes, mode=mode, value=float(value))

    def _on_group(self, name: str) -> None:
        self._group_from_view("group", name)

    def _on_ungroup(self, name: str) -> None:
        self._group_from_view("ungroup", name)

    def _group_from_view(self, kind: str, name: str) -> None:
        try:
            if kind == "group":
                self.group(name.strip())
                self.selected = []
            else:
                self.ungroup(name)
        except GemscopeError as exc:  # said next to the group control, not in the intervention result
            self.group_message = str(exc)
            return
        self.group_message = ""


def intervention_rows(result: Any) -> list[list[Any]]:
    """``[[token, p_before, p_after], ...]`` from an ``InterventionResult``'s ``compared`` list: the graph's logit
    tokens first, then the other tokens of the top lists before and after, every probability known."""
    return [[str(text), float(before), float(after)] for _id, text, before, after in result.compared]


class CircuitExplorer(PanedView):
    """``scope.circuit(prompt)``: a :class:`Circuit` with the feature pane of the clicked feature beneath.

    A click on a feature node opens it in a :class:`FeaturePane` of the dictionary holding it: that layer's
    transcoder (one pane per layer), or for a cross-layer transcoder the CLT itself (one pane for all layers, the
    feature given by its index across the CLT). Panes are built on first use and kept. The graph itself is
    :attr:`graph`; the view is :attr:`circuit` (also :attr:`view`); :attr:`transcoders` is the
    :class:`~gemscope_widgets.backend.circuits.transcoder_set.TranscoderSet`.
    """

    def __init__(self, model: Any, graph: Any, transcoders: Any, circuit: Circuit) -> None:
        self.model = model
        self.graph = graph
        self.circuit = circuit
        self.transcoders = as_transcoder_set(transcoders)
        super().__init__(circuit)
        circuit.on_click(self._open_pane)

    @classmethod
    def build(cls, model: Any, graph: Any, transcoders: Any, **kwargs: Any) -> CircuitExplorer:
        """Builds the view of ``graph`` (keywords as :meth:`Circuit.build`)."""
        tset = as_transcoder_set(transcoders)
        return cls(model, graph, tset, Circuit.build(graph, model=model, transcoders=tset, **kwargs))

    def show_feature(self, node: Any) -> FeaturePane:
        """Opens the pane of feature node ``node`` (index, ``(layer, pos, feature)`` or node id)."""
        kind, layer, _, feature = self.graph.node_info(self.graph.node_index(node))
        if kind != "feature":
            raise CircuitError(f"Node {node!r} is a {kind} node; only feature nodes have a feature pane.")
        found = feature_dictionary(self.transcoders, layer, feature)
        if found is None:
            raise CircuitError(f"No transcoder for layer {layer} in this set; its features have no pane.")
        dictionary, index = found
        if layer not in self.panes:  # a CLT's layers share its one pane
            same = next((p for p in self.panes.values() if p.sae is dictionary), None)
            if same is not None:
                self.panes[layer] = same

        def make() -> FeaturePane:
            holder = shared_holder(self.model, dictionary)
            holder.find_cached()
            return FeaturePane(self.model, dictionary, None, feature=index, holder=holder)

        return self.open_pane(layer, index, make)

    def _open_pane(self, node: int) -> None:
        kind, layer, _, feature = self.graph.node_info(node)
        if kind == "feature" and feature_dictionary(self.transcoders, layer, feature) is not None:
            self.show_feature(node)


def graph_view(
    graph: Any, *, model: Any = None, transcoders: Any = None, **kwargs: Any
) -> CircuitExplorer | Circuit:
    """``graph.widget()``: the view of ``graph``, with the clicked feature's pane beneath when the model and
    transcoders are known (given here, or attached by ``attribute`` / ``graph.attach``), else the view alone.
    Keywords as :meth:`Circuit.build` (``node_threshold``, ``edge_threshold``, ``max_edges``, ``show_all``)."""
    replacement = getattr(graph, "replacement", None)
    if model is None and replacement is not None:
        model = replacement.model
    if transcoders is None and replacement is not None:
        transcoders = replacement.transcoders
    if model is not None and transcoders is not None:
        return CircuitExplorer.build(model, graph, transcoders, **kwargs)
    return Circuit.build(graph, **kwargs)
