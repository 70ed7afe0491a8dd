"""Attribution graphs as the JSON that Neuronpedia's graph viewer reads, both ways.

Writes what circuit-tracer writes (``circuit_tracer/utils/create_graph_files.py`` with the pydantic models of
``circuit_tracer/frontend/graph_models.py``, v0.5.1 and later), valid against Neuronpedia's draft-07
``graph-schema.json`` (``hijohnnylin/neuronpedia:apps/webapp/app/api/graph/graph-schema.json``)::

    {"metadata": {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold",
                  "schema_version": 1, "info", "generation_settings", "pruning_settings", ...},
     "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
     "nodes": [{"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
                "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}, ...],
     "links": [{"source", "target", "weight"}, ...]}

Node ids (``node_id`` / ``jsNodeId``): features ``{layer}_{feature}_{pos}`` / ``{layer}_{feature}-0``
("cross layer transcoder", ``feature`` the Cantor pairing of layer and feature), errors ``{layer}_-1_{pos}`` /
``{layer}_-1-{pos}`` ("mlp reconstruction error", ``feature`` -1; circuit-tracer before v0.5.1 wrote
``0_{layer}_{pos}``, which collides with a layer-0 feature whose index is the layer: decoderesearch/circuit-tracer
#78, PRs #100 and #102), tokens ``E_{token_id}_{pos}`` / ``E_{token_id}-{pos}`` ("embedding", layer "E",
``feature`` the position), logits ``{n_layers + 1}_{token_id}_{pos}`` / ``L_{token_id}-{pos}`` ("logit").
``metadata.scan`` is the model's Neuronpedia id (``gemma-3-270m``); ``influence`` is a node's cumulative
influence share (Neuronpedia prunes by it in the browser). Exports are strict JSON (no NaN / Infinity): a
non-finite ``influence`` or ``activation`` is written as null (as pydantic writes it), a non-finite weight or
probability is refused. :func:`save_neuronpedia` also records the graph in ``graph-metadata.json`` beside it,
the list circuit-tracer's local viewer (``circuit_tracer/frontend/local_server.py``) reads.

Import (:func:`from_neuronpedia`, in :mod:`.neuronpedia_import`) reads both error-id schemes and the files of
Neuronpedia's second backend; what an :class:`AttributionGraph` has no field for (each node's ``influence``,
``is_target_logit``, logit, error and token labels, ``qParams`` with pins and supernodes, ``info``, generation and
pruning settings, other top-level blocks) is kept in ``graph.info["neuronpedia"]`` and written back on export, so
import -> export keeps the file.

QK traces (``graph.qk``, kept in ``graph.info["qk_tracing"]`` by target node) are written on their target nodes as
Neuronpedia's ``qk_tracing_results`` (``pair_wise_contributors`` ``[q_id, k_id, attr]``,
``top_q_marginal_contributors`` / ``top_k_marginal_contributors`` ``[id, attr]``; attributions in the score's logit
units) with the head beside it in ``qk_head`` (layer, head, positions, score, probability, remainder); every
contributor id that is not a written node is described in the top-level ``qk_only_nodes`` (features without a
node or pruned, ``{layer}_attn_{pos}`` attention outputs of feature type "attention output", ``bias_{pos}``).
Import reads them back into ``graph.info["qk_tracing"]``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from gemscope_widgets.backend.circuits.graph import AttributionGraph, GraphError
from gemscope_widgets.backend.circuits.qk import INFO_KEY as QK_INFO_KEY
from gemscope_widgets.backend.gemma.names import neuronpedia_model_id
from gemscope_widgets.errors import warn_user

SCHEMA_VERSION = 1
FEATURE_TYPE = "cross layer transcoder"
ERROR_TYPE = "mlp reconstruction error"
TOKEN_TYPE = "embedding"
LOGIT_TYPE = "logit"
BIAS_TYPE = "bias"
ATTENTION_TYPE = "attention output"  # a QK contributor only (in qk_only_nodes): an attention layer's output
QK_LISTS = ("pair_wise_contributors", "top_q_marginal_contributors", "top_k_marginal_contributors")
QK_HEAD = ("layer", "head", "kv_head", "query_pos", "key_pos", "score", "probability", "node_pairs_total", "remainder")
# Neuronpedia's other node types, with why this package cannot hold them.
REFUSED_TYPES = {
    "lorsa": "attention (LoRSA) features",
    "lorsa error": "attention (LoRSA) reconstruction errors",
    "unknown": "nodes of an unknown source",
}
DEFAULT_NODE_THRESHOLD = 0.8  # circuit-tracer's create_graph_files defaults (the paper's)
DEFAULT_EDGE_THRESHOLD = 0.98
GRAPH_METADATA = "graph-metadata.json"  # circuit-tracer's local viewer lists the graphs of a folder from it
DEFAULT_Q_PARAMS = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
INFO_KEY = "neuronpedia"  # graph.info[INFO_KEY]: what an imported file said beyond the graph's own fields
_IDENTITY = ("node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId")
_OWN = {  # fields a node's export takes from the graph, by kind (a file's value would go stale)
    FEATURE_TYPE: {"activation", "clerp"},
    ERROR_TYPE: set(),
    TOKEN_TYPE: set(),
    LOGIT_TYPE: {"token_prob"},
}
_CLERP_TOKEN = re.compile(r'^\w+ "(.*)" \(p=[^)]*\)$', re.DOTALL)  # 'Output " Paris" (p=0.412)'
_SECOND_BACKEND_ID = re.compile(r"^-?\d+_(?:cro|error)_")
_SETTINGS = {"max_n_logits": int, "desired_logit_prob": float, "batch_size": int, "max_feature_nodes": int}


def cantor_pairing(x: int, y: int) -> int:
    """Unique integer of two non-negative integers (Neuronpedia's ``feature`` of a transcoder node)."""
    return (x + y) * (x + y + 1) // 2 + y


def _generator() -> dict[str, str]:
    try:
        package_version = version("gemscope-widgets")
    except PackageNotFoundError:
        package_version = "0.0.0"
    return {"name": "gemscope_widgets", "version": package_version}


def _scan(graph: AttributionGraph, scan: str | None, record: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``(metadata.scan, metadata.transcoder_list)``: the model's Neuronpedia id and the transcoders' names."""
    names = graph.scan if isinstance(graph.scan, list) else [graph.scan] if graph.scan else []
    meta = record.get("metadata", {})
    model_id = scan or meta.get("scan") or neuronpedia_model_id(graph.model_name)
    if not model_id:
        model_id = re.sub(r"[^a-zA-Z0-9_.-]+", "-", (graph.model_name or "unknown").rstrip("/").split("/")[-1])
        warn_user(
            f"Neuronpedia knows no model id for {graph.model_name!r}; metadata.scan is {model_id!r}, which "
            "circuit-tracer's local viewer shows but neuronpedia.org refuses: pass scan='<model id>' to upload."
        )
    if not re.fullmatch(r"[a-zA-Z0-9_.-]+", str(model_id)):
        raise GraphError(f"scan must be a Neuronpedia model id such as 'gemma-3-270m', got {model_id!r}.")
    return str(model_id), list(meta.get("transcoder_list", [str(n) for n in names]))


def _finite(value: Any) -> float | None:
    """A float, or None for NaN / infinity / None (the schema's null)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _node_record(graph: AttributionGraph, i: int, influence: float | None) -> dict[str, Any]:
    """Node ``i`` as circuit-tracer's ``Node`` (fields in its order); ``influence`` its cumulative share."""
    kind, layer, pos, feature = graph.node_info(i)
    token_prob, is_target, clerp, activation = 0.0, False, "", None
    if kind == "feature":
        node_id, number, layer_s = f"{layer}_{feature}_{pos}", cantor_pairing(layer, feature), str(layer)
        js = f"{layer}_{feature}-0"
        feature_type, clerp = FEATURE_TYPE, graph.feature_labels.get((layer, feature), "")
        activation = _finite(graph.activation_values[graph.selected_features[i]])
    elif kind == "error":
        node_id, number, layer_s, js = f"{layer}_-1_{pos}", -1, str(layer), f"{layer}_-1-{pos}"
        feature_type = ERROR_TYPE
    elif kind == "token":
        node_id, number, layer_s, js = f"E_{feature}_{pos}", pos, "E", f"E_{feature}-{pos}"
        feature_type = TOKEN_TYPE
    else:
        j = i - graph.logit_slice.start
        token_prob = float(graph.logit_probabilities[j])
        if not math.isfinite(token_prob):
            raise GraphError(f"Logit {j} has probability {token_prob}; a graph file needs finite probabilities.")
        layer_s = str(graph.n_layers + 1)
        node_id, number, js = f"{layer_s}_{feature}_{pos}", feature, f"L_{feature}-{pos}"
        feature_type, is_target, influence = LOGIT_TYPE, j == 0, None
        text = graph.logit_token_strings[j] if graph.logit_token_strings else str(feature)
        clerp = f'Output "{text}" (p={token_prob:.3f})'
    return {
        "node_id": node_id,
        "feature": int(number),
        "layer": layer_s,
        "ctx_idx": int(pos),
        "feature_type": feature_type,
        "token_prob": token_prob,
        "is_target_logit": is_target,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": js,
        "clerp": clerp,
        "influence": _finite(influence),
        "activation": activation,
    }


def _settings(graph: AttributionGraph) -> dict[str, Any]:
    """circuit-tracer's generation settings the graph's ``info`` holds (schema types only)."""
    out: dict[str, Any] = {}
    for key, kind in _SETTINGS.items():
        value = graph.info.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = kind(value)
    return out


def to_neuronpedia(
    graph: AttributionGraph,
    slug: str | None = None,
    *,
    scan: str | None = None,
    node_threshold: float | None = None,
    edge_threshold: float | None = None,
    q_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The graph as Neuronpedia graph JSON (a dict, strict-JSON-ready; see the module docstring for the fields).

    Pruning (``graph.prune(node_threshold, edge_threshold)``: the nodes with a kept edge, plus every token and
    logit; the kept edges with nonzero weight) and field values follow circuit-tracer's ``create_graph_files``.
    Thresholds left None mean: a graph read from a file keeps every node and link of the file (it was pruned
    when written); any other graph is pruned at circuit-tracer's 0.8 / 0.98. ``scan`` defaults to the file's
    or to the model's Neuronpedia id (``google/gemma-3-270m`` -> ``gemma-3-270m``). ``q_params`` replaces the
    viewer state (``pinnedIds``, ``supernodes`` as ``[label, node_id, ...]``, ``linkType``, ``clickedId``,
    ``sg_pos``). ``slug`` defaults to the file's, else "graph". Raises GraphError for thresholds outside [0, 1],
    a ``scan`` that is not an id, or non-finite edge weights or probabilities.
    """
    finite = torch.isfinite(graph.adjacency_matrix)
    if not finite.all():
        raise GraphError(
            f"{int((~finite).sum())} edge weight(s) are NaN or infinite; Neuronpedia graph JSON needs finite weights."
        )
    record: Mapping[str, Any] = graph.info.get(INFO_KEY) or {}
    # Read from a file (its metadata kept), not merely given supernodes by graph.group.
    from_file = "metadata" in record and node_threshold is None and edge_threshold is None
    node_t = DEFAULT_NODE_THRESHOLD if node_threshold is None else float(node_threshold)
    edge_t = DEFAULT_EDGE_THRESHOLD if edge_threshold is None else float(edge_threshold)
    if from_file:
        n = graph.n_nodes
        node_mask = torch.ones(n, dtype=torch.bool)
        edge_mask = graph.adjacency_matrix != 0
        influence = graph.prune(1.0, 1.0).cumulative_scores
    else:
        node_mask, edge_mask, influence = graph.prune(node_t, edge_t)
        edge_mask = edge_mask & (graph.adjacency_matrix != 0)
    scan_id, transcoder_list = _scan(graph, scan, record)
    overlays: Mapping[str, Mapping[str, Any]] = record.get("nodes", {})
    unknown_tokens = (graph.input_tokens < 0).tolist()
    nodes: dict[int, dict[str, Any]] = {}
    for i in node_mask.nonzero().flatten().tolist():
        kind = graph.node_kind(i)
        if kind == "token" and unknown_tokens[i - graph.token_slice.start]:
            continue  # the file this graph was read from had no node for this position
        node = _node_record(graph, i, float(influence[i]))
        own = _OWN[node["feature_type"]]
        node.update((k, v) for k, v in overlays.get(node["node_id"], {}).items() if k not in own)
        nodes[i] = node
    dsts, srcs = edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency_matrix[dsts, srcs]
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": w}
        for s, t, w in zip(srcs.tolist(), dsts.tolist(), weights.tolist(), strict=True)
        if s in nodes and t in nodes
    ]
    written = {str(n["node_id"]) for n in nodes.values()}
    links += [dict(link) for link in record.get("bias_links", []) if link["target"] in written]
    connected = {link["source"] for link in links} | {link["target"] for link in links}
    used = [v for v in nodes.values() if v["node_id"] in connected or v["feature_type"] in (TOKEN_TYPE, LOGIT_TYPE)]
    used += [dict(node) for node in record.get("bias_nodes", []) if node["node_id"] in connected]
    meta: dict[str, Any] = {
        "slug": slug or record.get("metadata", {}).get("slug") or "graph",
        "scan": scan_id,
        "transcoder_list": transcoder_list,
        "prompt_tokens": list(graph.input_token_strings or [str(t) for t in graph.input_tokens.tolist()]),
        "prompt": graph.input_string,
        "node_threshold": node_t,
        "schema_version": SCHEMA_VERSION,
    }
    if from_file:
        kept = {k: v for k, v in record.get("metadata", {}).items() if k not in ("slug", "scan", "prompt")}
        meta.update(kept)
        if "node_threshold" not in kept:
            del meta["node_threshold"]
    else:
        meta["info"] = {**record.get("metadata", {}).get("info", {}), "generator": _generator()}
        settings = _settings(graph)
        if settings:
            meta["generation_settings"] = settings
        meta["pruning_settings"] = {"node_threshold": node_t, "edge_threshold": edge_t}
    q = dict(DEFAULT_Q_PARAMS) | dict(record.get("qParams", {})) | dict(q_params or {})
    out = {"metadata": meta, "qParams": q, "nodes": used, "links": links}
    qk_only = _write_qk_tracing(graph, used)
    if qk_only:
        out["qk_only_nodes"] = qk_only
    out.update((k, v) for k, v in record.get("extra", {}).items() if k not in out)
    return out


def _write_qk_tracing(graph: AttributionGraph, used: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Put each QK trace on its target node (``qk_tracing_results``, ``qk_head``); returns ``qk_only_nodes``."""
    traces: Mapping[str, Mapping[str, Any]] = graph.info.get(QK_INFO_KEY) or {}
    by_id = {str(n["node_id"]): n for n in used}
    only: dict[str, dict[str, Any]] = {}
    dropped = []
    for target, trace in traces.items():
        node = by_id.get(target)
        if node is None:
            dropped.append(f"L{trace.get('layer')} head {trace.get('head')} on {target}")
            continue
        node["qk_tracing_results"] = {k: [list(x) for x in trace[k]] for k in QK_LISTS}
        node["qk_head"] = {k: trace[k] for k in QK_HEAD if k in trace}
        for cid, about in (trace.get("contributors") or {}).items():
            if cid not in by_id and cid not in only:
                only[cid] = _qk_contributor(graph, cid, about)
    if dropped:
        warn_user(
            f"QK trace(s) {', '.join(dropped)} were not written: pruning dropped their target node. Export with "
            "lower thresholds, or trace with target= a node that is kept (a logit, a kept feature)."
        )
    return only


def _qk_contributor(graph: AttributionGraph, cid: str, about: Mapping[str, Any]) -> dict[str, Any]:
    """``qk_only_nodes[cid]``: a graph node's own record, else one made from the trace's description."""
    keys = ("node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp", "activation")
    kind, layer, pos, feature = str(about["kind"]), int(about["layer"]), int(about["pos"]), int(about["feature"])
    if kind in ("feature", "error", "token"):
        try:
            record = _node_record(graph, graph.node_index(cid), None)
            return {k: record[k] for k in keys}
        except GraphError:  # a feature without a node in this graph
            pass
    out: dict[str, Any] = {"node_id": cid, "feature": None, "layer": str(layer), "ctx_idx": pos,
                           "feature_type": BIAS_TYPE, "jsNodeId": f"{cid}-{pos}", "clerp": str(about["label"]),
                           "activation": _finite(about.get("activation"))}
    if kind in ("feature", "unselected"):
        out.update(feature=cantor_pairing(layer, feature), feature_type=FEATURE_TYPE, jsNodeId=f"{layer}_{feature}-0",
                   clerp=graph.feature_labels.get((layer, feature), ""))
    elif kind == "attention":
        out.update(feature_type=ATTENTION_TYPE, jsNodeId=f"{layer}_attn-{pos}")
    return out


def _strict_json(data: Mapping[str, Any], indent: int | None = 2) -> str:
    """``data`` as strict JSON text (``allow_nan=False``: GraphError instead of bare ``NaN`` / ``Infinity``)."""
    try:
        return json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise GraphError(f"The graph holds a value JSON cannot carry ({exc}).") from None


def add_graph_metadata(metadata: Mapping[str, Any], folder: str | os.PathLike[str]) -> Path:
    """Record a graph's metadata in ``folder/graph-metadata.json`` (``{"graphs": [metadata, ...]}``, an entry of
    the same slug replaced), as circuit-tracer's ``frontend/utils.add_graph_metadata`` does for its local
    viewer. Raises GraphError when an existing file is not such a list."""
    path = Path(folder) / GRAPH_METADATA
    listing: dict[str, Any] = {"graphs": []}
    if path.exists():
        try:
            listing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GraphError(f"Could not read {str(path)!r}: {exc}") from None
        if not isinstance(listing, dict) or not isinstance(listing.get("graphs"), list):
            raise GraphError(f"{str(path)!r} is not a graph list ({{'graphs': [...]}}); move it away or fix it.")
    listing["graphs"] = [g for g in listing["graphs"] if g.get("slug") != metadata["slug"]] + [dict(metadata)]
    path.write_text(_strict_json(listing), encoding="utf-8")
    return path


def save_neuronpedia(
    graph: AttributionGraph,
    path: str | os.PathLike[str],
    slug: str | None = None,
    *,
    graph_metadata: bool = True,
    **kwargs: Any,
) -> Path:
    """Write ``to_neuronpedia(graph, slug, **kwargs)`` to ``path`` (``.json``, strict JSON); the slug defaults to
    the file stem. With ``graph_metadata`` the graph is also listed in ``graph-metadata.json`` beside it, so
    circuit-tracer's local viewer (``serve(data_dir=path.parent)``) shows it. Raises GraphError as
    :func:`to_neuronpedia`, and for a path that does not end in ``.json``."""
    path = Path(path)
    if path.suffix != ".json":
        raise GraphError(f"Neuronpedia graph files are .json, not {path.name!r}.")
    data = to_neuronpedia(graph, slug or path.stem, **kwargs)
    text = _strict_json(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if graph_metadata:
        add_graph_metadata(data["metadata"], path.parent)
    return path
