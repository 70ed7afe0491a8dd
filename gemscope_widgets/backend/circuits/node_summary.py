"""An attribution graph summarised node by node for a reader: which nodes and edges are worth drawing, their
influence ranks, which of them ``prune()`` keeps, and what each feature's decoder promotes.

A drawing of the graph holds every token and logit node, the feature / error nodes whose *cumulative influence
rank* (the share of total influence held by the nodes ranked above it, the quantity circuit-tracer's
``prune_graph`` thresholds) is under ``max_node_rank``, and every node ``graph.prune(node_threshold,
edge_threshold)`` keeps; edges between those nodes carry their influence (circuit-tracer's
``compute_edge_influence`` on the graph restricted to them) and its rank, so a reader can preview other thresholds
without recomputing, and ``kept`` flags that mark exactly prune()'s nodes and edges. A budget of edges keeps
prune()'s edges first and says how many of them it left out.

A feature's **top logits** are the tokens its decoder directions (summed over every layer a CLT feature writes to)
promote through the final norm's gain and the unembedding: the direct logit effect, as the logit lens
(nostalgebraist, 2020) and circuit-tracer's feature cards read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gemscope_widgets.backend.analysis.logit_lens import norm_gain
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.errors import CircuitError

MAX_NODE_RANK = 0.99  # feature / error nodes ranked below this share of influence are never drawn


@dataclass
class NodeSummary:
    """The nodes and edges a drawing of a graph holds (module docstring), as numpy arrays.

    Nodes (``[n]``, ascending graph node index): ``nodes`` (graph indices), ``kinds`` (names), ``layer`` (the
    graph's layer, -1 for token embeddings, ``n_layers`` for logits), ``pos``, ``feature`` (-1 off features),
    ``activation`` (feature activation, logit probability, else 0), ``influence``, ``rank`` (0 for tokens and
    logits), ``kept`` (bool). Edges (``[m]``, by influence, strongest first): ``source`` / ``target`` (indices into
    the node arrays), ``weight`` (the adjacency entry), ``edge_rank``, ``edge_kept``. ``n_kept_nodes`` /
    ``n_kept_edges``: prune()'s counts; ``left_out_edges``: prune()'s edges the budget did not hold (0: none).
    """

    nodes: np.ndarray
    kinds: list[str]
    layer: np.ndarray
    pos: np.ndarray
    feature: np.ndarray
    activation: np.ndarray
    influence: np.ndarray
    rank: np.ndarray
    kept: np.ndarray
    source: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    edge_rank: np.ndarray
    edge_kept: np.ndarray
    n_kept_nodes: int
    n_kept_edges: int
    n_edges_total: int
    left_out_edges: int = 0
    labels: dict[int, str] = field(default_factory=dict)


def exclusive_rank(scores: torch.Tensor) -> torch.Tensor:
    """Each entry's share of ``scores.sum()`` held by the entries ranked strictly above it (0 for the top one)."""
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores = scores[order].double()
    total = sorted_scores.sum().clamp(min=1e-30)
    before = (torch.cumsum(sorted_scores, 0) - sorted_scores) / total
    out = torch.empty_like(scores, dtype=torch.float32)
    out[order] = before.float()
    return out


def check_max_edges(max_edges: int | None) -> None:
    """Raise CircuitError unless ``max_edges`` is None (the default budget) or a positive whole number."""
    if max_edges is None:
        return
    if isinstance(max_edges, bool) or not isinstance(max_edges, (int, np.integer)) or max_edges < 1:
        raise CircuitError(f"max_edges must be positive (a whole number, or None: the default budget), "
                           f"got {max_edges!r}.")


def summarise_nodes(
    graph: Any,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    *,
    max_edges: int,
    prune_first: bool = True,
    max_node_rank: float = MAX_NODE_RANK,
) -> NodeSummary:
    """The :class:`NodeSummary` of ``graph`` at ``node_threshold`` / ``edge_threshold``.

    ``max_edges``: the most edges held; with ``prune_first`` prune()'s edges come first (each group by
    influence), else the ``max_edges`` most influential. Raises CircuitError for ``max_edges`` under 1
    (GraphError for thresholds outside [0, 1]).
    """
    check_max_edges(max_edges)
    n = graph.n_nodes
    pruned = graph.prune(node_threshold, edge_threshold)
    kept_edges = pruned.edge_mask & (graph.adjacency_matrix != 0)
    influence = graph.node_influence().float()
    kinds = graph.node_kinds()
    node_rank = exclusive_rank(influence)
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
    if len(scores) > max_edges:
        offset = float(scores.max()) + 1.0 if prune_first else 0.0
        top = torch.topk(scores.double() + sub_kept[tgt, src].double() * offset, max_edges).indices
        tgt, src, scores = tgt[top], src[top], scores[top]
    edge_kept = sub_kept[tgt, src]
    total_edge = edge_scores[edge_scores > 0].double().sum().clamp(min=1e-30)
    order = torch.argsort(scores, descending=True, stable=True)
    tgt, src, scores, edge_kept = tgt[order], src[order], scores[order], edge_kept[order]
    edge_rank = ((torch.cumsum(scores.double(), 0) - scores.double()) / total_edge).float()

    infos = [graph.node_info(int(i)) for i in nodes]
    values = torch.zeros(n)
    values[graph.feature_slice] = graph.selected_activation_values
    values[graph.logit_slice] = graph.logit_probabilities
    labels = {}
    for j, info in enumerate(infos):
        label = graph.feature_labels.get((info.layer, info.feature)) if info.kind == "feature" else None
        if label:
            labels[j] = str(label)
    return NodeSummary(
        nodes=nodes.numpy().astype(np.int64),
        kinds=[kinds[int(i)] for i in nodes],
        layer=np.array([info.layer for info in infos], dtype=np.int64),
        pos=np.array([info.pos for info in infos], dtype=np.int64),
        feature=np.array([info.feature for info in infos], dtype=np.int64),
        activation=values[nodes].numpy().astype(np.float32),
        influence=influence[nodes].numpy().astype(np.float32),
        rank=torch.where(always[nodes], torch.zeros(len(nodes)), node_rank[nodes]).numpy().astype(np.float32),
        kept=pruned.node_mask[nodes].numpy().astype(bool),
        source=src.numpy().astype(np.int64),
        target=tgt.numpy().astype(np.int64),
        weight=weights[tgt, src].numpy().astype(np.float32),
        edge_rank=edge_rank.numpy().astype(np.float32),
        edge_kept=edge_kept.numpy().astype(bool),
        n_kept_nodes=int(pruned.node_mask.sum()),
        n_kept_edges=n_kept_edges,
        n_edges_total=int((graph.adjacency_matrix != 0).sum()),
        left_out_edges=n_kept_edges - int(edge_kept.sum()),
        labels=labels,
    )


def kept_on(
    graph: Any, nodes: np.ndarray, source: np.ndarray, target: np.ndarray, node_threshold: float,
    edge_threshold: float,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``graph.prune(node_threshold, edge_threshold)`` read on given nodes (graph indices) and edges (``source`` /
    ``target``: indices into ``nodes``): ``(node_flags, edge_flags, n_kept_nodes, n_kept_edges)``, flags bool,
    counts over the whole graph (edges of nonzero weight). Raises GraphError for thresholds outside [0, 1]."""
    pruned = graph.prune(node_threshold, edge_threshold)
    kept_edges = pruned.edge_mask & (graph.adjacency_matrix != 0)
    index = torch.from_numpy(np.asarray(nodes, dtype=np.int64))
    src = index[torch.from_numpy(np.asarray(source, dtype=np.int64))]
    dst = index[torch.from_numpy(np.asarray(target, dtype=np.int64))]
    return (pruned.node_mask[index].numpy().astype(bool), kept_edges[dst, src].numpy().astype(bool),
            int(pruned.node_mask.sum()), int(kept_edges.sum()))


def as_transcoder_set(transcoders: Any) -> Any:
    """A :class:`~gemscope_widgets.backend.circuits.transcoder_set.TranscoderSet` from anything
    ``load_transcoders`` takes (a set, a CLT, a list of per-layer transcoders, a folder) or a ``{layer:
    transcoder}`` dict; None stays None."""
    if transcoders is None:
        return None
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


def feature_top_logits(graph: Any, model: Any, transcoders: Any, nodes: list[int], k: int = 5) -> list[list[Any]]:
    """``[[token text, logit effect], ...]`` (``k`` per node): the tokens each feature node's decoder promotes
    most (module docstring), for graph node indices ``nodes``; ``[]`` for a node whose layer the set lacks, and for
    every node when ``model`` or ``transcoders`` is None. Logit effects are in logit units per unit activation."""
    tset = as_transcoder_set(transcoders)
    if model is None or tset is None or not nodes:
        return [[] for _ in nodes]
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


def group_summaries(graph: Any, nodes: np.ndarray) -> list[dict[str, Any]]:
    """Each supernode of ``graph`` read as one node (``graph.grouped()``'s sums), against the drawing's ``nodes``
    (graph indices, e.g. :attr:`NodeSummary.nodes`).

    One dict per supernode, in the order they were made: ``name``; ``members`` (graph indices); ``influence`` (the
    members' summed influence on the logits); ``outputs`` / ``inputs``: ``[[j, weight], ...]`` over the positions
    ``j`` in ``nodes`` of nodes in no supernode, nonzero only, the group's summed edge to / from that node;
    ``to``: ``{other supernode: summed weight from this group to it}`` (nonzero only). Edges between a group's own
    members are internal and left out, as ``graph.grouped()`` leaves them out.
    """
    groups = graph.supernodes
    if not groups:
        return []
    influence = graph.node_influence()
    adjacency = graph.adjacency_matrix
    grouped_nodes = {m for members in groups.values() for m in members}
    free = [j for j, n in enumerate(np.asarray(nodes).tolist()) if int(n) not in grouped_nodes]
    free_index = torch.tensor([int(nodes[j]) for j in free], dtype=torch.long)
    out = []
    for name, members in groups.items():
        m = torch.tensor(members, dtype=torch.long)
        outputs = adjacency[:, m].sum(1)  # [n_nodes]: the group's summed weight into each target
        inputs = adjacency[m, :].sum(0)  # [n_nodes]: each source's summed weight into the group
        to = {other: float(outputs[torch.tensor(ms, dtype=torch.long)].sum()) for other, ms in groups.items()
              if other != name and ms}
        out.append({
            "name": name,
            "members": [int(x) for x in members],
            "influence": float(influence[m].sum()) if members else 0.0,
            "outputs": [[j, float(w)] for j, w in zip(free, outputs[free_index].tolist()) if w != 0.0],
            "inputs": [[j, float(w)] for j, w in zip(free, inputs[free_index].tolist()) if w != 0.0],
            "to": {k: v for k, v in to.items() if v != 0.0},
        })
    return out
