"""The subgraph a reader starts from: the nodes of ``prune()`` that carry the most influence on the top logit.

At circuit-tracer's default thresholds a 10-token prompt keeps a few hundred nodes and thousands of edges, which
draw as a tangle. The strongest paths from the prompt to the most probable next token run through the nodes with
the most influence on that token alone, so those (at most ``max_nodes`` feature and error nodes, ranked by
circuit-tracer's ``compute_node_influence`` seeded with the top logit only) are the legible start; the rest of
the pruned graph is one control away, and a view that shows this subgraph says so.
Source: the "top paths to a logit" reading of attribution graphs in "Circuit Tracing" (Ameisen et al., 2025).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gemscope_widgets.backend.circuits.influence import compute_node_influence
from gemscope_widgets.errors import GraphError

MAX_NODES = 30  # feature and error nodes in the legible subgraph


@dataclass
class LegibleSubgraph:
    """``nodes``: ``[n_nodes]`` bool, the chosen feature / error nodes plus every token node and the top logit;
    ``logit``: the graph node index of the top logit; ``n_chosen``: the feature / error nodes chosen;
    ``n_pruned``: the feature / error nodes ``prune()`` keeps (what the subgraph leaves out is the difference)."""

    nodes: Tensor
    logit: int
    n_chosen: int
    n_pruned: int


def legible_subgraph(graph: Any, node_threshold: float = 0.8, edge_threshold: float = 0.98, *,
                     max_nodes: int = MAX_NODES, logit: int = 0) -> LegibleSubgraph:
    """The legible subgraph of ``graph.prune(node_threshold, edge_threshold)`` toward logit ``logit`` (0: the
    most probable). Raises GraphError for a ``max_nodes`` under 1 or a logit the graph lacks."""
    if max_nodes < 1:
        raise GraphError(f"max_nodes must be at least 1, got {max_nodes}.")
    if not 0 <= logit < graph.n_logits:
        raise GraphError(f"logit must be one of the graph's {graph.n_logits} logits (0..{graph.n_logits - 1}).")
    target = graph.logit_slice.start + logit
    seed = torch.zeros(graph.n_nodes)
    seed[target] = 1.0
    influence = compute_node_influence(graph.adjacency_matrix, seed)
    kept = graph.prune(node_threshold, edge_threshold).node_mask
    inner = torch.zeros(graph.n_nodes, dtype=torch.bool)
    inner[: graph.token_slice.start] = True  # feature and error nodes
    candidates = (kept & inner & (influence > 0)).nonzero().flatten()
    order = torch.argsort(influence[candidates], descending=True, stable=True)
    chosen = candidates[order[:max_nodes]]
    nodes = torch.zeros(graph.n_nodes, dtype=torch.bool)
    nodes[chosen] = True
    nodes[graph.token_slice] = True
    nodes[target] = True
    return LegibleSubgraph(nodes, target, len(chosen), int((kept & inner).sum()))
