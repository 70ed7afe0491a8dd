"""Steering a continuation from graph nodes: the same tokens as generate with the same specs, streamed by a session."""

from __future__ import annotations

import pytest
import torch

from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.backend.steering.generation import generate
from gemscope_widgets.backend.steering.session import SessionListener
from gemscope_widgets.backend.steering.spec import SteeringSpec
from gemscope_widgets.errors import GraphError

PROMPT = "The quick brown fox jumps"
N = 6


@pytest.fixture(scope="module")
def graph(tiny_model, tiny_transcoder_root):
    tset = load_transcoders(tiny_transcoder_root / "affine", "transcoder_all")
    return attribute(tiny_model, tset, PROMPT, max_feature_nodes=None, progress=False)


def _strongest(graph, k):
    out = graph.adjacency_matrix[:, : graph.n_selected].abs().sum(0)
    return torch.argsort(out, descending=True)[:k].tolist()


def _spec(graph, node, strength, mode="clamp"):
    tset = graph.replacement.transcoders
    layer, _, feature = graph.selected_active_features[node].tolist()
    return SteeringSpec(feature, strength, mode=mode, sae=tset.dictionary(layer), unit="raw")


def test_steer_equals_generate_with_the_same_specs(tiny_model, graph):
    a, b = _strongest(graph, 2)
    act = float(graph.selected_activation_values[a])
    got = graph.steer({a: 4.0}, mode="scale", max_new_tokens=N)
    want = generate(tiny_model, graph.input_tokens, [_spec(graph, a, 4.0 * act)], unit="raw", max_new_tokens=N)
    assert (got.baseline_ids, got.steered_ids) == (want.baseline_ids, want.steered_ids)
    # A strong addition changes the continuation (the steering reaches the model), the baseline stays.
    added = graph.steer({a: 60.0, b: 60.0}, mode="add", max_new_tokens=N)
    want = generate(tiny_model, graph.input_tokens, [_spec(graph, a, 60.0, "add"), _spec(graph, b, 60.0, "add")],
                    unit="raw", max_new_tokens=N)
    assert (added.baseline_ids, added.steered_ids) == (want.baseline_ids, want.steered_ids)
    assert added.baseline_ids == got.baseline_ids and added.steered_ids != added.baseline_ids


def test_session_streams_the_same_continuation(graph):
    a = _strongest(graph, 1)[0]
    streamed: list[tuple[str | None, str | None]] = []

    class Listener(SessionListener):
        def session_token(self, gid, baseline, steered, divergence, step):
            streamed.append((baseline, steered))

    session = graph.steering_session({a: 60.0}, mode="add", listener=Listener(), max_new_tokens=N)
    try:
        session.run()
        result = session.wait()
    finally:
        session.close()
    direct = graph.steer({a: 60.0}, mode="add", max_new_tokens=N)
    assert (result.baseline_ids, result.steered_ids) == (direct.baseline_ids, direct.steered_ids)
    # Streamed token by token, as the steering widget receives them (stop tokens are not in the result's lists).
    assert [s for _, s in streamed if s is not None][: len(result.steered_tokens)] == result.steered_tokens
    assert [b for b, _ in streamed if b is not None][: len(result.baseline_tokens)] == result.baseline_tokens
    assert len(streamed) >= len(result.steered_tokens) > 0


def test_supernodes_ablation_and_errors(graph):
    a, b = _strongest(graph, 2)
    graph.group("pair", [a, b])
    try:
        by_group = graph.steer(["pair"], mode="ablate", max_new_tokens=N)
        by_nodes = graph.steer({a: 0.0, b: 0.0}, max_new_tokens=N)
        assert by_group.steered_ids == by_nodes.steered_ids
    finally:
        graph.ungroup("pair")
    with pytest.raises(GraphError, match="steering mode"):
        graph.steer({a: 1.0}, mode="double")
    with pytest.raises(GraphError, match="positions"):
        graph.steer({a: 1.0}, positions="last")
    with pytest.raises(GraphError, match="only feature nodes"):
        graph.steer({graph.token_slice.start: 1.0})
    feats = graph.selected_active_features
    same = [(i, j) for i in range(graph.n_selected) for j in range(i + 1, graph.n_selected)
            if feats[i, 0] == feats[j, 0] and feats[i, 2] == feats[j, 2]]
    assert same  # one feature active at two positions: a continuation cannot steer it two ways
    i, j = same[0]
    with pytest.raises(GraphError, match="two strengths"):
        graph.steer({i: 1.0, j: 2.0})
