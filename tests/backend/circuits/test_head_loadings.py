"""Head loadings: each cross-position edge split over (layer, head) sums to the edge weight, and each share equals
the drop of the edge recomputed by the attribution's own pull-back with that head's frozen pattern row masked as
the rule implies (tiny model and real 270M with the demo transcoders); chat prompts; bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gemscope_widgets.backend.circuits.active_nodes import active_nodes, input_directions
from gemscope_widgets.backend.circuits.attribution import attribute, pull_back
from gemscope_widgets.backend.circuits.graph import AttributionGraph, GraphError
from gemscope_widgets.backend.circuits.replacement import capture_forward
from gemscope_widgets.backend.circuits.targets import logit_difference
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders

PROMPT = "The quick brown fox jumps over the lazy dog"


def sum_error(graph, loadings) -> float:
    """Largest |Σ shares − edge weight| / |edge weight| over the split edges; an edge under 1e-3 of its target's
    largest edge is measured against that floor instead (the graph's float32 edge is itself only that exact when its
    heads' shares cancel: on the real 270M a few logit edges of 1e-4 × the row's largest edge have Σ|share| a
    thousand times the edge, and their float32 pull-back differs from a float64 one by 1e-4 of the edge)."""
    total = loadings.shares.double().sum((1, 2))
    weights = loadings.weights.double()
    floor = 1e-3 * graph.adjacency_matrix.abs().max(1).values[loadings.edges[:, 0]].double()
    return float(((total - weights).abs() / torch.maximum(weights.abs(), floor)).max())


def frozen(graph):
    """The graph's frozen forward and nodes, captured here (not through the module under test)."""
    rep = graph.replacement
    fwd = capture_forward(rep.model, graph.input_tokens)
    return fwd, active_nodes(fwd, rep.transcoders, rep.zero_positions, rep.model.device)


def pulled_back_edge(graph, frozen_state, source: int, target: int, masked: list[tuple[int, int]]) -> float:
    """The edge recomputed by attribute's own pull-back in the frozen model with, for each (layer, head) in
    ``masked``, row ``i`` (the target's position) of that head's pattern reduced to its diagonal."""
    gm, tset = graph.replacement.model, graph.replacement.transcoders
    fwd, nodes = frozen_state
    kind, layer, pos, feature = graph.node_info(target)
    patterns = fwd.patterns.clone()
    for ml, mh in masked:
        keep = patterns[ml, mh, pos, pos].clone()
        patterns[ml, mh, pos] = 0
        patterns[ml, mh, pos, pos] = keep
    fwd = dataclasses.replace(fwd, patterns=patterns)
    if kind == "feature":
        inject = input_directions(fwd, tset, torch.tensor([[layer, pos, feature]]), gm.device)
    else:
        w_u = gm.lm_head.weight.float()
        inject = (fwd.s_final[pos] * (w_u[feature] - w_u.mean(0)))[None]
    n_cols = graph.n_active + (graph.n_layers + 1) * graph.n_pos
    with torch.no_grad():
        row, _ = pull_back(fwd, nodes, torch.tensor([layer]), torch.tensor([pos]), inject, n_cols)
    if source < graph.n_selected:
        col = int(graph.selected_features[source])
    else:
        col = graph.n_active + source - graph.n_selected
    return float(row[0, col])


def check_masked_recomputation(graph, source: int, target: int, n_checked: int | None = None) -> int:
    """Every head's share == edge(rows i diagonal above layer l) − edge(also head h's row i at layer l), on every
    layer or on the ``n_checked`` layers whose heads carry the most of the edge.

    Returns how many heads had a share above 1% of the edge (so the check was not vacuous)."""
    split = graph.edge_heads(source, target)
    state = frozen(graph)
    n_layers, n_heads = split.shares.shape
    top = graph.node_info(target).layer
    scale = max(abs(split.weight), float(split.shares.abs().max()))
    assert graph.adjacency_matrix[target, source] == pytest.approx(
        pulled_back_edge(graph, state, source, target, []), rel=1e-4, abs=1e-6 * scale)
    # Every row i reduced to its diagonal: nothing reaches i from elsewhere, so the edge vanishes.
    everything = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    assert abs(pulled_back_edge(graph, state, source, target, everything)) <= 1e-5 * scale
    sizeable = 0
    layers = list(range(min(top, n_layers - 1), -1, -1))
    if n_checked is not None:
        layers = torch.argsort(split.shares.abs().sum(1), descending=True)[:n_checked].tolist()
    for layer in layers:
        above = [(m, h) for m in range(layer + 1, n_layers) for h in range(n_heads)]
        base = pulled_back_edge(graph, state, source, target, above)
        for h in range(n_heads):
            dropped = base - pulled_back_edge(graph, state, source, target, [*above, (layer, h)])
            assert float(split.shares[layer, h]) == pytest.approx(dropped, rel=1e-3, abs=1e-5 * scale), (layer, h)
            sizeable += abs(dropped) > 0.01 * abs(split.weight)
    return sizeable


# ---- tiny model ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_graphs(tiny_model, tiny_transcoder_root):
    out = {}
    for which, site in (("affine", "transcoder_all"), ("clt", "clt")):
        tset = load_transcoders(tiny_transcoder_root / which, site)
        out[which] = attribute(tiny_model, tset, PROMPT, max_feature_nodes=None, progress=False, batch_size=32)
    return out


@pytest.mark.parametrize("which", ["affine", "clt"])
def test_shares_sum_to_every_kept_cross_position_edge_tiny(tiny_graphs, which):
    graph = tiny_graphs[which]
    loadings = graph.head_loadings(progress=False)
    pruned = graph.prune()
    info = [graph.node_info(k) for k in range(graph.n_nodes)]
    expected = {(t, s) for t, s in pruned.edge_mask.nonzero().tolist() if info[t].pos != info[s].pos}
    assert {tuple(e) for e in loadings.edges.tolist()} == expected and len(expected) > 100
    assert sum_error(graph, loadings) < 1e-4
    assert loadings.shares.shape[1:] == (graph.n_layers, 4)
    # A single edge asked for on its own gives the same split as the whole-graph pass.
    t, s = loadings.edges[len(loadings) // 2].tolist()
    alone = graph.edge_heads(s, t)
    torch.testing.assert_close(alone.shares, loadings.shares[len(loadings) // 2])
    assert abs(alone.residual) < 1e-4 * abs(alone.weight) and alone.not_via_head == 0.0
    assert (alone.heads[0].layer, alone.heads[0].head) == divmod(int(alone.shares.abs().argmax()), 4)
    # The ranking: every head once, influence shares summing to 1, sorted.
    heads = loadings.heads()
    assert len(heads) == graph.n_layers * 4 and sum(h.influence for h in heads) == pytest.approx(1.0)
    assert [h.influence for h in heads] == sorted((h.influence for h in heads), reverse=True)
    assert graph.top_heads(3) == heads[:3]


def test_unkept_edge_and_edge_from_a_later_position(tiny_graphs):
    graph = tiny_graphs["affine"]
    # The error node of layer 0 at position 2 into the top logit: an edge pruning may drop, computed on demand.
    source = graph.error_slice.start + 0 * graph.n_pos + 2
    target = graph.logit_slice.start
    split = graph.edge_heads(source, target)
    assert split.shares.double().sum() == pytest.approx(split.weight, rel=1e-4) and split.weight != 0
    # It is written by layer 0's MLP, after layer 0's attention: only the heads of layers 1-3 can carry it.
    assert not split.shares[0].any() and split.shares[1:].abs().sum() > 0
    # A feature at a later position than its target: causal attention, no path, all zero.
    feats = graph.selected_active_features
    late = int((feats[:, 1] == graph.n_pos - 1).nonzero()[0, 0])
    early = int(((feats[:, 1] < graph.n_pos - 2) & (feats[:, 0] == 3)).nonzero()[0, 0])
    split = graph.edge_heads(late, early)
    assert split.weight == 0 and not split.shares.any()


def test_direction_target(tiny_model, tiny_transcoder_root, tmp_path):
    tset = load_transcoders(tiny_transcoder_root / "affine")
    top = attribute(tiny_model, tset, PROMPT, max_logits=2, progress=False)
    a, b = top.logit_tokens.tolist()
    graph = attribute(tiny_model, tset, PROMPT, targets=[logit_difference(tiny_model, a, b)], progress=False)
    target = graph.logit_slice.start
    loadings = graph.head_loadings(progress=False)
    assert (loadings.edges[:, 0] == target).sum() > 5 and not loadings.skipped
    assert sum_error(graph, loadings) < 1e-4
    # Read from a file, the direction is gone: said, and left out of the whole-graph pass.
    loaded = AttributionGraph.load(graph.save(tmp_path / "d.safetensors")).attach(tiny_model, tset)
    with pytest.raises(GraphError, match="direction target"):
        loaded.edge_heads(graph.token_slice.start + 1, target)
    assert loaded.head_loadings(progress=False).skipped == [target]


@pytest.mark.parametrize("which", ["affine", "clt"])
def test_each_share_is_the_drop_with_its_pattern_row_masked_tiny(tiny_graphs, which):
    graph = tiny_graphs[which]
    # A token three positions back into a layer-3 feature: paths cross in every layer.
    feats = graph.selected_active_features
    target = int(((feats[:, 0] == 3) & (feats[:, 1] == graph.n_pos - 1)).nonzero()[0, 0])
    source = graph.token_slice.start + graph.n_pos - 4
    assert check_masked_recomputation(graph, source, target) >= 3


def test_bad_input(tiny_graphs, tiny_transcoder_root, tmp_path):
    graph = tiny_graphs["affine"]
    feats = graph.selected_active_features
    a, b = (feats[:, 1] == 3).nonzero()[:2, 0].tolist()
    low, high = sorted((a, b), key=lambda k: int(feats[k, 0]))
    with pytest.raises(GraphError, match="crosses no position"):
        graph.edge_heads(low, high)
    with pytest.raises(GraphError, match="does not exist"):
        graph.edge_heads(graph.n_nodes + 5, 0)
    with pytest.raises(GraphError, match="not a feature node"):
        graph.edge_heads((0, 1, 99999), 0)
    with pytest.raises(GraphError, match="token node"):
        graph.edge_heads(0, graph.token_slice.start + 4)
    with pytest.raises(GraphError, match="no outgoing"):
        graph.edge_heads(graph.logit_slice.start, 0)
    with pytest.raises(GraphError, match="between 0 and 1"):
        graph.head_loadings(node_threshold=1.5)
    loaded = AttributionGraph.load(graph.save(tmp_path / "g.safetensors"))
    with pytest.raises(GraphError, match="no model attached"):
        loaded.edge_heads(graph.token_slice.start + 1, graph.logit_slice.start)
    loaded.attach(graph.replacement.model, graph.replacement.transcoders)
    split = loaded.edge_heads(graph.token_slice.start + 1, graph.logit_slice.start)
    assert split.shares.double().sum() == pytest.approx(split.weight, rel=1e-4)
    # A set that did not build the graph does not reproduce it: said, not silently wrong.
    loaded.attach(graph.replacement.model, load_transcoders(tiny_transcoder_root / "plain"))
    with pytest.raises(GraphError, match="do not reproduce"):
        loaded.edge_heads(graph.token_slice.start + 1, graph.logit_slice.start)


# ---- real Gemma 3 270M with the demo transcoders ------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_set(real_model):
    from gemscope_widgets.backend.default_transcoders import load_demo_transcoders

    return load_transcoders(load_demo_transcoders(real_model, progress=False))


@pytest.mark.real_model
def test_real_270m_demo_transcoders(real_model, demo_set):
    graph = attribute(real_model, demo_set, "Michael Jordan plays the sport of", max_feature_nodes=256,
                      progress=False)
    loadings = graph.head_loadings(progress=False)
    assert len(loadings) > 100
    assert sum_error(graph, loadings) < 1e-4
    # The kept edge into the top logit from the feature with the largest weight: masked recomputation.
    logit = graph.logit_slice.start
    into = loadings.edges[loadings.edges[:, 0] == logit]
    feature_sources = into[into[:, 1] < graph.n_selected, 1]
    source = int(feature_sources[torch.argmax(graph.adjacency_matrix[logit, feature_sources].abs())])
    assert check_masked_recomputation(graph, source, logit, n_checked=3) >= 1


@pytest.mark.real_model
@pytest.mark.filterwarnings("ignore:The SAE .* instruction-tuned")
def test_chat_prompt_keeps_the_zeroed_prefix_zero(real_model, demo_set):
    it = dataclasses.replace(real_model, is_instruct=True)
    chat = [{"role": "user", "content": "Name the capital of France."}]
    graph = attribute(it, demo_set, chat, max_feature_nodes=128, progress=False)
    assert graph.info["zero_positions"] == 4
    loadings = graph.head_loadings(progress=False)
    assert sum_error(graph, loadings) < 1e-4
    # No kept edge starts at a feature or error node of the template prefix, and asked for, such an edge is zero.
    info = [graph.node_info(int(s)) for s in loadings.edges[:, 1]]
    assert not [i for i in info if i.kind in ("feature", "error") and i.pos < 4]
    split = graph.edge_heads(graph.error_slice.start + 2 * graph.n_pos + 2, graph.logit_slice.start)
    assert split.weight == 0 and not split.shares.any()
    # The template's token nodes do carry edges, and their split still sums (to the floor of sum_error).
    turn = graph.edge_heads(graph.token_slice.start + 1, graph.logit_slice.start)
    floor = 1e-7 * float(graph.adjacency_matrix[graph.logit_slice.start].abs().max())
    assert turn.weight != 0 and turn.shares.double().sum() == pytest.approx(turn.weight, rel=1e-4, abs=floor)
