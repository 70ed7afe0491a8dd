"""The attribution graph as the circuit view reads it: a JSON header and one binary blob.

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
import torch

from gemscope_widgets.errors import CircuitError

MAX_EDGES = 250_000  # the browser budget of edges by default: prune()'s first (what is left out is said on screen)
MAX_NODE_RANK = 0.99  # feature / error nodes ranked below this share of influence are never drawn
KIND_CODES = {"feature": 0, "error": 1, "token": 2, "logit": 3}
NODE_ARRAYS = ("kind", "layer", "pos", "feature", "node", "activation", "influence", "rank", "kept")
EDGE_ARRAYS = ("source", "target", "weight", "rank", "kept")
_DTYPES = {"uint16": "<u2", "uint32": "<u4", "float32": "<f4"}
_NODE_DTYPES = {
    "kind": "uint16", "layer": "uint16", "pos": "uint16", "feature": "uint32", "node": "uint32",
    "activation": "float32", "influence": "float32", "rank": "float32", "kept": "uint16",
}


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


def as_transcoder_set(transcoders: Any) -> Any:
    """A :class:`~gemscope_widgets.backend.circuits.transcoder_set.TranscoderSet` from anything
    ``load_transcoders`` takes (a set, a CLT, a list of per-layer transcoders, a folder) or a ``{layer:
    transcoder}`` dict; None stays None."""
    if transcoders is None:
        return None
    from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders

    if isinstance(transcoders, dict):
        transcoders = [transcoders[k] for k in sorted(transcoders)]
    return load_transcoders(transcoders)


def feature_dictionary(tset: Any, layer: int, feature: int) -> tuple[Any, int] | None:
    """``(dictionary, index)`` of a graph's feature ``(layer, feature)``: the layer's transcoder and the feature,
    or for a CLT the CLT itself and the feature's index across all its layers; None when the set lacks the
    layer."""
    if tset is None or layer not in tset.layers:
        return None
    return tset.dictionary(layer), tset.dictionary_feature(layer, feature)


def _feature_top_logits(graph: Any, model: Any, transcoders: Any, nodes: list[int], k: int) -> list[list[Any]]:
    """Top ``k`` tokens each feature node's decoder promotes (direct logit effect, summed over every layer a
    CLT feature writes to), ``[]`` when not computable."""
    tset = as_transcoder_set(transcoders)
    if model is None or tset is None or not nodes:
        return [[] for _ in nodes]
    from gemscope_widgets.backend.analysis.logit_lens import norm_gain
    from gemscope_widgets.backend.gemma.prompts import token_strings

    gain = norm_gain(model.final_norm).cpu()
    w_u = model.lm_head.weight.detach()
    out: list[list[Any]] = [[] for _ in nodes]
    rows, where = [], []
    for j, i in enumerate(nodes):
        _, layer, _, feature = graph.node_info(i)
        found = feature_dictionary(tset, layer, feature)
        if found is None:
            continue
        dictionary, index = found
        direction = torch.zeros(model.d_model)
        for vec in dictionary.write_directions(index).values():
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
    if max_edges is not None and max_edges < 1:
        raise CircuitError(f"max_edges must be positive (or None: the default budget), got {max_edges}.")
    n = graph.n_nodes
    pruned = graph.prune(node_threshold, edge_threshold)
    kept_edges = pruned.edge_mask & (graph.adjacency_matrix != 0)
    influence = graph.node_influence().float()
    kinds = graph.node_kinds()
    node_rank = _exclusive_rank(influence)
    always = torch.zeros(n, dtype=torch.bool)
    always[graph.token_slice] = True
    always[graph.logit_slice] = True
    keep = always | ((node_rank < max_node_rank) & (influence > 0)) | pruned.node_mask
    nodes = keep.nonzero().flatten()

    edge_scores = graph.edge_influence(keep)
    sub = edge_scores[nodes][:, nodes]
    weights = graph.adjacency_matrix[nodes][:, nodes]
    sub_kept = kept_edges[nodes][:, nodes]
    tgt, src = ((sub > 0) | sub_kept).nonzero(as_tuple=True)
    scores = sub[tgt, src]
    n_kept_edges = int(kept_edges.sum())
    budget = MAX_EDGES if max_edges is None else max_edges
    if len(scores) > budget:
        # By default prune()'s edges first, each group by influence; an explicit max_edges: by influence alone.
        offset = float(scores.max()) + 1.0 if max_edges is None else 0.0
        top = torch.topk(scores.double() + sub_kept[tgt, src].double() * offset, budget).indices
        tgt, src, scores = tgt[top], src[top], scores[top]
    edge_kept = sub_kept[tgt, src]
    left_out: dict[str, Any] | None = None
    if int(edge_kept.sum()) < n_kept_edges:
        missing = n_kept_edges - int(edge_kept.sum())
        left_out = {
            "nodes": 0,
            "edges": missing,
            "reason": f"the view holds at most {budget} edges (max_edges, a browser budget)",
        }
    total_edge = edge_scores[edge_scores > 0].double().sum().clamp(min=1e-30)
    order = torch.argsort(scores, descending=True, stable=True)
    tgt, src, scores, edge_kept = tgt[order], src[order], scores[order], edge_kept[order]
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
        "kept": pruned.node_mask[nodes].to(torch.int32).tolist(),
    }
    blob = _Blob()
    refs = {name: blob.add(arrays[name], _NODE_DTYPES[name]) for name in NODE_ARRAYS}
    edge_refs = {
        "source": blob.add(src.numpy(), "uint32"),
        "target": blob.add(tgt.numpy(), "uint32"),
        "weight": blob.add(weights[tgt, src].numpy(), "float32"),
        "rank": blob.add(edge_rank.numpy(), "float32"),
        "kept": blob.add(edge_kept.to(torch.int32).numpy(), "uint16"),
    }
    features = [j for j, i in enumerate(nodes.tolist()) if kinds[i] == "feature"]
    features.sort(key=lambda j: -float(influence[int(nodes[j])]))
    chosen = features[:max_logit_nodes]
    promoted = _feature_top_logits(graph, model, transcoders, [int(nodes[j]) for j in chosen], top_logits_k)
    top_logits: dict[str, Any] = {str(j): t for j, t in zip(chosen, promoted) if t}
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
        "pruned": {
            "node_threshold": float(node_threshold),
            "edge_threshold": float(edge_threshold),
            "n_nodes": int(pruned.node_mask.sum()),
            "n_edges": n_kept_edges,
        },
        "left_out": left_out,
        "max_node_rank": float(max_node_rank),
        "labels": labels,
        "top_logits": top_logits,
        "model": graph.model_name or "",
        "scan": graph.scan if isinstance(graph.scan, str) else "",
        "bytes": blob.size,
    }
    return header, blob.bytes()


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
    pruned = graph.prune(node_threshold, edge_threshold)
    kept_edges = pruned.edge_mask & (graph.adjacency_matrix != 0)
    nodes = torch.from_numpy(payload_arrays(header, data, "nodes", "node"))
    src = nodes[torch.from_numpy(payload_arrays(header, data, "edges", "source"))]
    dst = nodes[torch.from_numpy(payload_arrays(header, data, "edges", "target"))]
    node_flags = pruned.node_mask[nodes]
    edge_flags = kept_edges[dst, src]
    n_nodes, n_edges = int(pruned.node_mask.sum()), int(kept_edges.sum())
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
    flags = torch.cat([node_flags, edge_flags]).to(torch.uint8).numpy().tobytes()
    return at, flags


def _node_values(graph: Any, nodes: torch.Tensor) -> list[float]:
    """Activation of feature nodes, probability of logit nodes, input norm of nothing else (0)."""
    values = torch.zeros(graph.n_nodes)
    values[graph.feature_slice] = graph.selected_activation_values
    values[graph.logit_slice] = graph.logit_probabilities
    return values[nodes].tolist()
