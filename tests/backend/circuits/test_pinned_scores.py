"""graph.scores(pinned=...) equals Neuronpedia's viewer computation on the same subgraph, written here from the
exported graph JSON alone (a plain-Python port of the algorithm of its score worker: nodes sorted by type, layer,
position, feature; unpinned features' columns merged into their error node; normalised |weights|; influence series)."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.circuits.graph import AttributionGraph
from tests.fixtures.graphs import synthetic_graph

ORDER = ["cross layer transcoder", "mlp reconstruction error", "embedding", "logit"]


def _viewer_scores(data: dict, pinned: list[str]) -> tuple[float, float]:
    nodes = sorted(data["nodes"], key=lambda n: (ORDER.index(n["feature_type"]),
                                                 0 if n["layer"] == "E" else int(n["layer"]), n["ctx_idx"],
                                                 n.get("feature") or 0))
    index = {n["node_id"]: i for i, n in enumerate(nodes)}
    size = len(nodes)
    a = [[0.0] * size for _ in range(size)]
    for link in data["links"]:
        if link["source"] in index and link["target"] in index:
            a[index[link["target"]]][index[link["source"]]] = link["weight"]
    errors = {(n["layer"], n["ctx_idx"]): i for i, n in enumerate(nodes)
              if n["feature_type"] == "mlp reconstruction error"}
    for i, n in enumerate(nodes):
        if n["feature_type"] != "cross layer transcoder" or n["node_id"] in pinned:
            continue
        e = errors.get((n["layer"], n["ctx_idx"]))
        if e is not None:
            for r in range(size):
                a[r][e] += a[r][i]
        for c in range(size):
            a[i][c] = 0.0
        for r in range(size):
            a[r][i] = 0.0
    count = {t: sum(n["feature_type"] == t for n in nodes) for t in ORDER}
    err0 = count[ORDER[0]]
    err1 = err0 + count[ORDER[1]]
    tok1 = err1 + count[ORDER[2]]
    weights = [0.0] * size
    logits = [n["token_prob"] for n in nodes if n["feature_type"] == "logit"]
    for k, p in enumerate(logits):
        weights[size - len(logits) + k] = p
    norm = []
    for row in a:
        total = max(sum(abs(v) for v in row), 1e-10)
        norm.append([abs(v) / total for v in row])
    current = [sum(weights[i] * norm[i][j] for i in range(size)) for j in range(size)]
    influence = list(current)
    while any(v != 0 for v in current):
        current = [sum(current[i] * norm[i][j] for i in range(size)) for j in range(size)]
        influence = [x + y for x, y in zip(influence, current)]
    token = sum(influence[err1:tok1])
    error = sum(influence[err0:err1])
    replacement = token / (token + error)
    out = [x + w for x, w in zip(influence, weights)]
    non_error = [1 - sum(row[err0:err1]) for row in norm]
    completeness = sum(f * o for f, o in zip(non_error, out)) / sum(out)
    return replacement, completeness


def test_pinned_subgraph_scores_equal_the_viewers():
    graph = synthetic_graph(n_pos=5, n_layers=3, n_features=14, n_edges=120, dense_logits=True, seed=5)
    data = graph.to_neuronpedia(node_threshold=1.0, edge_threshold=1.0, scan="gemma-3-270m")
    shown = AttributionGraph.from_neuronpedia(data)  # exactly the exported nodes and links
    features = [n["node_id"] for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert len(features) >= 6
    for pinned in (features[:1], features[::2], features):
        got = shown.scores(pinned=pinned)
        want = _viewer_scores(data, pinned)
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), pinned
    # Pinning every feature is the whole graph's score; pinning none makes every feature an error.
    assert shown.scores(pinned=features) == pytest.approx(shown.scores(), rel=1e-6)
    assert shown.scores(pinned=[])[0] < shown.scores()[0]


def test_pinned_supernode_counts_its_members():
    graph = synthetic_graph(n_features=20, n_edges=200, dense_logits=True, seed=6)
    graph.group("g", [0, 1, 2])
    assert graph.scores(pinned=["g", 5]) == pytest.approx(graph.scores(pinned=[0, 1, 2, 5]))
    assert not torch.equal(torch.tensor(graph.scores(pinned=["g"])), torch.tensor(graph.scores()))
