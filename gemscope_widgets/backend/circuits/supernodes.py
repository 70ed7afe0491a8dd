"""Supernodes: named groups of an attribution graph's nodes, read as one node.

A researcher reading a graph groups features that do one job ("say a capital", "Texas") and reasons about the
group. A supernode is stored as Neuronpedia's graph viewer stores it, ``qParams.supernodes`` entries
``[name, node_id, ...]`` (kept in ``graph.info["neuronpedia"]``, so a graph file imported with supernodes keeps
them, and ``save_neuronpedia`` / ``save`` write them). Read as one node, a group's **edges are sums**: its
outgoing weight to a target is the sum of its members' weights to it, its incoming weight from a source the sum of
the source's weights to the members (the direct effect on the summed inputs), and its influence on the logits
is the sum of its members' influences, since influence is linear in the source. Interventions on a supernode
apply to every member (``graph.intervene({"name": 0.0})`` clamps each member to 0; ``mode="scale"`` scales each).
Source: the supernode workflow of "Circuit Tracing" (Ameisen et al., 2025) and Neuronpedia's graph viewer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gemscope_widgets.backend.circuits.neuronpedia_json import DEFAULT_Q_PARAMS, INFO_KEY
from gemscope_widgets.errors import GraphError

if TYPE_CHECKING:
    from gemscope_widgets.backend.circuits.graph import AttributionGraph


def _entries(graph: AttributionGraph) -> list[Any]:
    """The graph's ``qParams.supernodes`` entries, read only (an empty list when it has none)."""
    entries = graph.info.get(INFO_KEY, {}).get("qParams", {}).get("supernodes")
    return entries if isinstance(entries, list) else []


def _q_params(graph: AttributionGraph) -> dict[str, Any]:
    """The graph's ``qParams``, made when a supernode is first written."""
    record = graph.info.setdefault(INFO_KEY, {})
    q: dict[str, Any] = record.setdefault("qParams", dict(DEFAULT_Q_PARAMS))
    if not isinstance(q.get("supernodes"), list):
        q["supernodes"] = []
    return q


def supernodes(graph: AttributionGraph) -> dict[str, list[int]]:
    """``{name: [node index, ...]}`` of the graph's supernodes, in the order they were made.

    Members whose ids this graph does not have (a file's supernode over nodes pruned away) are left out.
    """
    out: dict[str, list[int]] = {}
    for entry in _entries(graph):
        if not isinstance(entry, list) or not entry or not isinstance(entry[0], str):
            continue
        members = []
        for node_id in entry[1:]:
            try:
                members.append(graph.node_index(node_id))
            except GraphError:
                continue
        out[entry[0]] = members
    return out


def group(graph: AttributionGraph, name: str, nodes: Iterable[Any]) -> list[int]:
    """Make (or replace) the supernode ``name`` over ``nodes`` (node indices, ``(layer, pos, feature)`` triples
    or Neuronpedia node ids); returns the member node indices, sorted.

    Raises GraphError for an empty or non-string name, fewer than two distinct nodes, a node of another
    supernode, or a logit node (logits are the graph's targets, not a mechanism to group).
    """
    if not isinstance(name, str) or not name.strip():
        raise GraphError("A supernode needs a name (a non-empty string), e.g. graph.group('capital', [3, 7]).")
    if isinstance(nodes, (str, bytes)):
        raise GraphError("Pass the supernode's nodes as a list (indices, (layer, pos, feature) or node ids).")
    members = sorted({graph.node_index(ref) for ref in nodes})
    if len(members) < 2:
        raise GraphError(f"A supernode groups at least two nodes; {name!r} would have {len(members)}.")
    logits = [m for m in members if graph.node_kind(m) == "logit"]
    if logits:
        raise GraphError(f"Logit nodes cannot be grouped (node {logits[0]}): group the features that drive them.")
    taken = {m: other for other, ms in supernodes(graph).items() if other != name for m in ms}
    clash = [m for m in members if m in taken]
    if clash:
        raise GraphError(
            f"Node {graph.node_id(clash[0])} is already in supernode {taken[clash[0]]!r}: ungroup it first "
            f"(graph.ungroup({taken[clash[0]]!r}))."
        )
    q = _q_params(graph)
    q["supernodes"] = [e for e in q["supernodes"] if not (isinstance(e, list) and e and e[0] == name)]
    q["supernodes"].append([name, *(graph.node_id(m) for m in members)])
    return members


def ungroup(graph: AttributionGraph, name: str) -> None:
    """Remove the supernode ``name`` (its nodes stay in the graph). Raises GraphError for an unknown name."""
    entries = _entries(graph)
    kept = [e for e in entries if not (isinstance(e, list) and e and e[0] == name)]
    if len(kept) == len(entries):
        raise GraphError(f"No supernode named {name!r}; the graph has {sorted(supernodes(graph))}.")
    _q_params(graph)["supernodes"] = kept


@dataclass
class GroupedGraph:
    """The graph with each supernode merged into one node.

    ``members[i]``: the original node indices of grouped node ``i`` (one index for a node in no group);
    ``labels[i]``: the supernode's name or the node's label; ``adjacency``: ``[n, n]`` summed edge weights
    (row = target, column = source); ``influence``: ``[n]`` summed influence on the logits.
    """

    members: list[list[int]]
    labels: list[str]
    adjacency: Tensor
    influence: Tensor


def grouped(graph: AttributionGraph) -> GroupedGraph:
    """Merge every supernode of ``graph`` into one node with summed edges and influence (module docstring)."""
    groups = supernodes(graph)
    of: dict[int, str] = {m: name for name, ms in groups.items() for m in ms}
    members: list[list[int]] = []
    labels: list[str] = []
    placed: set[str] = set()
    for i in range(graph.n_nodes):
        name = of.get(i)
        if name is None:
            members.append([i])
            labels.append(graph.node_label(i))
        elif name not in placed:
            placed.add(name)
            members.append(sorted(groups[name]))
            labels.append(name)
    n = len(members)
    assign = torch.zeros(n, graph.n_nodes)  # [grouped, original]: 1 where the original node belongs
    for g, ms in enumerate(members):
        assign[g, ms] = 1.0
    adjacency = assign @ graph.adjacency_matrix.float() @ assign.T
    # A group's edges to itself are its members' edges to each other: internal, not drawn.
    adjacency.fill_diagonal_(0.0)
    influence = assign @ graph.node_influence().float()
    return GroupedGraph(members, labels, adjacency, influence)
