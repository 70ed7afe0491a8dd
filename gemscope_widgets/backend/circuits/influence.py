"""Influence and pruning of an attribution graph: circuit-tracer's ``graph.py`` math, unchanged.

Source: ``compute_influence``, ``normalize_matrix``, ``compute_node_influence``, ``compute_edge_influence``,
``find_threshold``, ``prune_graph`` and ``compute_graph_scores`` of circuit-tracer 0.5.0
(decoderesearch/circuit-tracer), which implement "Circuit Tracing: Revealing Computational Graphs in Language
Models" (Ameisen et al., 2025). Matrices are ``[n_nodes, n_nodes]`` with row = target, column = source; logit
weights are ``[n_nodes]`` (the logit probabilities on the logit nodes, zero elsewhere).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from gemscope_widgets.errors import GraphError


class PruneResult(NamedTuple):
    """``prune()``'s answer, as circuit-tracer's ``PruneResult``.

    ``node_mask [n_nodes] bool``, ``edge_mask [n_nodes, n_nodes] bool`` (row = target, column = source),
    ``cumulative_scores [n_nodes]``: each node's cumulative share of total influence when nodes are sorted
    by influence (the value Neuronpedia shows as a node's ``influence``).
    """

    node_mask: Tensor
    edge_mask: Tensor
    cumulative_scores: Tensor


def normalize_matrix(matrix: Tensor) -> Tensor:
    """``|A|`` with each row divided by its sum (rows summing to zero stay zero)."""
    normalized = matrix.abs()
    return normalized / normalized.sum(dim=1, keepdim=True).clamp(min=1e-10)


def compute_influence(a: Tensor, logit_weights: Tensor, max_iter: int = 1000) -> Tensor:
    """``logit_weights @ (A + A² + A³ + …)``, iterated until the product vanishes (the graph is acyclic)."""
    current = logit_weights @ a
    influence = current.clone()
    iterations = 0
    while current.any():
        if iterations >= max_iter:
            raise GraphError(f"Influence did not converge after {iterations} iterations: the graph has a cycle.")
        current = current @ a
        influence += current
        iterations += 1
    return influence


def compute_node_influence(adjacency_matrix: Tensor, logit_weights: Tensor) -> Tensor:
    """Each node's total (direct and indirect) influence on the weighted logits, on the row-normalised |A|."""
    return compute_influence(normalize_matrix(adjacency_matrix), logit_weights)


def compute_edge_influence(pruned_matrix: Tensor, logit_weights: Tensor) -> Tensor:
    """Each edge's influence: its row-normalised weight times its target's influence (logits included)."""
    normalized = normalize_matrix(pruned_matrix)
    influence = compute_influence(normalized, logit_weights) + logit_weights
    return normalized * influence[:, None]


def find_threshold(scores: Tensor, threshold: float) -> Tensor:
    """The score above which the highest scores cover ``threshold`` of the total (circuit-tracer's function).

    Scores are non-negative; only the positive ones are sorted (an edge-score matrix is mostly zeros), which gives
    circuit-tracer's answer: past the positive scores it returns 0.
    """
    positive = scores[scores > 0]
    if positive.numel() == 0:
        return torch.zeros((), dtype=scores.dtype)
    sorted_scores = torch.sort(positive, descending=True).values
    # The total summed as circuit-tracer sums it (over the sorted scores, zeros included): same rounding, same cut.
    total = torch.cat([sorted_scores, sorted_scores.new_zeros(scores.numel() - len(sorted_scores))]).sum()
    cumulative = torch.cumsum(sorted_scores, dim=0) / total
    index = int(torch.searchsorted(cumulative, torch.tensor(threshold, dtype=cumulative.dtype)).item())
    if index >= len(sorted_scores) and len(sorted_scores) < scores.numel():
        return torch.zeros((), dtype=scores.dtype)
    return sorted_scores[min(index, len(sorted_scores) - 1)]


def check_thresholds(node_threshold: float, edge_threshold: float) -> None:
    """Raise GraphError unless both pruning thresholds are numbers in [0, 1] (the fractions of total influence
    that :func:`prune_graph` keeps); cheap, so callers check before a graph is built."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise GraphError(f"{name} must be a number between 0 and 1, got {value!r}.") from None
        if not 0.0 <= number <= 1.0:
            raise GraphError(f"{name} must be between 0 and 1, got {value}.")


def prune_graph(
    adjacency_matrix: Tensor,
    logit_weights: Tensor,
    n_features: int,
    n_always: int,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> PruneResult:
    """circuit-tracer's ``prune_graph``: keep the nodes covering ``node_threshold`` of total influence, then the
    edges covering ``edge_threshold``, then drop nodes left without outgoing (features, errors) or incoming
    (features) edges, until stable. The first ``n_features`` nodes are features; the last ``n_always`` (tokens
    and logits) are always kept. Raises GraphError for thresholds outside [0, 1]."""
    check_thresholds(node_threshold, edge_threshold)
    node_influence = compute_node_influence(adjacency_matrix, logit_weights)
    node_mask = node_influence >= find_threshold(node_influence, node_threshold)
    node_mask[-n_always:] = True

    pruned = adjacency_matrix.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    edge_scores = compute_edge_influence(pruned, logit_weights)
    edge_mask = edge_scores >= find_threshold(edge_scores.flatten(), edge_threshold)

    old = node_mask.clone()
    node_mask[:-n_always] &= edge_mask[:, :-n_always].any(0)
    node_mask[:n_features] &= edge_mask[:n_features].any(1)
    while not torch.equal(node_mask, old):
        old[:] = node_mask
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:-n_always] &= edge_mask[:, :-n_always].any(0)
        node_mask[:n_features] &= edge_mask[:n_features].any(1)

    sorted_scores, order = torch.sort(node_influence, descending=True)
    cumulative = torch.cumsum(sorted_scores, dim=0) / torch.sum(sorted_scores).clamp(min=1e-30)
    scores = torch.zeros_like(node_influence)
    scores[order] = cumulative
    return PruneResult(node_mask, edge_mask, scores)


def graph_scores(
    adjacency_matrix: Tensor, logit_weights: Tensor, token_slice: slice, error_slice: slice
) -> tuple[float, float]:
    """circuit-tracer's ``compute_graph_scores``: ``(replacement_score, completeness_score)``, the share of
    token→logit influence that avoids error nodes, and the influence-weighted share of node inputs that come from
    features or tokens rather than errors."""
    normalized = normalize_matrix(adjacency_matrix)
    influence = compute_influence(normalized, logit_weights)
    token_inf = influence[token_slice].sum()
    error_inf = influence[error_slice].sum()
    replacement = token_inf / (token_inf + error_inf).clamp(min=1e-30)
    non_error = 1 - normalized[:, error_slice].sum(dim=-1)
    out = influence + logit_weights
    completeness = (non_error * out).sum() / out.sum()
    return float(replacement), float(completeness)
