"""The attribution graph as the circuit view reads it: a JSON header and one binary blob.

What is sent is computed in the backend (:mod:`gemscope_widgets.backend.circuits.node_summary`: the nodes and edges
worth drawing, their ranks, prune()'s flags, each feature's top logits); this module only encodes it.
Nodes sent: every token and logit node and the feature / error nodes that carry influence; every node and edge
carries a ``kept`` flag, set on exactly the nodes and edges ``graph.prune(node_threshold, edge_threshold)`` keeps at
the view's thresholds (what the view draws at those thresholds, and what the Neuronpedia JSON holds), and its
*cumulative influence rank* (the share of total influence held by the nodes / edges ranked above it, as
circuit-tracer's ``prune_graph`` computes), so the browser previews other thresholds without a kernel round trip.
Edges sent: prune()'s edges first, then the other influential edges by influence, up to :data:`MAX_EDGES` (a
browser budget: for a 9-token prompt on the real 270M with 512-wide transcoders, prune() keeps 130,559 edges at the
default thresholds, and the influential edges among the drawable nodes number 1.6 million, 29 MB); what a budget
leaves out of a pruning is counted in the header and said on screen.
Arrays are little-endian (``uint16``/``uint32`` indices, ``float32`` values), edges sparse COO, described by
``{offset, length, dtype}`` references in the header (read by ``js/lib/circuit_graph.ts``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gemscope_widgets.backend.circuits.legible_subgraph import legible_subgraph
from gemscope_widgets.backend.circuits.node_summary import (
    MAX_NODE_RANK,
    as_transcoder_set,
    feature_dictionary,
    feature_top_logits,
    kept_on,
    summarise_nodes,
)
from gemscope_widgets.backend.circuits.score_matrix import score_matrix
from gemscope_widgets.errors import CircuitError

__all__ = ["KIND_CODES", "MAX_EDGES", "CircuitError", "as_transcoder_set", "encode_graph", "feature_dictionary",
           "kept_flags", "payload_arrays"]

MAX_SCORE_ENTRIES = 500_000  # the browser budget of the score matrix (pinned scores recomputed live)
MAX_EDGES = 250_000  # the browser budget of edges by default: prune()'s first (what is left out is said on screen)
KIND_CODES = {"feature": 0, "error": 1, "token": 2, "logit": 3}
NODE_ARRAYS = ("kind", "layer", "pos", "feature", "node", "activation", "influence", "rank", "kept", "focus")
EDGE_ARRAYS = ("source", "target", "weight", "rank", "kept")
_DTYPES = {"uint16": "<u2", "uint32": "<u4", "float32": "<f4"}
_NODE_DTYPES = {
    "kind": "uint16", "layer": "uint16", "pos": "uint16", "feature": "uint32", "node": "uint32",
    "activation": "float32", "influence": "float32", "rank": "float32", "kept": "uint16", "focus": "uint16",
}


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


def encode_graph(
    graph: Any,
    *,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    max_edges: int | None = None,
    max_node_rank: float = MAX_NODE_RANK,
    model: Any = None,
    transcoders: Any = None,
    top_logits_k: int = 5,
    max_logit_nodes: int = 256,
) -> tuple[dict[str, Any], bytes]:
    """The graph as ``(header, blob)`` for the browser.

    Nodes sent: every token and logit node, the feature / error nodes whose cumulative influence rank is under
    ``max_node_rank``, and every node ``graph.prune(node_threshold, edge_threshold)`` keeps. Edges sent: every
    edge with influence between sent nodes (edge influence as circuit-tracer's ``compute_edge_influence``, on the
    graph restricted to the sent nodes; it holds every edge ``prune`` keeps). By default at most :data:`MAX_EDGES`,
    prune()'s edges first, then the others by influence; with ``max_edges`` the ``max_edges`` most influential.
    ``kept`` (0/1) marks exactly ``prune``'s nodes and its edges of nonzero
    weight; node ``rank`` / edge ``rank`` are exclusive cumulative influence shares in [0, 1), by which the browser
    previews other thresholds. The header's ``pruned`` gives the thresholds and counts, ``left_out`` the kept
    nodes and edges a cap left out (and why). With ``model`` and ``transcoders``, the ``max_logit_nodes`` most
    influential feature nodes carry their top ``top_logits_k`` promoted tokens.

    Raises CircuitError for a ``max_edges`` under 1 (GraphError for thresholds outside [0, 1]).
    """
    budget = MAX_EDGES if max_edges is None else max_edges
    summary = summarise_nodes(graph, node_threshold, edge_threshold, max_edges=budget,
                              prune_first=max_edges is None, max_node_rank=max_node_rank)
    left_out: dict[str, Any] | None = None
    if summary.left_out_edges:
        left_out = {
            "nodes": 0,
            "edges": summary.left_out_edges,
            "reason": f"the view holds at most {budget} edges (max_edges, a browser budget)",
        }
    legible = legible_subgraph(graph, node_threshold, edge_threshold)
    arrays = {
        "focus": legible.nodes.numpy()[summary.nodes],
        "kind": [KIND_CODES[k] for k in summary.kinds],
        "layer": summary.layer + 1,  # token embeddings (layer -1) sit in row 0
        "pos": summary.pos,
        "feature": np.maximum(summary.feature, 0),
        "node": summary.nodes,
        "activation": summary.activation,
        "influence": summary.influence,
        "rank": summary.rank,
        "kept": summary.kept,
    }
    blob = _Blob()
    refs = {name: blob.add(arrays[name], _NODE_DTYPES[name]) for name in NODE_ARRAYS}
    edge_refs = {
        "source": blob.add(summary.source, "uint32"),
        "target": blob.add(summary.target, "uint32"),
        "weight": blob.add(summary.weight, "float32"),
        "rank": blob.add(summary.edge_rank, "float32"),
        "kept": blob.add(summary.edge_kept, "uint16"),
    }
    features = [j for j, kind in enumerate(summary.kinds) if kind == "feature"]
    features.sort(key=lambda j: -float(summary.influence[j]))
    chosen = features[:max_logit_nodes]
    promoted = feature_top_logits(graph, model, transcoders, [int(summary.nodes[j]) for j in chosen], top_logits_k)
    top_logits: dict[str, Any] = {str(j): t for j, t in zip(chosen, promoted) if t}
    labels = {str(j): text for j, text in summary.labels.items()}
    scores = _score_section(graph, summary, blob)
    header = {
        "version": 1,
        "prompt": graph.input_string,
        "tokens": list(graph.input_token_strings or [str(t) for t in graph.input_tokens.tolist()]),
        "logit_tokens": list(graph.logit_token_strings or [str(t) for t in graph.logit_tokens.tolist()]),
        "logit_probabilities": [float(p) for p in graph.logit_probabilities.tolist()],
        "n_layers": int(graph.n_layers),
        "n_nodes_total": int(graph.n_nodes),
        "n_edges_total": summary.n_edges_total,
        "nodes": refs,
        "edges": edge_refs,
        "n_nodes": len(summary.nodes),
        "n_edges": len(summary.source),
        "pruned": {
            "node_threshold": float(node_threshold),
            "edge_threshold": float(edge_threshold),
            "n_nodes": summary.n_kept_nodes,
            "n_edges": summary.n_kept_edges,
        },
        "left_out": left_out,
        "max_node_rank": float(max_node_rank),
        "labels": labels,
        "top_logits": top_logits,
        "scores": scores,
        "focus": {
            "logit_token": _logit_text(graph, legible.logit - graph.logit_slice.start),
            "n_chosen": legible.n_chosen,
            "n_pruned": legible.n_pruned,
        },
        "model": graph.model_name or "",
        "scan": graph.scan if isinstance(graph.scan, str) else "",
        "bytes": blob.size,
    }
    return header, blob.bytes()


def _logit_text(graph: Any, j: int) -> str:
    strings = graph.logit_token_strings
    return str(strings[j]) if strings and j < len(strings) else str(int(graph.logit_tokens[j]))


def _score_section(graph: Any, summary: Any, blob: _Blob) -> dict[str, Any]:
    """The whole graph's scores and the score matrix over the payload's feature nodes (prune()'s alone when that
    is over :data:`MAX_SCORE_ENTRIES` entries), so the view recomputes the pinned subgraph's scores itself."""
    features = [int(n) for n, kind in zip(summary.nodes, summary.kinds) if kind == "feature"]
    kept = [int(n) for n, kind, k in zip(summary.nodes, summary.kinds, summary.kept) if kind == "feature" and k]
    matrix = score_matrix(graph, features)
    scope = "every feature node of the view"
    if len(matrix.values) > MAX_SCORE_ENTRIES:
        matrix = score_matrix(graph, kept)
        scope = "the feature nodes graph.prune() keeps"
    replacement, completeness = graph.scores()
    return {
        "replacement": replacement,
        "completeness": completeness,
        "candidates": blob.add(matrix.candidates, "uint32"),
        "rows": blob.add(matrix.rows, "uint32"),
        "cols": blob.add(matrix.cols, "uint32"),
        "values": blob.add(matrix.values, "float32"),
        "candidate_error": blob.add(matrix.candidate_error + 1, "uint32"),  # 0: no error node to merge into
        "logit_weights": [float(w) for w in matrix.logit_weights],
        "n_errors": matrix.n_errors,
        "n_tokens": matrix.n_tokens,
        "scope": scope,
    }


def payload_arrays(header: dict[str, Any], data: bytes, group: str, name: str) -> np.ndarray:
    """One array of an :func:`encode_graph` payload (``group`` "nodes" or "edges"), as int64 or float32."""
    ref = header[group][name]
    arr = np.frombuffer(data, dtype=_DTYPES[ref["dtype"]], count=ref["length"], offset=ref["offset"])
    return arr.astype(np.float32 if ref["dtype"] == "float32" else np.int64)


def kept_flags(
    graph: Any, header: dict[str, Any], data: bytes, node_threshold: float, edge_threshold: float
) -> tuple[dict[str, Any], bytes]:
    """``graph.prune(node_threshold, edge_threshold)`` on an :func:`encode_graph` payload, for the view to draw
    when its thresholds move: ``(at, flags)`` with ``flags`` one byte per payload node (1: kept) then one per
    payload edge (1: kept), and ``at`` the thresholds, prune()'s node and edge counts, and ``left_out``: how many
    of prune()'s nodes and edges the payload does not hold (ranked under its cut, or capped), and why.

    Raises GraphError for thresholds outside [0, 1].
    """
    node_flags, edge_flags, n_nodes, n_edges = kept_on(
        graph, payload_arrays(header, data, "nodes", "node"), payload_arrays(header, data, "edges", "source"),
        payload_arrays(header, data, "edges", "target"), node_threshold, edge_threshold,
    )
    missing_nodes, missing_edges = n_nodes - int(node_flags.sum()), n_edges - int(edge_flags.sum())
    left_out = None
    if missing_nodes or missing_edges:
        capped = header.get("left_out") or {}
        left_out = {
            "nodes": missing_nodes,
            "edges": missing_edges,
            "reason": capped.get("reason") if missing_edges and not missing_nodes and capped.get("reason")
            else f"the view holds the nodes covering {header.get('max_node_rank', MAX_NODE_RANK)} of influence: "
            "rebuild it with a larger max_node_rank to draw them",
        }
    at = {"node_threshold": float(node_threshold), "edge_threshold": float(edge_threshold), "n_nodes": n_nodes,
          "n_edges": n_edges, "left_out": left_out}
    flags = np.concatenate([node_flags, edge_flags]).astype(np.uint8).tobytes()
    return at, flags

