"""graph.intervene against a direct hooked forward; Neuronpedia graph JSON export/import round trip."""

from __future__ import annotations

import json

import pytest
import torch

from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.graph import AttributionGraph, GraphError
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from tests.helpers import hook_ids

PROMPT = "The quick brown fox jumps"


@pytest.fixture(scope="module")
def graphs(tiny_model, tiny_transcoder_root):
    out = {}
    for which, site in (("affine", "transcoder_all"), ("clt", "clt")):
        tset = load_transcoders(tiny_transcoder_root / which, site)
        out[which] = attribute(tiny_model, tset, PROMPT, max_feature_nodes=None, progress=False)
    return out


def _direct_probs(gm, tset, ids, changes):
    """Next-token probabilities with each (layer, pos, feature, target) clamped by plain forward hooks: the MLP
    output of every layer the feature writes to gets (target - a) x its decoder row at pos, a computed from the
    MLP input of the same forward."""
    xs = {}
    handles = []

    def keep(layer):
        def fn(module, args, out):
            xs[layer] = out.detach().float()

        return fn

    def write(j):
        def fn(module, args, out):
            new = out.clone()
            for layer, pos, feature, target in changes:
                if j not in tset.target_layers(layer):
                    continue
                x = xs[layer][0, pos]
                pre = x @ tset.w_enc(layer)[:, feature] + tset.b_enc(layer)[feature]
                a = pre * (pre > tset.threshold(layer)[feature])
                w = tset.write_vectors(layer, torch.tensor([feature]))[j][0]
                new[0, pos] += (target - a) * w
            return new

        return fn

    try:
        for i, block in enumerate(gm.layers):
            handles.append(block.pre_feedforward_layernorm.register_forward_hook(keep(i)))
            handles.append(block.post_feedforward_layernorm.register_forward_hook(write(i)))
        with torch.no_grad():
            logits = gm.model(input_ids=ids[None], use_cache=False).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    return torch.softmax(logits.float(), -1)


@pytest.mark.parametrize("which", ["affine", "clt"])
def test_intervene_matches_direct_hooks(tiny_model, graphs, which):
    graph = graphs[which]
    tset = graph.replacement.transcoders
    influence = graph.node_influence()[: graph.n_selected]
    top = torch.argsort(influence, descending=True)[:3].tolist()
    before_hooks = hook_ids(tiny_model.model)
    result = graph.intervene({top[0]: 0.0, top[1]: 0.0, top[2]: 0.0})
    assert hook_ids(tiny_model.model) == before_hooks
    changes = [(layer, pos, feat, 0.0) for _, layer, pos, feat, _, _ in result.changes]
    want = _direct_probs(tiny_model, tset, graph.input_tokens, changes)
    got = torch.tensor(result.logit_probabilities_after)
    torch.testing.assert_close(got, want[graph.logit_tokens], rtol=1e-4, atol=1e-6)
    plain = torch.softmax(tiny_model.model(input_ids=graph.input_tokens[None]).logits[0, -1].float(), -1)
    torch.testing.assert_close(torch.tensor(result.logit_probabilities_before), plain[graph.logit_tokens].detach(),
                               rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got, torch.tensor(result.logit_probabilities_before))
    assert result.top_after[0].probability == pytest.approx(float(want.max()), rel=1e-4)
    # Every token shown (logit nodes, both top lists) has both probabilities, from the same two forwards.
    ids = [c[0] for c in result.compared]
    assert len(ids) == len(set(ids)) and set(ids) == {*graph.logit_tokens.tolist(),
                                                      *(t.token_id for t in result.top_before),
                                                      *(t.token_id for t in result.top_after)}
    torch.testing.assert_close(torch.tensor([c[3] for c in result.compared]), want[ids], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor([c[2] for c in result.compared]), plain[ids].detach(),
                               rtol=1e-4, atol=1e-6)
    # Scaling by 2 clamps to twice the node's activation on the prompt.
    node = top[0]
    scaled = graph.intervene({graph.node_id(node): 2.0}, mode="scale")
    layer, pos, feat = graph.selected_active_features[node].tolist()
    act = float(graph.selected_activation_values[node])
    want2 = _direct_probs(tiny_model, tset, graph.input_tokens, [(layer, pos, feat, 2 * act)])
    torch.testing.assert_close(torch.tensor(scaled.logit_probabilities_after), want2[graph.logit_tokens],
                               rtol=1e-4, atol=1e-6)
    json.dumps(scaled.to_dict())


def test_intervene_errors_and_attach(tiny_model, tiny_transcoder_root, graphs, tmp_path):
    graph = graphs["affine"]
    with pytest.raises(GraphError, match="only feature nodes"):
        graph.intervene({graph.token_slice.start: 0.0})
    with pytest.raises(GraphError, match="Unknown intervention mode"):
        graph.intervene({0: 0.0}, mode="double")
    with pytest.raises(GraphError, match="not finite"):
        graph.intervene({0: float("nan")})
    loaded = AttributionGraph.load(graph.save(tmp_path / "g.safetensors"))
    with pytest.raises(GraphError, match="attach"):
        loaded.intervene({0: 0.0})
    loaded.attach(tiny_model, load_transcoders(tiny_transcoder_root / "affine"))
    a, b = loaded.intervene({0: 0.0}), graph.intervene({0: 0.0})
    assert a.logit_probabilities_after == pytest.approx(b.logit_probabilities_after, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Neuronpedia graph JSON


def _ambiguous(data):
    # circuit-tracer's ids: error "0_{layer}_{pos}" and layer-0 feature "0_{feature}_{pos}" can coincide.
    seen, dup = set(), set()
    for n in data["nodes"]:
        (dup if n["node_id"] in seen else seen).add(n["node_id"])
    return dup


def _without_influence(data, skip):
    return {
        "metadata": {k: v for k, v in data["metadata"].items() if k != "node_threshold"},
        "nodes": sorted(({k: v for k, v in n.items() if k != "influence"} for n in data["nodes"]),
                        key=lambda n: (n["feature_type"], n["node_id"])),
        "links": sorted((d["source"], d["target"], round(d["weight"], 5)) for d in data["links"]
                        if d["source"] not in skip and d["target"] not in skip),
    }


@pytest.mark.parametrize("which", ["affine", "clt"])
def test_neuronpedia_round_trip(graphs, tmp_path, which):
    graph = graphs[which]
    graph.feature_labels = {tuple(graph.selected_active_features[0, [0, 2]].tolist()): "a <b>label</b>"}
    path = graph.save_neuronpedia(tmp_path / "fox.json")
    data = json.loads(path.read_text())
    # The schema circuit-tracer writes.
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert data["metadata"]["slug"] == "fox" and data["metadata"]["schema_version"] == 1
    assert data["metadata"]["prompt_tokens"] == graph.input_token_strings
    node_keys = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
                 "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}
    assert all(set(n) == node_keys for n in data["nodes"])
    kinds = {n["feature_type"] for n in data["nodes"]}
    assert {"cross layer transcoder", "embedding", "logit"} <= kinds
    assert sum(n["feature_type"] == "embedding" for n in data["nodes"]) == graph.n_pos
    logit_nodes = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert [n["is_target_logit"] for n in logit_nodes].count(True) == 1
    assert logit_nodes[0]["layer"] == str(graph.n_layers + 1)
    ids = {n["node_id"] for n in data["nodes"]}
    assert all(d["source"] in ids and d["target"] in ids for d in data["links"])
    prune = graph.prune()
    assert len(data["links"]) <= int(prune.edge_mask.sum())

    back = AttributionGraph.from_neuronpedia(path)
    assert back.n_layers == graph.n_layers and torch.equal(back.input_tokens, graph.input_tokens)
    assert torch.equal(back.logit_tokens, graph.logit_tokens)
    assert back.logit_token_strings == graph.logit_token_strings
    assert back.input_token_strings == graph.input_token_strings
    # Each exported edge sits at the same (target, source) nodes with the same weight.
    skip = _ambiguous(data)
    assert len(skip) < len(data["nodes"]) / 4
    for d in [d for d in data["links"] if d["source"] not in skip and d["target"] not in skip][:300]:
        t, s = back.node_index(d["target"]), back.node_index(d["source"])
        assert back.adjacency_matrix[t, s].item() == pytest.approx(d["weight"], rel=1e-6)
    feats = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert back.n_selected == len(feats)
    again = back.to_neuronpedia("fox", node_threshold=None)
    assert _without_influence(again, skip) == _without_influence(data, skip)
    labelled = [n for n in data["nodes"] if n["clerp"] == "a <b>label</b>"]
    assert len(labelled) <= 1


def test_neuronpedia_import_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(GraphError, match="Not a Neuronpedia graph"):
        AttributionGraph.from_neuronpedia(bad)
    with pytest.raises(GraphError, match="Could not read"):
        AttributionGraph.from_neuronpedia(tmp_path / "missing.json")
