"""Neuronpedia graph JSON files both ways: Neuronpedia's own schema, both error-id schemes, the second backend's
node types, collisions, strict JSON, graph-metadata.json and import -> export round trips.

Files are written here in the exact formats their writers use: circuit-tracer's pydantic ``Node`` models
(``circuit_tracer/frontend/graph_models.py``; error ids ``0_{layer}_{pos}`` up to v0.5.0 and ``{layer}_-1_{pos}``
from v0.5.1, decoderesearch/circuit-tracer#78) and Neuronpedia's second backend
(``hijohnnylin/neuronpedia:apps/graph/neuronpedia_graph/format_converter.py``).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import jsonschema
import pytest
import torch

from gemscope_widgets.backend.circuits.graph import AttributionGraph, GraphError
from gemscope_widgets.backend.circuits.neuronpedia_json import cantor_pairing
from tests.fixtures.graphs import synthetic_graph

SCHEMA = json.loads((Path(__file__).parents[2] / "fixtures" / "neuronpedia_graph_schema.json").read_text())
TOKENS = ["<bos>", "The", " capital", " of", " Texas"]
TOKEN_IDS = [2, 818, 6333, 529, 19130]
N_LAYERS = 3


def validate(data: dict) -> None:
    """Neuronpedia's own check of an upload (draft-07), plus strict JSON (no NaN / Infinity)."""
    jsonschema.Draft7Validator(SCHEMA).validate(data)
    json.loads(json.dumps(data, allow_nan=False), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


# ---- circuit-tracer's Node models, field for field --------------------------------------------------------------


def ct_node(node_id, feature, layer, pos, kind, js, *, influence=None, activation=None, clerp="", prob=0.0,
            target=False):
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos, "feature_type": kind,
            "token_prob": prob, "is_target_logit": target, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": js,
            "clerp": clerp, "influence": influence, "activation": activation}


def ct_feature(layer, pos, feat, influence, activation):
    return ct_node(f"{layer}_{feat}_{pos}", cantor_pairing(layer, feat), str(layer), pos, "cross layer transcoder",
                   f"{layer}_{feat}-0", influence=influence, activation=activation)


def ct_error(layer, pos, influence, scheme):
    if scheme == "v0.5.0":
        return ct_node(f"0_{layer}_{pos}", -1, str(layer), pos, "mlp reconstruction error", f"{layer}_{pos}-0",
                       influence=influence)
    return ct_node(f"{layer}_-1_{pos}", -1, str(layer), pos, "mlp reconstruction error", f"{layer}_-1-{pos}",
                   influence=influence)


def ct_token(pos, vocab, influence):
    return ct_node(f"E_{vocab}_{pos}", pos, "E", pos, "embedding", f"E_{vocab}-{pos}", influence=influence)


def ct_logit(vocab, token, prob, target):
    layer = str(N_LAYERS + 1)
    pos = len(TOKENS) - 1
    return ct_node(f"{layer}_{vocab}_{pos}", vocab, layer, pos, "logit", f"L_{vocab}-{pos}",
                   clerp=f'Output "{token}" (p={prob:.3f})', prob=prob, target=target)


def ct_file(scheme: str, f0: int = 1) -> dict:
    """A circuit-tracer file: a layer-0 feature #``f0`` at position 4 and the layer-1 error node at position 4 (for
    ``f0 == 1`` the same id, 0_1_4, in v0.5.0), both feeding a layer-2 feature, which feeds the two logits."""
    nodes = [
        ct_feature(0, 4, f0, 0.31, 2.5),
        ct_feature(2, 4, 77, 0.12, 7.25),
        ct_feature(1, 2, 5, 0.55, 0.75),
        ct_error(0, 2, 0.6, scheme),
        ct_error(1, 4, 0.42, scheme),
        *(ct_token(p, v, 0.7 + p / 100) for p, v in enumerate(TOKEN_IDS)),
        ct_logit(7001, " Austin", 0.625, True),
        ct_logit(7002, " Dallas", 0.125, False),
    ]
    ids = {(n["feature_type"], n["layer"], n["ctx_idx"], n["feature"]): n["node_id"] for n in nodes}
    f0, f2, f1 = (ids["cross layer transcoder", str(lay), pos, cantor_pairing(lay, f)]
                  for lay, pos, f in ((0, 4, f0), (2, 4, 77), (1, 2, 5)))
    e14, e02 = ids["mlp reconstruction error", "1", 4, -1], ids["mlp reconstruction error", "0", 2, -1]
    links = [
        {"source": "E_19130_4", "target": f0, "weight": 1.5},
        {"source": "E_6333_2", "target": f1, "weight": 0.5},
        {"source": e02, "target": f1, "weight": -0.25},
        {"source": f0, "target": f2, "weight": 0.75},
        {"source": e14, "target": f2, "weight": -1.25},  # the error edge the v0.5.0 id made ambiguous
        {"source": f1, "target": f2, "weight": 2.0},
        {"source": f2, "target": "4_7001_4", "weight": 3.5},
        {"source": f2, "target": "4_7002_4", "weight": -0.5},
        {"source": e14, "target": "4_7001_4", "weight": 0.125},
    ]
    # circuit-tracer's order: edge_mask.nonzero(), i.e. by target node, then source node, in node order.
    order = {(n["feature_type"], n["node_id"]): i for i, n in enumerate(nodes)}
    rank = {node_id: i for (kind, node_id), i in order.items() if kind != "mlp reconstruction error"}
    rank |= {e: order["mlp reconstruction error", e] for e in (e02, e14) if e not in rank}
    links.sort(key=lambda d: (rank[d["target"]], rank[d["source"]] if d["source"] != e14 else order[
        "mlp reconstruction error", e14]))
    meta = {"slug": "austin", "scan": "gemma-3-270m", "transcoder_list": [], "prompt_tokens": TOKENS,
            "prompt": "The capital of Texas", "node_threshold": 0.8, "schema_version": 1}
    q = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": meta, "qParams": q, "nodes": nodes, "links": links}


def expected_edges(f0: int = 1) -> dict:
    """(target, source) as (kind, layer, pos, feature) -> weight: what the file of ``ct_file(scheme, f0)`` says."""
    return {
        (("feature", 0, 4, f0), ("token", -1, 4, 19130)): 1.5,
        (("feature", 1, 2, 5), ("token", -1, 2, 6333)): 0.5,
        (("feature", 1, 2, 5), ("error", 0, 2, -1)): -0.25,
        (("feature", 2, 4, 77), ("feature", 0, 4, f0)): 0.75,
        (("feature", 2, 4, 77), ("error", 1, 4, -1)): -1.25,
        (("feature", 2, 4, 77), ("feature", 1, 2, 5)): 2.0,
        (("logit", 3, 4, 7001), ("feature", 2, 4, 77)): 3.5,
        (("logit", 3, 4, 7002), ("feature", 2, 4, 77)): -0.5,
        (("logit", 3, 4, 7001), ("error", 1, 4, -1)): 0.125,
    }


def edges_of(graph: AttributionGraph) -> dict:
    t, s = graph.adjacency_matrix.nonzero(as_tuple=True)
    return {(tuple(graph.node_info(a)), tuple(graph.node_info(b))): float(graph.adjacency_matrix[a, b])
            for a, b in zip(t.tolist(), s.tolist())}


# ---- reading both schemes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["v0.5.0", "v0.5.1"])
def test_reads_both_error_id_schemes(scheme):
    data = ct_file(scheme, f0=9)
    validate(data)
    g = AttributionGraph.from_neuronpedia(copy.deepcopy(data))
    assert g.n_layers == N_LAYERS and g.input_tokens.tolist() == TOKEN_IDS and g.input_token_strings == TOKENS
    assert edges_of(g) == expected_edges(9)
    assert g.logit_tokens.tolist() == [7001, 7002] and g.logit_token_strings == [" Austin", " Dallas"]
    assert g.activation_values.tolist() == [2.5, 7.25, 0.75]
    # Every node id the graph writes is circuit-tracer's current one, and both spellings of an error id resolve.
    assert g.node_id(g.node_index("1_-1_4")) == "1_-1_4"
    assert g.node_info(g.node_index("1_-1_4")) == ("error", 1, 4, -1)


def test_the_collision_case_reads_exactly_with_the_new_ids(recwarn):
    # Layer-0 feature #1 and the layer-1 error at position 4: with v0.5.1 ids nothing is ambiguous.
    g = AttributionGraph.from_neuronpedia(ct_file("v0.5.1"))
    assert not [w for w in recwarn if "share" in str(w.message)]
    assert edges_of(g) == expected_edges(1)


def test_old_colliding_ids_resolve_by_layer_and_warn_when_undecidable():
    data = ct_file("v0.5.0")
    assert [n["node_id"] for n in data["nodes"]].count("0_1_4") == 2
    # A link into "0_1_4" can only reach the feature (error nodes have no inputs); one from "0_1_4" into a layer-1
    # target only from the layer-0 feature (the layer-1 error writes to layer 2 and up). The three links from
    # "0_1_4" into layers 2 and 3 are undecidable: they go to the node listed last, as in Neuronpedia.
    data["nodes"].append(ct_feature(1, 4, 9, 0.2, 1.0))
    data["links"].append({"source": "0_1_4", "target": "1_9_4", "weight": 4.0})
    with pytest.warns(UserWarning, match=r"3 link\(s\) of this graph name a node id"):
        g = AttributionGraph.from_neuronpedia(data)
    feature, error = g.node_index((0, 4, 1)), g.node_index("1_-1_4")
    assert g.adjacency_matrix[g.node_index((1, 4, 9)), feature] == 4.0
    assert g.adjacency_matrix[feature, g.node_index("E_19130_4")] == 1.5
    assert g.adjacency_matrix[g.node_index((2, 4, 77)), error] == -1.25


# ---- writing: schema, ids, collisions, strict JSON --------------------------------------------------------------


def collision_graph() -> AttributionGraph:
    """The graph of :func:`ct_file`, built directly: layer-0 feature #1 and the layer-1 error at position 4."""
    n_sel, n_pos = 3, len(TOKENS)
    n = n_sel + (N_LAYERS + 1) * n_pos + 2
    g = AttributionGraph(
        input_string="The capital of Texas", input_tokens=torch.tensor(TOKEN_IDS),
        active_features=torch.tensor([[0, 4, 1], [2, 4, 77], [1, 2, 5]]),
        activation_values=torch.tensor([2.5, 7.25, 0.75]), selected_features=torch.arange(3),
        adjacency_matrix=torch.zeros(n, n), logit_tokens=torch.tensor([7001, 7002]),
        logit_probabilities=torch.tensor([0.625, 0.125]), bias_input=torch.zeros(n), n_layers=N_LAYERS,
        input_token_strings=TOKENS, logit_token_strings=[" Austin", " Dallas"], model_name="google/gemma-3-270m",
    )
    index = {}
    for i in range(g.n_nodes):
        index[tuple(g.node_info(i))] = i
    for (t, s), w in expected_edges(1).items():
        g.adjacency_matrix[index[t], index[s]] = w
    return g


def test_export_has_no_colliding_ids_and_reads_back_the_same_edges(tmp_path):
    # Fails with the v0.5.0 ids: the layer-1 error at position 4 and the layer-0 feature #1 are both "0_1_4".
    g = collision_graph()
    path = g.save_neuronpedia(tmp_path / "austin.json", node_threshold=1.0, edge_threshold=1.0)
    data = json.loads(path.read_text())
    validate(data)
    ids = [n["node_id"] for n in data["nodes"]]
    js_ids = [n["jsNodeId"] for n in data["nodes"]]
    assert len(ids) == len(set(ids)) and len(js_ids) == len(set(js_ids))
    assert "1_-1_4" in ids and "0_1_4" in ids
    error = next(n for n in data["nodes"] if n["node_id"] == "1_-1_4")
    assert (error["feature"], error["layer"], error["jsNodeId"]) == (-1, "1", "1_-1-4")
    back = AttributionGraph.from_neuronpedia(path)
    assert edges_of(back) == expected_edges(1)


def test_export_validates_against_neuronpedias_schema_and_is_what_prune_keeps(tmp_path):
    g = synthetic_graph(n_features=60, n_edges=600, seed=3)
    g.model_name = "google/gemma-3-1b-it"
    g.info = {"max_feature_nodes": 8192, "batch_size": 256, "desired_logit_prob": 0.95, "max_n_logits": 10}
    data = g.to_neuronpedia("fox")
    validate(data)
    meta = data["metadata"]
    assert meta["scan"] == "gemma-3-1b-it" and meta["node_threshold"] == 0.8
    assert meta["pruning_settings"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
    assert meta["generation_settings"] == {"max_n_logits": 10, "desired_logit_prob": 0.95, "batch_size": 256,
                                           "max_feature_nodes": 8192}
    assert meta["info"]["generator"]["name"] == "gemscope_widgets"
    prune = g.prune(0.8, 0.98)
    t, s = (prune.edge_mask & (g.adjacency_matrix != 0)).nonzero(as_tuple=True)
    want = {(g.node_id(a), g.node_id(b)) for a, b in zip(t.tolist(), s.tolist())}
    assert {(d["target"], d["source"]) for d in data["links"]} == want
    kept = {g.node_id(i) for i in prune.node_mask.nonzero().flatten().tolist()}
    assert {n["node_id"] for n in data["nodes"]} <= kept


def test_non_finite_values_are_null_or_refused(tmp_path):
    g = synthetic_graph(n_features=20, n_edges=200, seed=2)
    g.model_name = "google/gemma-3-270m"
    g.activation_values[:] = float("nan")
    g.activation_values[1] = float("inf")
    path = g.save_neuronpedia(tmp_path / "nan.json", node_threshold=1.0, edge_threshold=1.0)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    validate(data)
    feats = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert feats and all(n["activation"] is None for n in feats)
    t, s = g.adjacency_matrix.nonzero(as_tuple=True)
    g.adjacency_matrix[t[0], s[0]] = float("inf")
    with pytest.raises(GraphError, match="NaN or infinite"):
        g.save_neuronpedia(tmp_path / "inf.json", node_threshold=1.0, edge_threshold=1.0)


def test_scan_is_the_models_neuronpedia_id():
    g = synthetic_graph(n_features=10, n_edges=80)
    g.model_name, g.scan = "google/gemma-3-270m", ["layer_0_width_16k", "layer_1_width_16k"]
    meta = g.to_neuronpedia()["metadata"]
    assert meta["scan"] == "gemma-3-270m" and meta["transcoder_list"] == g.scan
    assert g.to_neuronpedia(scan="gemma-3-4b-it")["metadata"]["scan"] == "gemma-3-4b-it"
    with pytest.raises(GraphError, match="model id"):
        g.to_neuronpedia(scan="not an id!")
    g.model_name = "my-org/custom-model"
    with pytest.warns(UserWarning, match="Neuronpedia knows no model id"):
        assert g.to_neuronpedia()["metadata"]["scan"] == "custom-model"


def test_graph_metadata_json_lists_the_graphs_of_a_folder(tmp_path):
    g = synthetic_graph(n_features=10, n_edges=80)
    g.model_name = "google/gemma-3-270m"
    g.save_neuronpedia(tmp_path / "one.json")
    g.save_neuronpedia(tmp_path / "two.json")
    g.save_neuronpedia(tmp_path / "one.json", node_threshold=0.5)
    listing = json.loads((tmp_path / "graph-metadata.json").read_text())
    # circuit-tracer's add_graph_metadata: {"graphs": [metadata, ...]}, a slug's entry replaced, in write order.
    assert [m["slug"] for m in listing["graphs"]] == ["two", "one"]
    assert listing["graphs"][1] == json.loads((tmp_path / "one.json").read_text())["metadata"]
    assert listing["graphs"][1]["node_threshold"] == 0.5
    (tmp_path / "graph-metadata.json").write_text("[]")
    with pytest.raises(GraphError, match="not a graph list"):
        g.save_neuronpedia(tmp_path / "three.json")


# ---- round trips ----------------------------------------------------------------------------------------------


def rich_file() -> dict:
    """A v0.5.1 file with what a Neuronpedia user adds: the second logit as the target, an edited logit label, labels
    on a feature and an error, pins, supernodes, a clicked node, info, settings and an extra block."""
    data = ct_file("v0.5.1")
    logits = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    logits[0]["is_target_logit"], logits[1]["is_target_logit"] = False, True
    logits[1]["clerp"] = 'Output "Dallas, the city" (p=0.125)'
    data["nodes"][0]["clerp"] = "Texas-ness"
    next(n for n in data["nodes"] if n["node_id"] == "1_-1_4")["clerp"] = "what the MLP missed"
    data["metadata"].update(
        info={"description": "capitals", "creator_name": "a researcher", "generator": {"name": "circuit-tracer"}},
        generation_settings={"max_n_logits": 10, "desired_logit_prob": 0.95, "batch_size": 256},
        pruning_settings={"node_threshold": 0.8, "edge_threshold": 0.98},
        feature_details={"neuronpedia_source_set": "gemmascope-2-transcoder-16k"},
    )
    data["qParams"] = {"pinnedIds": ["0_1_4", "1_-1_4", "4_7002_4"], "supernodes": [["texas", "0_1_4", "2_77_4"]],
                       "linkType": "both", "clickedId": "2_77_4", "sg_pos": "1,2"}
    data["qk_only_nodes"] = {}
    return data


def test_import_export_keeps_the_file():
    data = rich_file()
    validate(data)
    g = AttributionGraph.from_neuronpedia(copy.deepcopy(data))
    # A re-export keeps every node and link (it was pruned when written), and everything the file said.
    assert g.to_neuronpedia() == data
    # The graph kept the file's logit order (not re-sorted by probability) and labels.
    assert g.logit_tokens.tolist() == [7001, 7002] and g.feature_labels == {(0, 1): "Texas-ness"}


def test_round_trip_through_the_graphs_own_file(tmp_path):
    data = rich_file()
    g = AttributionGraph.from_neuronpedia(copy.deepcopy(data))
    back = AttributionGraph.load(g.save(tmp_path / "g.safetensors"))
    assert back.to_neuronpedia() == data


def test_old_ids_in_pins_and_supernodes_follow_the_nodes():
    data = rich_file()
    old = ct_file("v0.5.0")
    data["nodes"], data["links"] = old["nodes"], old["links"]
    data["nodes"][0]["clerp"] = "Texas-ness"
    data["qParams"]["pinnedIds"] = ["0_0_2", "4_7002_4"]  # the layer-0 error at position 2, old spelling
    data["qParams"]["supernodes"] = [["errors", "0_0_2", "2_77_4"]]
    with pytest.warns(UserWarning, match="listed last"):
        g = AttributionGraph.from_neuronpedia(data)
    out = g.to_neuronpedia()
    validate(out)
    assert out["qParams"]["pinnedIds"] == ["0_-1_2", "4_7002_4"]
    assert out["qParams"]["supernodes"] == [["errors", "0_-1_2", "2_77_4"]]
    errors = {n["node_id"]: n for n in out["nodes"] if n["feature_type"] == "mlp reconstruction error"}
    assert set(errors) == {"1_-1_4", "0_-1_2"} and errors["1_-1_4"]["influence"] == 0.42


def test_kept_influence_survives_a_reexport_of_a_real_graph(tiny_model, tiny_transcoder_root, tmp_path):
    from gemscope_widgets.backend.circuits.attribution import attribute
    from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders

    tset = load_transcoders(tiny_transcoder_root / "affine", "transcoder_all")
    graph = attribute(tiny_model, tset, "The quick brown fox jumps", max_feature_nodes=None, progress=False)
    first = graph.to_neuronpedia("fox", scan="gemma-3-270m")
    validate(first)
    back = AttributionGraph.from_neuronpedia(json.loads(json.dumps(first)))
    again = back.to_neuronpedia()
    validate(again)
    # Same nodes (influence included), same links: no second pruning of an already pruned graph.
    assert again["nodes"] == first["nodes"] and again["links"] == first["links"]
    assert again["metadata"]["node_threshold"] == 0.8


# ---- Neuronpedia's second backend -------------------------------------------------------------------------------


def second_backend_file(extra_nodes=()) -> dict:
    """As ``format_converter.convert_to_neuronpedia_graph`` writes a transcoder graph: ids ``{L}_cro_{f}_{p}`` and
    ``{L}_error_mlp_{p}``, logits on layer n_layers, embeddings only where an edge starts, a bias leaf."""

    def node(node_id, feature, kind, layer, pos, clerp, activation=None, **more):
        return {"node_id": node_id, "jsNodeId": node_id, "feature": feature, "feature_type": kind, "layer": layer,
                "ctx_idx": pos, "clerp": clerp, "activation": activation, **more}

    nodes = [
        node("E_6333_2", None, "embedding", "E", 2, 'Emb: " capital"', token=" capital"),
        node("1_cro_5_2", cantor_pairing(1, 5), "cross layer transcoder", 1, 2, f"F{cantor_pairing(1, 5)}", 0.75),
        node("0_error_mlp_2", None, "mlp reconstruction error", 0, 2, 'Err: mlp " capital"'),
        node("3_7001_4", 7001, "logit", 3, 4, 'Logit " Austin" (p=0.625)', token_prob=0.625, token=" Austin"),
        node("2_bias_mlp_bout_4", None, "bias", 2, 4, "L2 Bias (mlp_bout)"),
        *extra_nodes,
    ]
    for n, influence in zip(nodes, (0.9, 0.5, 0.7, 1.0, 0.95, 0.99, 0.99)):
        n["influence"] = influence
    links = [
        {"source": "E_6333_2", "target": "1_cro_5_2", "weight": 0.5},
        {"source": "0_error_mlp_2", "target": "1_cro_5_2", "weight": -0.25},
        {"source": "1_cro_5_2", "target": "3_7001_4", "weight": 3.0},
        {"source": "2_bias_mlp_bout_4", "target": "3_7001_4", "weight": 0.25},
    ]
    meta = {"slug": "crm", "scan": "qwen3-1.7b", "prompt": "The capital of Texas", "prompt_tokens": TOKENS,
            "schema_version": 1, "node_threshold": 0.6, "info": {"generator": {"name": "llamascopium (CRM)"}}}
    return {"metadata": meta, "qParams": {}, "nodes": nodes, "links": links}


def test_reads_the_second_backends_transcoder_graphs():
    data = second_backend_file()
    validate(data)
    with pytest.warns(UserWarning, match=r"Position\(s\) \[0, 1, 3, 4\] have no embedding node"):
        g = AttributionGraph.from_neuronpedia(copy.deepcopy(data))
    assert g.n_layers == 3 and g.input_tokens.tolist() == [-1, -1, 6333, -1, -1]
    assert edges_of(g) == {
        (("feature", 1, 2, 5), ("token", -1, 2, 6333)): 0.5,
        (("feature", 1, 2, 5), ("error", 0, 2, -1)): -0.25,
        (("logit", 3, 4, 7001), ("feature", 1, 2, 5)): 3.0,
    }
    # The bias leaf is what it is: a constant input of its target.
    assert g.bias_input[g.logit_slice.start] == 0.25
    assert g.logit_token_strings == [" Austin"] and g.logit_probabilities.tolist() == [0.625]
    out = g.to_neuronpedia()
    validate(out)
    assert {n["node_id"] for n in out["nodes"]} == {"E_6333_2", "1_5_2", "0_-1_2", "4_7001_4", "2_bias_mlp_bout_4"}
    assert {(d["source"], d["target"], d["weight"]) for d in out["links"]} == {
        ("E_6333_2", "1_5_2", 0.5), ("0_-1_2", "1_5_2", -0.25), ("1_5_2", "4_7001_4", 3.0),
        ("2_bias_mlp_bout_4", "4_7001_4", 0.25)}
    with pytest.raises(GraphError, match="no token id"):
        g.attach(None, None)


@pytest.mark.parametrize(("kind", "node_id"), [("lorsa", "1_lor_3_2"), ("lorsa error", "1_error_attn_2"),
                                               ("unknown", "1_unknown_blocks_1_x_2"), ("transcoder", "1_3_2")])
def test_node_types_without_a_counterpart_are_refused_by_name(kind, node_id):
    extra = {"node_id": node_id, "jsNodeId": node_id, "feature": None, "feature_type": kind, "layer": 1,
             "ctx_idx": 2, "clerp": "", "activation": None}
    with pytest.raises(GraphError, match=rf"1 '{kind}' node\(s\)"):
        AttributionGraph.from_neuronpedia(second_backend_file([extra]))


def test_cantor_pairing_inverts():
    for layer, feature in ((0, 0), (3, 17), (25, 16383), (0, 262143)):
        number = cantor_pairing(layer, feature)
        w = (math.isqrt(8 * number + 1) - 1) // 2
        assert (w - (number - w * (w + 1) // 2), number - w * (w + 1) // 2) == (layer, feature)
