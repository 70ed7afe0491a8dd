"""Attribution graphs as the JSON that Neuronpedia's graph viewer reads, both ways.

The schema is the one circuit-tracer 0.5.0 writes (``circuit_tracer/utils/create_graph_files.py`` with the
pydantic models of ``circuit_tracer/frontend/graph_models.py``)::

    {"metadata": {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold",
                  "schema_version": 1},
     "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
     "nodes": [{"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
                "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}, ...],
     "links": [{"source", "target", "weight"}, ...]}

Node ids: features ``{layer}_{feature}_{pos}`` (``feature_type`` "cross layer transcoder", ``feature`` the Cantor
pairing of layer and feature), errors ``0_{layer}_{pos}`` ("mlp reconstruction error"), tokens
``E_{token_id}_{pos}`` ("embedding", layer "E"), logits ``{n_layers + 1}_{token_id}_{pos}`` ("logit"). Exported
graphs are pruned as circuit-tracer does (node and edge influence thresholds); ``influence`` is a node's
cumulative influence share. Import rebuilds an :class:`AttributionGraph` holding the nodes and links of the file
(a graph made elsewhere has no ``bias_input`` or ``node_inputs``: they are zero / None).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from gemscope_widgets.backend.circuits.graph import AttributionGraph, GraphError

SCHEMA_VERSION = 1
FEATURE_TYPE = "cross layer transcoder"
ERROR_TYPE = "mlp reconstruction error"
TOKEN_TYPE = "embedding"
LOGIT_TYPE = "logit"


def cantor_pairing(x: int, y: int) -> int:
    """Unique integer of two non-negative integers (Neuronpedia's ``feature`` of a transcoder node)."""
    return (x + y) * (x + y + 1) // 2 + y


def _scan(graph: AttributionGraph, scan: Any) -> tuple[str, list[str]]:
    scan = graph.scan if scan is None else scan
    if isinstance(scan, (list, tuple)):
        names = [str(s) for s in scan]
        return "custom-" + hashlib.sha1("-".join(names).encode()).hexdigest()[:16], names
    if scan is None:
        return (graph.model_name or "unknown").split("/")[-1], []
    return str(scan), []


def to_neuronpedia(
    graph: AttributionGraph,
    slug: str = "graph",
    *,
    scan: Any = None,
    node_threshold: float | None = 0.8,
    edge_threshold: float = 0.98,
) -> dict[str, Any]:
    """The graph as Neuronpedia graph JSON (a dict). ``node_threshold=None`` keeps every node and nonzero edge.

    Pruning, kept nodes (those with a kept edge, plus every token and logit) and field values follow
    circuit-tracer's ``create_graph_files``. Raises GraphError for thresholds outside [0, 1].
    """
    n = graph.n_nodes
    if node_threshold is None:
        node_mask = torch.ones(n, dtype=torch.bool)
        edge_mask = graph.adjacency_matrix != 0
        influence = graph.prune(1.0, 1.0).cumulative_scores
    else:
        node_mask, edge_mask, influence = graph.prune(node_threshold, edge_threshold)
    scan_id, transcoder_list = _scan(graph, scan)
    tokens = graph.input_token_strings or [str(t) for t in graph.input_tokens.tolist()]
    logit_strings = graph.logit_token_strings or [str(t) for t in graph.logit_tokens.tolist()]
    nodes: dict[int, dict[str, Any]] = {}
    for i in node_mask.nonzero().flatten().tolist():
        kind, layer, pos, feature = graph.node_info(i)
        inf = float(influence[i])
        if kind == "feature":
            nodes[i] = _node(
                f"{layer}_{feature}_{pos}", cantor_pairing(layer, feature), str(layer), pos, FEATURE_TYPE,
                js=f"{layer}_{feature}-0", influence=inf,
                activation=float(graph.activation_values[graph.selected_features[i]]),
                clerp=graph.feature_labels.get((layer, feature), ""),
            )
        elif kind == "error":
            nodes[i] = _node(f"0_{layer}_{pos}", -1, str(layer), pos, ERROR_TYPE, js=f"{layer}_{pos}-0", influence=inf)
        elif kind == "token":
            nodes[i] = _node(f"E_{feature}_{pos}", pos, "E", pos, TOKEN_TYPE, js=f"E_{feature}-{pos}", influence=inf)
        else:
            j = i - graph.logit_slice.start
            prob = float(graph.logit_probabilities[j])
            layer_s = str(graph.n_layers + 1)
            nodes[i] = _node(
                f"{layer_s}_{feature}_{pos}", feature, layer_s, pos, LOGIT_TYPE, js=f"L_{feature}-{pos}",
                token_prob=prob, is_target_logit=j == 0, clerp=f'Output "{logit_strings[j]}" (p={prob:.3f})',
            )
    dsts, srcs = edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency_matrix[dsts, srcs].tolist()
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": w}
        for s, t, w in zip(srcs.tolist(), dsts.tolist(), weights, strict=True)
        if s in nodes and t in nodes
    ]
    connected = {link["source"] for link in links} | {link["target"] for link in links}
    used = [v for v in nodes.values() if v["node_id"] in connected or v["feature_type"] in (TOKEN_TYPE, LOGIT_TYPE)]
    return {
        "metadata": {
            "slug": slug,
            "scan": scan_id,
            "transcoder_list": transcoder_list,
            "prompt_tokens": tokens,
            "prompt": graph.input_string,
            "node_threshold": node_threshold,
            "schema_version": SCHEMA_VERSION,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": used,
        "links": links,
    }


def _node(node_id: str, feature: int, layer: Any, ctx_idx: int, feature_type: str, *, js: Any,
          influence: float | None = None, activation: float | None = None, clerp: str = "",
          token_prob: float = 0.0, is_target_logit: bool = False) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "feature": int(feature),
        "layer": layer,
        "ctx_idx": int(ctx_idx),
        "feature_type": feature_type,
        "token_prob": float(token_prob),
        "is_target_logit": bool(is_target_logit),
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": js,
        "clerp": clerp,
        "influence": influence,
        "activation": activation,
    }


def save_neuronpedia(graph: AttributionGraph, path: str | os.PathLike[str], slug: str | None = None,
                     **kwargs: Any) -> Path:
    """Write ``to_neuronpedia(graph, slug, **kwargs)`` to ``path`` (``.json``); the slug defaults to the file stem."""
    path = Path(path)
    if path.suffix != ".json":
        raise GraphError(f"Neuronpedia graph files are .json, not {path.name!r}.")
    data = to_neuronpedia(graph, slug or path.stem, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def _split_id(node: dict[str, Any]) -> tuple[str, int, int]:
    parts = str(node["node_id"]).split("_")
    if len(parts) != 3:
        raise GraphError(f"Node id {node['node_id']!r} is not of the form a_b_c.")
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        raise GraphError(f"Node id {node['node_id']!r} does not hold integers.") from None


def from_neuronpedia(source: str | os.PathLike[str] | dict[str, Any]) -> AttributionGraph:
    """Read Neuronpedia graph JSON (a path or the parsed dict) into an :class:`AttributionGraph`.

    Feature nodes become the active and selected features (in the file's order sorted by layer, position,
    feature); error nodes for every layer and position exist (without edges unless the file has them); links
    become the adjacency matrix. Raises GraphError for a file that is not graph JSON.
    """
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GraphError(f"Could not read a Neuronpedia graph from {str(path)!r}: {exc}") from None
    if not isinstance(data, dict) or not {"metadata", "nodes", "links"} <= set(data):
        raise GraphError("Not a Neuronpedia graph: expected an object with metadata, nodes and links.")
    meta, node_list, links = data["metadata"], data["nodes"], data["links"]
    by_type: dict[str, list[dict[str, Any]]] = {FEATURE_TYPE: [], ERROR_TYPE: [], TOKEN_TYPE: [], LOGIT_TYPE: []}
    for node in node_list:
        by_type.setdefault(node.get("feature_type", ""), []).append(node)
    if not by_type[LOGIT_TYPE]:
        raise GraphError("The graph has no logit node.")
    logit_layers = {int(n["layer"]) for n in by_type[LOGIT_TYPE]}
    if len(logit_layers) != 1:
        raise GraphError(f"Logit nodes sit on several layers {sorted(logit_layers)}; expected one.")
    n_layers = logit_layers.pop() - 1
    prompt_tokens = list(meta.get("prompt_tokens") or [])
    n_pos = len(prompt_tokens) or 1 + max(int(n["ctx_idx"]) for n in node_list)
    input_tokens = torch.zeros(n_pos, dtype=torch.long)
    for node in by_type[TOKEN_TYPE]:
        _, token, pos = _split_id(node)
        input_tokens[pos] = token
    feats = []
    for node in by_type[FEATURE_TYPE]:
        layer, feature, pos = _split_id(node)
        feats.append((int(layer), pos, feature, float(node.get("activation") or 0.0), node))
    feats.sort(key=lambda f: f[:3])
    logits = sorted(by_type[LOGIT_TYPE], key=lambda n: -float(n.get("token_prob", 0.0)))
    n_sel = len(feats)
    index: dict[tuple[str, str], int] = {}
    for i, (_, _, _, _, node) in enumerate(feats):
        index[(FEATURE_TYPE, node["node_id"])] = i
    for error_layer in range(n_layers):
        for pos in range(n_pos):
            index[(ERROR_TYPE, f"0_{error_layer}_{pos}")] = n_sel + error_layer * n_pos + pos
    token_start = n_sel + n_layers * n_pos
    for node in by_type[TOKEN_TYPE]:
        index[(TOKEN_TYPE, node["node_id"])] = token_start + int(node["ctx_idx"])
    for j, node in enumerate(logits):
        index[(LOGIT_TYPE, node["node_id"])] = token_start + n_pos + j
    types_of: dict[str, list[str]] = {}
    for node in node_list:
        types_of.setdefault(node["node_id"], []).append(node.get("feature_type", ""))
    n_nodes = token_start + n_pos + len(logits)
    adjacency = torch.zeros(n_nodes, n_nodes)

    def lookup(node_id: str, role: str) -> int:
        kinds = types_of.get(node_id)
        if not kinds:
            raise GraphError(f"Link {role} {node_id!r} is not a node of the graph.")
        # A layer-0 feature and an error node can share an id (circuit-tracer's ids); the feature wins.
        return index[(FEATURE_TYPE if FEATURE_TYPE in kinds else kinds[0], node_id)]

    for link in links:
        adjacency[lookup(link["target"], "target"), lookup(link["source"], "source")] = float(link["weight"])
    labels = {(f[0], f[2]): str(f[4]["clerp"]) for f in feats if f[4].get("clerp")}
    logit_strings = []
    for node in logits:
        clerp = str(node.get("clerp", ""))
        logit_strings.append(clerp[8 : clerp.rfind('" (p=')] if clerp.startswith('Output "') else "")
    scan = meta.get("transcoder_list") or meta.get("scan")
    return AttributionGraph(
        input_string=str(meta.get("prompt", "")),
        input_tokens=input_tokens,
        active_features=torch.tensor([f[:3] for f in feats], dtype=torch.long).reshape(-1, 3),
        activation_values=torch.tensor([f[3] for f in feats], dtype=torch.float32),
        selected_features=torch.arange(n_sel),
        adjacency_matrix=adjacency,
        logit_tokens=torch.tensor([int(n["feature"]) for n in logits], dtype=torch.long),
        logit_probabilities=torch.tensor([float(n.get("token_prob", 0.0)) for n in logits]),
        bias_input=torch.zeros(n_nodes),
        n_layers=n_layers,
        input_token_strings=[str(t) for t in prompt_tokens] if prompt_tokens else None,
        logit_token_strings=logit_strings,
        scan=scan,
        feature_labels=labels,
        info={"imported_from": "neuronpedia", "slug": meta.get("slug"), "node_threshold": meta.get("node_threshold")},
    )
