"""The graph reduced so that the scores of any pinned set of some candidate features can be recomputed cheaply
(in the browser, as the user pins): circuit-tracer's ``compute_graph_scores`` on the pinned subgraph as
Neuronpedia's graph viewer defines it (``score.worker.ts``; see ``AttributionGraph.scores(pinned=...)``).

That subgraph merges every unpinned feature into the error node of its layer and position (its outgoing edges
added to the error node's, its own edges removed; a feature whose error node has no edge at all is removed without
merging). Merging is linear and order-free, so the features that are never candidates are merged once here; what
is left is the **score matrix**: the adjacency over ``[candidates, errors, tokens, logits]`` (row = target,
column = source), with each candidate's error node, from which :func:`pinned_scores` (and ``js/lib/
circuit_scores.ts``, the same steps) merge the unpinned candidates and compute the two scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gemscope_widgets.backend.circuits.influence import graph_scores
from gemscope_widgets.errors import GraphError


@dataclass
class ScoreMatrix:
    """The reduced graph (module docstring). Index space: ``n_candidates`` candidate features (``candidates``:
    their graph node indices), then ``n_errors`` error nodes, ``n_tokens`` token nodes, and the logit nodes.

    ``rows`` / ``cols`` / ``values``: ``[nnz]`` COO of the adjacency in that space (row = target), nonzero only;
    ``candidate_error``: ``[n_candidates]`` each candidate's error node in that space (-1: that error node has no
    edge, the candidate is removed without merging); ``logit_weights``: ``[n_logits]`` the logit probabilities.
    """

    candidates: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    candidate_error: np.ndarray
    logit_weights: np.ndarray
    n_errors: int
    n_tokens: int

    @property
    def n_candidates(self) -> int:
        return len(self.candidates)

    @property
    def size(self) -> int:
        """The number of nodes of the reduced graph."""
        return self.n_candidates + self.n_errors + self.n_tokens + len(self.logit_weights)


def _error_of(graph: Any, features: torch.Tensor) -> torch.Tensor:
    """Graph index of the error node at each feature node's layer and position."""
    layer, pos = graph.selected_active_features[features, 0], graph.selected_active_features[features, 1]
    errors: torch.Tensor = graph.error_slice.start + layer * graph.n_pos + pos
    return errors


def score_matrix(graph: Any, candidates: Any) -> ScoreMatrix:
    """The :class:`ScoreMatrix` of ``graph`` for the candidate feature nodes ``candidates`` (graph node indices).

    Raises GraphError when a candidate is not a feature node.
    """
    cand = torch.as_tensor(np.asarray(sorted({int(c) for c in candidates}), dtype=np.int64))
    if len(cand) and (int(cand.min()) < 0 or int(cand.max()) >= graph.n_selected):
        raise GraphError(f"Score candidates must be feature nodes 0..{graph.n_selected - 1}.")
    adj = graph.adjacency_matrix.clone().float()
    errors_all = _error_of(graph, torch.arange(graph.n_selected))
    has_edges = (adj[errors_all] != 0).any(1) | (adj[:, errors_all] != 0).any(0)
    others = torch.ones(graph.n_selected, dtype=torch.bool)
    others[cand] = False
    merged = others.nonzero().flatten()
    into = has_edges[merged]
    adj.index_add_(1, errors_all[merged[into]], adj[:, merged[into]])
    adj[merged] = 0
    adj[:, merged] = 0
    keep = torch.cat([cand, torch.arange(graph.error_slice.start, graph.n_nodes)])
    sub = adj[keep][:, keep]
    rows, cols = sub.nonzero(as_tuple=True)
    n_cand = len(cand)
    candidate_error = torch.where(has_edges[cand], errors_all[cand] - graph.error_slice.start + n_cand,
                                  torch.full_like(cand, -1))
    return ScoreMatrix(
        candidates=cand.numpy(),
        rows=rows.numpy().astype(np.int64),
        cols=cols.numpy().astype(np.int64),
        values=sub[rows, cols].numpy().astype(np.float32),
        candidate_error=candidate_error.numpy().astype(np.int64),
        logit_weights=graph.logit_probabilities.numpy().astype(np.float32),
        n_errors=graph.n_layers * graph.n_pos,
        n_tokens=graph.n_pos,
    )


def pinned_scores(matrix: ScoreMatrix, pinned: Any) -> tuple[float, float]:
    """``(replacement_score, completeness_score)`` of the subgraph pinning the candidate features ``pinned``
    (graph node indices; nodes that are not candidates are ignored, as ``graph.scores`` ignores pinned nodes that
    are not features), from the reduced graph alone: ``graph.scores(pinned=...)`` up to float rounding."""
    size = matrix.size
    adj = torch.zeros(size, size, dtype=torch.float64)
    adj[torch.from_numpy(matrix.rows), torch.from_numpy(matrix.cols)] = torch.from_numpy(matrix.values).double()
    pinned_set = {int(p) for p in pinned}
    for j, node in enumerate(matrix.candidates.tolist()):
        if node in pinned_set:
            continue
        e = int(matrix.candidate_error[j])
        if e >= 0:
            adj[:, e] += adj[:, j]
        adj[j] = 0
        adj[:, j] = 0
    weights = torch.zeros(size, dtype=torch.float64)
    weights[size - len(matrix.logit_weights):] = torch.from_numpy(matrix.logit_weights).double()
    start = matrix.n_candidates
    return graph_scores(adj, weights, slice(start + matrix.n_errors, start + matrix.n_errors + matrix.n_tokens),
                        slice(start, start + matrix.n_errors))
