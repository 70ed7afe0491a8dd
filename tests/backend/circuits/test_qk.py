"""QK attribution (graph.qk): pair contributions plus the remainder equal the pre-softmax score computed from the
query and key the real attention module makes (captured by hooks, rotated by transformers' own RoPE), on local and
global layers, inside and at the edge of the sliding window, with grouped-query attention, CLTs, a feature budget
and a chat prompt's zeroed prefix; and bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig
from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb

from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.graph import AttributionGraph, GraphError
from gemscope_widgets.backend.circuits.qk import attention_row
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.backend.gemma.model import load_model
from gemscope_widgets.testing.tiny import TINY_NAME, build_tiny_checkpoint
from gemscope_widgets.testing.transcoders import write_calibrated_set
from tests.helpers import hook_ids

# 36 tokens with the tiny tokenizer: past the tiny model's 16-token sliding window.
LONG = "The quick brown fox jumps over the lazy dog and then the cat sat on the mat again and again"
SHORT = "The quick brown fox jumps over the lazy dog"
REL = 1e-4


def real_scores(gm, ids, layer):
    """``[H, T, T]`` pre-softmax scores of ``layer`` from the real module: its q_norm / k_norm outputs, the rotary
    (cos, sin) its forward received, transformers' apply_rotary_pos_emb, its ``scaling``; plus its pattern
    ``[H, T, T]`` (eager attention weights)."""
    attn = gm.layers[layer].self_attn
    got = {}
    handles = [
        attn.q_norm.register_forward_hook(lambda m, a, o: got.__setitem__("q", o.detach())),
        attn.k_norm.register_forward_hook(lambda m, a, o: got.__setitem__("k", o.detach())),
        attn.register_forward_pre_hook(
            lambda m, a, kw: got.__setitem__("pe", kw["position_embeddings"]), with_kwargs=True
        ),
        attn.register_forward_hook(lambda m, a, o: got.__setitem__("w", o[1].detach())),
    ]
    config = gm.text_model.config
    old = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            gm.text_model(input_ids=ids[None], use_cache=False)
    finally:
        config._attn_implementation = old
        for h in handles:
            h.remove()
    cos, sin = got["pe"]
    q, k = apply_rotary_pos_emb(got["q"], got["k"], cos, sin)  # [1, H, T, dh], [1, n_kv, T, dh]
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    scores = torch.einsum("hid,hjd->hij", q[0].double(), k[0].double()) * attn.scaling
    return scores, got["w"][0].double()


def check(graph, gm, layer, head, i, j, scores=None):
    """graph.qk against the real module's score (1e-4 relative), the softmax of the real row against the real
    pattern at (i, j) (the mask the refusal rule assumes), and the remainder identity."""
    if scores is None:
        scores = real_scores(gm, graph.input_tokens, layer)
    s, pattern = scores
    r = graph.qk(layer, head, i, j)
    want = float(s[head, i, j])
    assert abs(float(r.pairs.sum()) - want) <= REL * abs(want), (layer, head, i, j, float(r.pairs.sum()), want)
    assert abs(r.score - want) <= REL * abs(want)
    assert r.node_pairs_total + sum(r.remainder.values()) == pytest.approx(r.score, rel=1e-9, abs=1e-12)
    assert float(r.q_marginal.sum()) == pytest.approx(float(r.k_marginal.sum()), rel=1e-9)
    assert r.probability == pytest.approx(float(pattern[head, i, j]), rel=1e-5, abs=1e-7)
    return r


@pytest.fixture(scope="module")
def affine_graph(tiny_model, tiny_transcoder_root):
    tset = load_transcoders(tiny_transcoder_root / "affine", "transcoder_all")
    return attribute(tiny_model, tset, LONG, max_feature_nodes=None, progress=False)


def test_local_and_global_layers_inside_and_at_the_window_edge(tiny_model, affine_graph):
    g = affine_graph
    assert g.n_pos == 36
    window = tiny_model.text_model.config.sliding_window
    last = g.n_pos - 1
    before = hook_ids(tiny_model.model)
    for layer in range(g.n_layers):
        scores = real_scores(tiny_model, g.input_tokens, layer)
        local = tiny_model.text_model.config.layer_types[layer] == "sliding_attention"
        edge = last - window + 1 if local else 0  # the farthest key the head can see
        for head in range(4):
            for i, j in ((last, edge), (last, last - 3), (20, 20), (last, edge + 1)):
                r = check(g, tiny_model, layer, head, i, j, scores)
                assert r.kv_head == 0
        # The window the refusal rule assumes is the model's: the key just past the edge gets exactly 0 weight.
        if local:
            assert float(scores[1][0, last, edge - 1]) == 0.0 and float(scores[1][0, last, edge]) > 0
    assert hook_ids(tiny_model.model) == before
    # Terms: every feature node at the query position below the layer appears; per-layer attention and one bias.
    r = g.qk(3, 1, last, 4)
    kinds = [t.kind for t in r.q_terms]
    assert kinds.count("attention") == 3 and kinds.count("bias") == 1 and kinds.count("token") == 1
    feats = g.selected_active_features
    want = {tuple(f) for f in feats.tolist() if f[1] == last and f[0] < 3}
    assert {(t.layer, t.pos, t.feature) for t in r.q_terms if t.kind == "feature"} == want
    assert all(t.node_id == g.node_id(t.node) for t in r.q_terms + r.k_terms if t.is_node)


def test_pairs_are_the_bilinear_split(affine_graph):
    # Each pair is scaling · q_a · k_b: the pair matrix has rank at most head_dim and its marginals are the
    # query (key) images of each term against the whole key (query).
    r = affine_graph.qk(2, 0, 30, 25)
    assert torch.linalg.matrix_rank(r.pairs) <= 24
    top = r.top_pairs(3)
    assert len(top) == 3 and all(q.is_node and k.is_node for q, k, _ in top)
    assert abs(top[0][2]) >= abs(top[1][2]) >= abs(top[2][2])
    values = [v for _, v in r.top_q(len(r.q_terms))]
    assert sum(values) == pytest.approx(float(r.pairs.sum()), rel=1e-9)


@pytest.mark.parametrize("which", ["clt", "budget"])
def test_clt_and_a_feature_budget(tiny_model, tiny_transcoder_root, which):
    if which == "clt":
        tset = load_transcoders(tiny_transcoder_root / "clt", "clt")
        g = attribute(tiny_model, tset, SHORT, max_feature_nodes=None, progress=False)
    else:
        tset = load_transcoders(tiny_transcoder_root / "affine", "transcoder_all")
        g = attribute(tiny_model, tset, SHORT, max_feature_nodes=10, progress=False)
    last = g.n_pos - 1
    r = check(g, tiny_model, 3, 2, last, 3)
    check(g, tiny_model, 1, 3, last, 1)
    unselected = [t for t in r.q_terms + r.k_terms if t.kind == "unselected"]
    if which == "budget":
        assert unselected and abs(r.remainder["query unselected"]) + abs(r.remainder["key unselected"]) > 0
    else:
        assert not unselected


def test_grouped_query_attention(tmp_path):
    # Four query heads on two key/value heads: head h reads kv head h // 2.
    folder = build_tiny_checkpoint(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_key_value_heads"] = 2
    model = Gemma3ForCausalLM(Gemma3TextConfig.from_dict(cfg))
    torch.manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    gm = load_model(folder, device="cpu", dtype="float32", name=TINY_NAME)
    write_calibrated_set(gm, tmp_path / "tc", width=32, l0=4, affine=False, seed=3)
    g = attribute(gm, load_transcoders(tmp_path / "tc"), SHORT, max_feature_nodes=None, progress=False)
    last = g.n_pos - 1
    for layer in (1, 3):
        scores = real_scores(gm, g.input_tokens, layer)
        for head in range(4):
            assert check(g, gm, layer, head, last, 2, scores).kv_head == head // 2


def test_bad_input(tiny_model, affine_graph, tmp_path):
    g = affine_graph
    cases = [
        ((4, 0, 35, 1), "layers 0..3"),
        ((-1, 0, 35, 1), "layers 0..3"),
        ((1, 4, 35, 1), "heads 0..3"),
        ((1, 0, 36, 1), "positions 0..35"),
        ((1, 0, 35, -1), "positions 0..35"),
        ((1, 0, 10, 11), "causal"),
        ((1, 0, 35, 19), "key positions 20..35"),
        ((1, 0.5, 35, 1), "integer"),
    ]
    for args, words in cases:
        with pytest.raises(GraphError, match=words):
            g.qk(*args)
    with pytest.raises(GraphError, match="top must be"):
        g.qk(3, 0, 35, 1, top=0)
    g.qk(3, 0, 35, 19)  # the global layer sees it
    path = g.save(tmp_path / "g.safetensors")
    loaded = AttributionGraph.load(path)
    with pytest.raises(GraphError, match="attach"):
        loaded.qk(1, 0, 35, 30)
    # Attached, a graph read from its file gives the same split.
    loaded.attach(tiny_model, g.replacement.transcoders)
    a, b = loaded.qk(1, 0, 35, 30), g.qk(1, 0, 35, 30)
    assert torch.equal(a.pairs, b.pairs) and [t.node_id for t in a.q_terms] == [t.node_id for t in b.q_terms]


def test_attention_row_is_the_real_pattern_row(tiny_model, affine_graph):
    # The row is the real module's eager softmax at the query (an independent forward), on a local and a global
    # layer; it sums to 1, is 0 outside the sliding window, and each entry is qk()'s probability for that key.
    g = affine_graph
    last = g.n_pos - 1
    for layer in (1, 3):
        _, pattern = real_scores(tiny_model, g.input_tokens, layer)
        for head, q in ((0, last), (2, 20)):
            row = attention_row(g, layer, head, q)
            assert row.shape == (q + 1,)
            torch.testing.assert_close(row.double(), pattern[head, q, : q + 1], rtol=1e-5, atol=1e-7)
            assert float(row.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(attention_row(g, 1, 0, last)[: last - 15].abs().sum()) == 0.0  # the 16-token window
    assert float(attention_row(g, 3, 1, last)[4]) == pytest.approx(g.qk(3, 1, last, 4).probability, rel=1e-6)
    for args, words in (((4, 0, 35), "layers 0..3"), ((1, 4, 35), "heads 0..3"), ((1, 0, 36), "positions 0..35")):
        with pytest.raises(GraphError, match=words):
            attention_row(g, *args)


@pytest.mark.real_model
# The demo set was trained on the -pt model; the test calls the model "-it" to get the chat template's zeroing.
@pytest.mark.filterwarnings("ignore::gemscope_widgets.backend.dictionaries.compat.SAEModelWarning")
def test_real_270m_with_the_demo_transcoders_on_a_chat_prompt(real_model):
    from gemscope_widgets.backend.default_transcoders import load_demo_transcoders

    # As an instruction-tuned model would: the chat template's first 4 positions get no feature and no error.
    it = dataclasses.replace(real_model, is_instruct=True)
    ids = it.prompt([{"role": "user", "content": "Michael Jordan plays the sport of"}]).input_ids
    tset = load_transcoders(load_demo_transcoders(real_model, progress=False))
    g = attribute(it, tset, ids, max_feature_nodes=64, progress=False)
    assert g.replacement.zero_positions == 4
    last = g.n_pos - 1
    config = real_model.text_model.config
    local, full = config.layer_types.index("sliding_attention") + 4, config.layer_types.index("full_attention")
    for layer, head, key in ((local, 1, 2), (full, 3, 6)):
        r = check(g, real_model, layer, head, last, key)
        assert r.top_pairs(1) and r.top_q(1) and r.top_k(1)
    # Key position 2 is in the template: no feature there, zero error nodes, its MLP outputs all in the bias.
    r = g.qk(local, 0, last, 2)
    assert not [t for t in r.k_terms if t.kind in ("feature", "unselected")]
    errors = torch.tensor([t.kind == "error" for t in r.k_terms])
    assert errors.sum() == local and not r.k_marginal[errors].any()
    with pytest.raises(GraphError, match="heads 0..3"):
        g.qk(full, 4, last, 0)


SCHEMA = json.loads((Path(__file__).parents[2] / "fixtures" / "neuronpedia_graph_schema.json").read_text())


def test_traces_in_neuronpedia_json_and_graph_files(affine_graph, tmp_path):
    g = affine_graph
    g.info.pop("qk_tracing", None)
    last = g.n_pos - 1
    prune = g.prune()
    kept_feature = next(i for i in prune.node_mask.nonzero().flatten().tolist() if g.node_kind(i) == "feature"
                        and g.node_info(i).pos == last and g.node_info(i).layer > 1)
    g.qk(3, 0, last, 5, top=6)  # on the top logit
    b = g.qk(1, 2, last, last - 2, top=4, target=kept_feature)
    assert set(g.info["qk_tracing"]) == {g.node_id(g.logit_slice.start), g.node_id(kept_feature)}
    data = g.to_neuronpedia("qk", scan="gemma-3-270m")
    jsonschema.Draft7Validator(SCHEMA).validate(data)
    nodes = {n["node_id"]: n for n in data["nodes"]}
    traced = nodes[g.node_id(kept_feature)]
    res = traced["qk_tracing_results"]
    assert traced["qk_head"]["layer"] == 1 and traced["qk_head"]["head"] == 2
    assert traced["qk_head"]["score"] == pytest.approx(b.score)
    # Neuronpedia's shapes (draft-07 ignores prefixItems, so checked here): [q, k, attr] and [id, attr].
    assert len(res["pair_wise_contributors"]) == 4 and len(res["top_q_marginal_contributors"]) == 4
    for q, k, v in res["pair_wise_contributors"]:
        assert isinstance(q, str) and isinstance(k, str) and isinstance(v, float)
    assert [v for _, _, v in res["pair_wise_contributors"]] == [v for _, _, v in b.top_pairs()]
    assert [v for _, v in res["top_k_marginal_contributors"]] == [v for _, v in b.top_k()]
    # Every contributor id resolves to a written node or to qk_only_nodes (the schema's promise).
    ids = {c for n in data["nodes"] if "qk_tracing_results" in n for rows in n["qk_tracing_results"].values()
           for row in rows for c in row[:-1]}
    only = data.get("qk_only_nodes", {})
    assert ids <= set(nodes) | set(only) and not set(only) & set(nodes)
    assert any(v["feature_type"] == "attention output" for v in only.values())
    # Read back, written again: the same traces.
    back = AttributionGraph.from_neuronpedia(json.loads(json.dumps(data)))
    for key in ("pair_wise_contributors", "top_q_marginal_contributors", "top_k_marginal_contributors", "score",
                "layer", "head", "query_pos", "key_pos", "remainder"):
        assert back.info["qk_tracing"][traced["node_id"]][key] == g.info["qk_tracing"][traced["node_id"]][key]
    again = back.to_neuronpedia("qk", scan="gemma-3-270m")
    assert {n["node_id"]: n.get("qk_tracing_results") for n in again["nodes"]} == {
        i: n.get("qk_tracing_results") for i, n in nodes.items()
    }
    assert again.get("qk_only_nodes") == only
    # The graph's own file keeps them too.
    loaded = AttributionGraph.load(g.save(tmp_path / "g.safetensors"))
    assert loaded.info["qk_tracing"] == json.loads(json.dumps(g.info["qk_tracing"]))
    # A trace whose target pruning drops is not written, and the export says so.
    errors = range(g.error_slice.start + 2 * g.n_pos, g.error_slice.start + 3 * g.n_pos)
    dropped = next(i for i in errors if not prune.node_mask[i])
    g.qk(2, 0, last, last, target=dropped)
    with pytest.warns(UserWarning, match="pruning dropped their target"):
        data = g.to_neuronpedia("qk", scan="gemma-3-270m")
    assert not any(n["node_id"] == g.node_id(dropped) for n in data["nodes"])
