"""Neuronpedia graph JSON read into an :class:`AttributionGraph` (the export, the ids and the node types:
:mod:`.neuronpedia_json`).

Reads both error-id schemes and the files of Neuronpedia's second backend
(``apps/graph/neuronpedia_graph/format_converter.py``: ``{layer}_cro_{feature}_{pos}`` features,
``{layer}_error_mlp_{pos}`` errors, logits on layer ``n_layers``). Nodes are identified by their fields
(``feature_type``, ``layer``, ``ctx_idx``), ids only join links to nodes. ``bias`` nodes are read as the bias
input of their targets; ``lorsa``, ``lorsa error``, ``unknown`` and other node types are refused by name. What an
:class:`AttributionGraph` has no field for is kept in ``graph.info["neuronpedia"]`` and written back on export, so
import -> export keeps the file. QK traces written on nodes (``qk_tracing_results``, ``qk_head``, with
``qk_only_nodes``) are read into ``graph.info["qk_tracing"]``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gemscope_widgets.backend.circuits.graph import AttributionGraph, GraphError
from gemscope_widgets.backend.circuits.neuronpedia_json import (
    _CLERP_TOKEN,
    _IDENTITY,
    _SECOND_BACKEND_ID,
    ATTENTION_TYPE,
    BIAS_TYPE,
    ERROR_TYPE,
    FEATURE_TYPE,
    INFO_KEY,
    LOGIT_TYPE,
    QK_LISTS,
    REFUSED_TYPES,
    TOKEN_TYPE,
    _finite,
    _node_record,
)
from gemscope_widgets.backend.circuits.qk import INFO_KEY as QK_INFO_KEY
from gemscope_widgets.errors import warn_user


def _read(source: str | os.PathLike[str] | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        data = source
    else:
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GraphError(f"Could not read a Neuronpedia graph from {str(path)!r}: {exc}") from None
    if not isinstance(data, Mapping) or not {"metadata", "nodes", "links"} <= set(data):
        raise GraphError("Not a Neuronpedia graph: expected an object with metadata, nodes and links.")
    return data


def _int(node: Mapping[str, Any], key: str) -> int:
    try:
        return int(str(node[key]))
    except (KeyError, TypeError, ValueError):
        raise GraphError(f"Node {node.get('node_id')!r} has no integer {key!r} (got {node.get(key)!r}).") from None


def _feature_index(node: Mapping[str, Any], layer: int) -> int:
    """A feature node's index: from ``{layer}_{feature}_{pos}`` or ``{layer}_cro_{feature}_{pos}``, else the
    inverse Cantor pairing of ``feature`` with the layer."""
    parts = str(node["node_id"]).split("_")
    try:
        if len(parts) == 3:
            return int(parts[1])
        if len(parts) == 4 and parts[1] == "cro":
            return int(parts[2])
    except ValueError:
        pass
    number = node.get("feature")
    if isinstance(number, int):
        w = int((math.isqrt(8 * number + 1) - 1) // 2)
        index = number - w * (w + 1) // 2
        if w - index == layer:
            return index
    raise GraphError(f"Feature node {node['node_id']!r} names no feature index (id layer_feature_pos).")


def _token_id(node: Mapping[str, Any]) -> int | None:
    parts = str(node["node_id"]).split("_")
    if len(parts) == 3 and parts[0] == "E":
        try:
            return int(parts[1])
        except ValueError:
            return None
    return None


def _logit_text(clerp: str) -> str:
    match = _CLERP_TOKEN.match(clerp)
    return match.group(1) if match else clerp


def from_neuronpedia(source: str | os.PathLike[str] | Mapping[str, Any]) -> AttributionGraph:
    """Read Neuronpedia graph JSON (a path or the parsed dict) into an :class:`AttributionGraph`.

    Feature nodes become the active and selected features (in the file's order); error nodes exist for every
    layer and position (without edges unless the file has them); links become the adjacency matrix, links from
    ``bias`` nodes the targets' ``bias_input``; logits keep the file's order. Both error-id schemes
    (``{layer}_-1_{pos}`` and the older ``0_{layer}_{pos}``) are read; where an old file gives a layer-0 feature
    and an error node the same id, a link the layers leave ambiguous goes to the node listed last (Neuronpedia's
    rule), with a warning. A position without an embedding node gets token id -1 (with a warning). What the
    graph has no field for is kept in ``info["neuronpedia"]`` (see the module docstring).

    Raises GraphError for a file that is not graph JSON, node types this package cannot hold (``lorsa``,
    ``lorsa error``, ``unknown``, ...), and links to nodes the file does not have.
    """
    data = _read(source)
    meta, node_list, links = data["metadata"], list(data["nodes"]), list(data["links"])
    types: dict[str, int] = {}
    for node in node_list:
        types[str(node.get("feature_type", ""))] = types.get(str(node.get("feature_type", "")), 0) + 1
    known = {FEATURE_TYPE, ERROR_TYPE, TOKEN_TYPE, LOGIT_TYPE, BIAS_TYPE}
    for name, count in types.items():
        if name not in known:
            what = REFUSED_TYPES.get(name, "a node type this package does not know")
            raise GraphError(
                f"The graph has {count} {name!r} node(s) ({what}); an AttributionGraph holds transcoder features, "
                "MLP errors, tokens and logits only."
            )
    logit_nodes = [n for n in node_list if n.get("feature_type") == LOGIT_TYPE]
    if not logit_nodes:
        raise GraphError("The graph has no logit node.")
    logit_layers = {_int(n, "layer") for n in logit_nodes}
    if len(logit_layers) != 1:
        raise GraphError(f"Logit nodes sit on several layers {sorted(logit_layers)}; expected one.")
    second_backend = any(_SECOND_BACKEND_ID.match(str(n.get("node_id", ""))) for n in node_list)
    n_layers = logit_layers.pop() - (0 if second_backend else 1)
    prompt_tokens = [str(t) for t in meta.get("prompt_tokens") or []]
    n_pos = len(prompt_tokens) or 1 + max(_int(n, "ctx_idx") for n in node_list)

    # Every node of the file -> (kind, graph-order key); features get their graph index below.
    feats: dict[tuple[int, int, int], tuple[float, Mapping[str, Any]]] = {}
    where: list[tuple[str, Any]] = []
    input_tokens = torch.full((n_pos,), -1, dtype=torch.long)
    for node in node_list:
        kind = node.get("feature_type")
        if kind == BIAS_TYPE:
            where.append(("bias", None))
            continue
        pos = _int(node, "ctx_idx")
        if not 0 <= pos < n_pos:
            raise GraphError(f"Node {node['node_id']!r} sits at position {pos}, outside the {n_pos}-token prompt.")
        if kind == TOKEN_TYPE:
            token = _token_id(node)
            if token is not None:
                input_tokens[pos] = token
            where.append(("token", pos))
        elif kind == LOGIT_TYPE:
            where.append(("logit", node))
        else:
            layer = _int(node, "layer")
            if not 0 <= layer < n_layers:
                raise GraphError(f"Node {node['node_id']!r} is on layer {layer}; the graph has {n_layers} layers.")
            if kind == ERROR_TYPE:
                where.append(("error", (layer, pos)))
            else:
                key = (layer, pos, _feature_index(node, layer))
                feats[key] = (float(_finite(node.get("activation")) or 0.0), node)
                where.append(("feature", key))
    feature_keys = list(feats)
    feature_index = {key: i for i, key in enumerate(feature_keys)}
    n_sel = len(feature_keys)
    logits = [n for n in node_list if n.get("feature_type") == LOGIT_TYPE]
    logit_index = {id(n): j for j, n in enumerate(logits)}
    token_start = n_sel + n_layers * n_pos
    n_nodes = token_start + n_pos + len(logits)

    def graph_index(kind: str, key: Any) -> int:
        if kind == "feature":
            return feature_index[key]
        if kind == "error":
            return n_sel + int(key[0]) * n_pos + int(key[1])
        if kind == "token":
            return token_start + int(key)
        return token_start + n_pos + logit_index[id(key)]

    candidates: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for node, (kind, key) in zip(node_list, where, strict=True):
        index = -1 if kind == "bias" else graph_index(kind, key)
        candidates.setdefault(str(node["node_id"]), []).append((index, node))

    def layer_of(index: int) -> int:  # where a node writes from / is read at: tokens -1, logits n_layers
        if index < 0:
            return -1
        if index < n_sel:
            return feature_keys[index][0]
        if index < token_start:
            return (index - n_sel) // n_pos
        return -1 if index < token_start + n_pos else n_layers

    ambiguous = 0

    def resolve(node_id: Any, role: str, target: int | None = None) -> tuple[int, Mapping[str, Any]]:
        nonlocal ambiguous
        found = candidates.get(str(node_id))
        if not found:
            raise GraphError(f"Link {role} {node_id!r} is not a node of the graph.")
        if len(found) > 1:
            if role == "target":  # only features and logits have inputs
                found = [c for c in found if 0 <= c[0] < n_sel or c[0] >= token_start + n_pos] or found
            elif target is not None:  # a source writes to later layers than its own
                found = [c for c in found if layer_of(c[0]) < layer_of(target)] or found
            ambiguous += len(found) > 1
        return found[-1]

    adjacency = torch.zeros(n_nodes, n_nodes)
    bias_input = torch.zeros(n_nodes)
    bias_links = []
    for link in links:
        t, _ = resolve(link["target"], "target")
        if t < 0:
            raise GraphError(f"Link target {link['target']!r} is a bias node; biases only have outgoing links.")
        s, _ = resolve(link["source"], "source", t)
        weight = float(link["weight"])
        if s < 0:
            bias_input[t] += weight
            bias_links.append(dict(link))
        else:
            adjacency[t, s] = weight
    if ambiguous:
        warn_user(
            f"{ambiguous} link(s) of this graph name a node id that a layer-0 feature and an error node share "
            "(circuit-tracer's ids before v0.5.1); they were read as the node listed last, as Neuronpedia does."
        )
    missing = (input_tokens < 0).nonzero().flatten().tolist()
    if missing:
        warn_user(
            f"Position(s) {missing} have no embedding node in this graph file, so their token ids are unknown "
            "(-1); the graph cannot be re-run on the model (attach / intervene)."
        )

    graph = AttributionGraph(
        input_string=str(meta.get("prompt", "")),
        input_tokens=input_tokens,
        active_features=torch.tensor(feature_keys, dtype=torch.long).reshape(-1, 3),
        activation_values=torch.tensor([feats[k][0] for k in feature_keys], dtype=torch.float32),
        selected_features=torch.arange(n_sel),
        adjacency_matrix=adjacency,
        logit_tokens=torch.tensor([_int(n, "feature") for n in logits], dtype=torch.long),
        logit_probabilities=torch.tensor([_finite(n.get("token_prob")) or 0.0 for n in logits]),
        bias_input=bias_input,
        n_layers=n_layers,
        input_token_strings=prompt_tokens or None,
        logit_token_strings=[_logit_text(str(n.get("clerp", ""))) for n in logits],
        scan=list(meta.get("transcoder_list") or []) or None,
        feature_labels={(k[0], k[2]): str(feats[k][1]["clerp"]) for k in feature_keys if feats[k][1].get("clerp")},
    )
    record = _record(data, graph, candidates, bias_links)
    traces = _read_qk_tracing(graph, record)
    graph.info = {"imported_from": "neuronpedia", INFO_KEY: record}
    if traces:
        graph.info[QK_INFO_KEY] = traces
    return graph


def _record(
    data: Mapping[str, Any],
    graph: AttributionGraph,
    candidates: Mapping[str, list[tuple[int, Mapping[str, Any]]]],
    bias_links: list[dict[str, Any]],
) -> dict[str, Any]:
    """What the file says beyond the graph's fields, keyed by the ids the graph now writes."""
    nodes: dict[str, dict[str, Any]] = {}
    ids: dict[str, str] = {}
    js_ids: dict[str, str] = {}
    bias_nodes = []
    for old_id, found in candidates.items():
        for index, node in found:  # the last of duplicate ids wins, as in Neuronpedia
            if index < 0:
                bias_nodes.append(dict(node))
                continue
            new = _node_record(graph, index, None)
            ids[old_id] = new["node_id"]
            if node.get("jsNodeId") is not None:
                js_ids[str(node["jsNodeId"])] = new["jsNodeId"]
            nodes[new["node_id"]] = {k: v for k, v in node.items() if k not in _IDENTITY}

    def rename(value: Any) -> Any:
        return ids.get(value, js_ids.get(value, value)) if isinstance(value, str) else value

    q = dict(data.get("qParams") or {})
    if isinstance(q.get("pinnedIds"), list):
        q["pinnedIds"] = [rename(v) for v in q["pinnedIds"]]
    if isinstance(q.get("supernodes"), list):
        q["supernodes"] = [
            [group[0], *(rename(v) for v in group[1:])] if isinstance(group, list) and group else group
            for group in q["supernodes"]
        ]
    if isinstance(q.get("clickedId"), str):
        q["clickedId"] = rename(q["clickedId"])
    meta = {k: v for k, v in data["metadata"].items() if k not in ("prompt", "prompt_tokens")}
    extra = {k: v for k, v in data.items() if k not in ("metadata", "qParams", "nodes", "links")}
    bias_links = [{**link, "target": rename(link["target"])} for link in bias_links]
    return {"metadata": meta, "qParams": q, "nodes": nodes, "bias_nodes": bias_nodes, "bias_links": bias_links,
            "extra": extra}


def _read_qk_tracing(graph: AttributionGraph, record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The QK traces of an imported file (taken out of ``record``'s node overlays and ``qk_only_nodes``), as
    ``graph.info["qk_tracing"]`` holds them. Raises GraphError for lists not of Neuronpedia's shape."""
    only = record["extra"].get("qk_only_nodes") or {}  # kept there too: an export without traces writes it back
    kinds = {FEATURE_TYPE: "unselected", ATTENTION_TYPE: "attention", BIAS_TYPE: "bias"}
    out: dict[str, dict[str, Any]] = {}
    for node_id, overlay in record["nodes"].items():
        results = overlay.pop("qk_tracing_results", None)
        head = overlay.pop("qk_head", None) or {}
        if results is None:
            continue
        try:
            lists: dict[str, list[list[Any]]] = {
                k: [[*map(str, x[:-1]), float(x[-1])] for x in results[k]] for k in QK_LISTS
            }
        except (KeyError, TypeError, ValueError, IndexError):
            raise GraphError(f"Node {node_id!r} has qk_tracing_results not of Neuronpedia's shape.") from None
        about: dict[str, Any] = {}
        for cid in {str(c) for rows in lists.values() for x in rows for c in x[:-1]}:
            try:
                i = graph.node_index(cid)
                kind, layer, pos, feature = graph.node_info(i)
                about[cid] = {"kind": kind, "node": i, "layer": layer, "pos": pos, "feature": feature,
                              "label": graph.node_label(i)}
            except GraphError:
                desc = only.get(cid) or {"node_id": cid}
                layer_s = str(desc.get("layer", -1))
                layer = int(layer_s) if layer_s.lstrip("-").isdigit() else -1
                kind = kinds.get(str(desc.get("feature_type")), "unknown")
                about[cid] = {"kind": kind, "node": -1, "layer": layer, "pos": int(desc.get("ctx_idx", -1)),
                              "feature": _feature_index(desc, layer) if kind == "unselected" else -1,
                              "label": str(desc.get("clerp", "")), "activation": _finite(desc.get("activation"))}
        out[node_id] = {**head, **lists, "contributors": about}
    return out
