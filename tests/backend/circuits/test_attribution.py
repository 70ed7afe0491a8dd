"""attribute(): completeness on tiny and real Gemma 3, the linearity check against an independently frozen
Hugging Face forward, and errors for bad transcoder sets."""

from __future__ import annotations

import math

import pytest
import torch

from gemscope_widgets.backend.circuits.attribution import AttributionError, attribute
from gemscope_widgets.backend.circuits.targets import logit_difference
from gemscope_widgets.backend.circuits.transcoder_set import TranscoderSetError, load_transcoders
from gemscope_widgets.backend.dictionaries.sae import JumpReLUSAE
from gemscope_widgets.errors import SAEModelMismatch
from gemscope_widgets.testing.tiny import TINY_NAME
from tests.helpers import hook_ids

PROMPT = "The quick brown fox jumps"


def completeness_error(graph) -> float:
    """Largest relative gap between (row sum + bias_input + unselected_input) and the node's input."""
    rows = torch.cat([torch.arange(graph.n_selected), torch.arange(graph.logit_slice.start, graph.n_nodes)])
    lhs = graph.adjacency_matrix[rows].double().sum(1) + graph.bias_input[rows].double()
    lhs = lhs + graph.unselected_input[rows].double()
    rhs = graph.node_inputs[rows].double()
    return float(((lhs - rhs).abs() / rhs.abs().clamp(min=1e-6)).max())


@pytest.mark.parametrize("which", ["affine", "plain", "clt"])
def test_completeness_tiny(tiny_model, tiny_transcoder_root, which):
    site = "clt" if which == "clt" else "transcoder_all"
    tset = load_transcoders(tiny_transcoder_root / which, site)
    before = hook_ids(tiny_model.model)
    graph = attribute(tiny_model, tset, PROMPT, max_feature_nodes=None, progress=False, batch_size=16)
    assert hook_ids(tiny_model.model) == before
    assert graph.n_selected == graph.n_active > 20
    assert completeness_error(graph) < 1e-4
    # Nothing at <bos>: no feature, and its error nodes have no edges.
    assert (graph.active_features[:, 1] > 0).all()
    err_bos = [graph.error_slice.start + layer * graph.n_pos for layer in range(graph.n_layers)]
    assert not graph.adjacency_matrix[:, err_bos].any()
    # Edges only go forward: a feature row has no edge from a feature of its own or a later layer.
    feats = graph.selected_active_features
    later = feats[:, 0][None, :] >= feats[:, 0][:, None]
    assert not graph.adjacency_matrix[: graph.n_selected, : graph.n_selected][later].any()
    # Logit nodes: most likely first, covering 95% or capped at 10.
    probs = graph.logit_probabilities
    assert (probs[:-1] >= probs[1:]).all() and (probs.sum() >= 0.95 or graph.n_logits == 10)


def test_attention_implementation_is_restored(tiny_model, tiny_transcoder_root):
    before = tiny_model.text_model.config._attn_implementation
    attribute(tiny_model, load_transcoders(tiny_transcoder_root / "plain"), PROMPT, progress=False)
    assert tiny_model.text_model.config._attn_implementation == before


def test_partial_set_and_feature_budget(tiny_model, tiny_transcoder_root):
    full = attribute(tiny_model, load_transcoders(tiny_transcoder_root / "affine"), PROMPT, max_feature_nodes=None,
                     progress=False)
    partial = load_transcoders(tiny_transcoder_root / "affine", layers=[1, 3])
    assert partial.layers == (1, 3)
    graph = attribute(tiny_model, partial, PROMPT, max_feature_nodes=None, progress=False)
    assert set(graph.active_features[:, 0].tolist()) <= {1, 3}
    assert completeness_error(graph) < 1e-4
    # Layers 0 and 2 are pure error: their error nodes carry the whole MLP output, so they matter more.
    assert graph.n_nodes == graph.n_selected + 5 * graph.n_pos + graph.n_logits
    budget = attribute(tiny_model, load_transcoders(tiny_transcoder_root / "affine"), PROMPT, max_feature_nodes=15,
                       batch_size=4, progress=False)
    assert budget.n_selected == 15 and budget.n_active == full.n_active
    assert completeness_error(budget) < 1e-4
    assert budget.unselected_input.abs().sum() > 0
    # Rows of the features it kept equal the full graph's rows (restricted to the kept columns).
    keep = budget.selected_features
    cols = torch.cat([keep, torch.arange(full.n_active, full.n_nodes)])
    torch.testing.assert_close(budget.adjacency_matrix[: budget.n_selected], full.adjacency_matrix[keep][:, cols],
                               rtol=1e-4, atol=1e-5)


def test_vlm_class_gives_same_kind_of_graph(tiny_vlm_model, tiny_transcoder_root):
    # The set was calibrated on the text model; the VLM is another random model of the same shape.
    tset = load_transcoders(tiny_transcoder_root / "affine")
    graph = attribute(tiny_vlm_model, tset, PROMPT, max_feature_nodes=None, progress=False)
    assert completeness_error(graph) < 1e-4


@pytest.mark.real_model
def test_completeness_real_270m(real_model, real_transcoder_root):
    tset = load_transcoders(real_transcoder_root, width=512, l0="small", affine=True)
    assert len(tset) == 18
    graph = attribute(real_model, tset, "The capital of France is", max_feature_nodes=None, progress=False)
    assert graph.n_layers == 18 and graph.n_active > 100
    assert completeness_error(graph) < 1e-4
    assert graph.logit_token_strings[0].strip() != ""
    pruned = graph.prune()
    assert pruned.node_mask[graph.logit_slice].all() and int(pruned.node_mask[: graph.n_selected].sum()) > 0


# ---------------------------------------------------------------------------------------------------------------
# Linearity: an independent frozen forward through the Hugging Face modules themselves


class _TranscoderMLP(torch.nn.Module):
    """An MLP that is exactly a Gemma Scope 2 transcoder (its output replaces MLP + post-feedforward norm)."""

    def __init__(self, transcoder: JumpReLUSAE):
        super().__init__()
        self.transcoder = transcoder

    def forward(self, x):
        return self.transcoder(x).to(x.dtype)


@pytest.fixture
def exact_model(tiny_model_path, tiny_transcoder_root):
    """The tiny model with every MLP replaced by its transcoder, so reconstruction errors are zero."""
    from gemscope_widgets.backend.gemma.model import load_model

    gm = load_model(tiny_model_path, device="cpu", dtype="float32", name=TINY_NAME)
    tset = load_transcoders(tiny_transcoder_root / "affine")
    for layer, block in enumerate(gm.layers):
        block.mlp = _TranscoderMLP(tset.by_layer[layer])
        block.post_feedforward_layernorm = torch.nn.Identity()
    return gm, tset


def _frozen_forward(gm, tset, ids, graph, delta: dict[int, float]):
    """Target inputs (feature pre-activations, demeaned logits) in a forward where attention patterns and every
    RMSNorm's scale are frozen at the clean run's values (via hooks on the HF modules), each MLP output is the
    transcoder's output with feature activations held at their clean values (scaled by 1 + delta for chosen
    active indices),
    the skip recomputed from the current input, and the clean error added."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm, repeat_kv

    text = gm.text_model
    norms = [m for m in text.modules() if isinstance(m, Gemma3RMSNorm)]
    clean: dict = {}
    handles = []
    mode = {"frozen": False}

    def norm_hook(module, args, out):
        x = args[0].float()
        if not mode["frozen"]:
            clean[module] = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.eps)
            return None
        return (x * clean[module] * (1 + module.weight.float())).to(out.dtype)

    def attn_hook(module, args, kwargs, out):
        if not mode["frozen"]:
            clean[module] = out[1].detach()
            return None
        h = kwargs["hidden_states"]
        b, t, _ = h.shape
        v = module.v_proj(h).view(b, t, -1, module.head_dim).transpose(1, 2)
        v = repeat_kv(v, module.num_key_value_groups)
        z = (clean[module] @ v).transpose(1, 2).reshape(b, t, -1)
        return module.o_proj(z), None

    x_now: dict = {}

    def pre_ff_hook(layer):
        def fn(module, args, out):
            x_now[layer] = out.detach().float()

        return fn

    acts = graph.active_features
    vals = graph.activation_values.clone()
    for i, dv in delta.items():
        vals[i] += dv * graph.activation_values[i]

    def mlp_hook(layer):
        def fn(module, args, out):
            if not mode["frozen"]:
                clean[("mlp", layer)] = out.detach().float()
                return None
            x = x_now[layer][0]
            if layer not in tset.layers:
                return clean[("mlp", layer)].to(out.dtype)
            clean_x = clean[("x", layer)]
            m = acts[:, 0] == layer
            rec = tset.b_dec(layer).expand_as(x).clone()
            skip = tset.skip(layer)
            if skip is not None:
                rec = rec + x @ skip
                clean_rec = tset.b_dec(layer) + clean_x @ skip
            else:
                clean_rec = tset.b_dec(layer).expand_as(x)
            feats = torch.zeros_like(x)
            clean_feats = torch.zeros_like(x)
            w = tset.by_layer[layer].w_dec
            feats.index_add_(0, acts[m, 1], vals[m, None] * w[acts[m, 2]])
            clean_feats.index_add_(0, acts[m, 1], graph.activation_values[m, None] * w[acts[m, 2]])
            error = clean[("mlp", layer)][0] - clean_rec - clean_feats
            return (rec + feats + error)[None].to(out.dtype)

        return fn

    try:
        for n in norms:
            handles.append(n.register_forward_hook(norm_hook))
        for layer, block in enumerate(gm.layers):
            handles.append(block.self_attn.register_forward_hook(attn_hook, with_kwargs=True))
            handles.append(block.pre_feedforward_layernorm.register_forward_hook(pre_ff_hook(layer)))
            post = block.post_feedforward_layernorm
            target = post if not isinstance(post, torch.nn.Identity) else block.mlp
            handles.append(target.register_forward_hook(mlp_hook(layer)))
        cfg = text.config
        old = cfg._attn_implementation
        cfg._attn_implementation = "eager"
        try:
            with torch.no_grad():
                text(input_ids=ids[None], use_cache=False)
                for layer in range(gm.n_layers):
                    clean[("x", layer)] = x_now[layer][0].clone()
                mode["frozen"] = True
                hidden = text(input_ids=ids[None], use_cache=False).last_hidden_state
        finally:
            cfg._attn_implementation = old
    finally:
        for h in handles:
            h.remove()
    feats = graph.selected_active_features
    pre = torch.stack([
        x_now[int(layer)][0, int(pos)] @ tset.w_enc(int(layer))[:, int(f)] + tset.b_enc(int(layer))[int(f)]
        for layer, pos, f in feats.tolist()
    ])
    logits = gm.lm_head(hidden[0, -1]).float()
    return pre, logits[graph.logit_tokens] - logits.mean()


def test_linearity_exact_replacement(exact_model):
    gm, tset = exact_model
    ids = gm.prompt(PROMPT).input_ids
    graph = attribute(gm, tset, ids, max_feature_nodes=None, progress=False)
    # The MLPs are the transcoders: every error node is (numerically) zero, so no edge leaves one.
    err_cols = graph.adjacency_matrix[:, graph.error_slice].abs().max()
    assert err_cols < 1e-4 * graph.adjacency_matrix.abs().max()
    assert completeness_error(graph) < 1e-4
    base_pre, base_logit = _frozen_forward(gm, tset, ids, graph, {})
    torch.testing.assert_close(base_pre, graph.node_inputs[: graph.n_selected], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(base_logit, graph.node_inputs[graph.logit_slice], rtol=1e-4, atol=1e-4)
    # Scale three source features (early, middle, late layers) one at a time by 1 + delta: an edge is the
    # source's whole contribution (activation x decoder), so each target input moves by delta x edge weight.
    layers = graph.selected_active_features[:, 0]
    picks = [int((layers == q).nonzero()[0, 0]) for q in (0, 1, 2) if (layers == q).any()]
    assert len(picks) == 3
    delta = 0.75
    for node in picks:
        active_index = int(graph.selected_features[node])
        pre, logit = _frozen_forward(gm, tset, ids, graph, {active_index: delta})
        got = torch.cat([pre - base_pre, logit - base_logit]) / delta
        rows = torch.cat([torch.arange(graph.n_selected), torch.arange(graph.logit_slice.start, graph.n_nodes)])
        want = graph.adjacency_matrix[rows, node]
        scale = max(float(want.abs().max()), 1e-6)
        assert float((got - want).abs().max()) < 1e-4 * scale + 1e-5, node
        assert float(want.abs().max()) > 0  # the feature does reach something


# ---------------------------------------------------------------------------------------------------------------
# Bad sets and arguments


def test_bad_sets(tiny_model, tiny_transcoder_root, tmp_path):
    from gemscope_widgets.backend.dictionaries.loading import load_sae_folder

    affine = tiny_transcoder_root / "affine" / "transcoder_all"
    plain = tiny_transcoder_root / "plain" / "transcoder_all"
    t1 = load_sae_folder(affine / "layer_1_width_128_l0_small_affine")
    t1b = load_sae_folder(plain / "layer_1_width_64_l0_small")
    t2b = load_sae_folder(plain / "layer_2_width_64_l0_small")
    with pytest.raises(TranscoderSetError, match="Two transcoders for layer 1"):
        load_transcoders([t1, t1b])
    with pytest.raises(TranscoderSetError, match="different widths"):
        load_transcoders([t1, t2b])
    with pytest.raises(TranscoderSetError, match="empty"):
        load_transcoders([])
    with pytest.raises(TranscoderSetError, match="not a transcoder site"):
        load_transcoders(affine, "resid_post")
    # Two matching folders for one layer.
    import shutil

    mixed = tmp_path / "mixed" / "transcoder_all"
    shutil.copytree(affine, mixed)
    shutil.copytree(plain / "layer_0_width_64_l0_small", mixed / "layer_0_width_64_l0_small")
    with pytest.raises(TranscoderSetError, match="Several transcoders match layer 0"):
        load_transcoders(mixed.parent)
    assert len(load_transcoders(mixed.parent, affine=True)) == 4
    with pytest.raises(TranscoderSetError, match=r"No transcoder folder for layer\(s\) \[7\]"):
        load_transcoders(affine.parent, layers=[7])


def test_wrong_model_set(real_model_free_mismatch_set, tiny_model):
    with pytest.raises(SAEModelMismatch, match="d_in 32"):
        attribute(tiny_model, real_model_free_mismatch_set, PROMPT, progress=False)


@pytest.fixture
def real_model_free_mismatch_set(tmp_path):
    """A transcoder set with d_in 32 (the tiny model has 64)."""
    from tests.fixtures.gemma_scope_files import write_gemma_scope_sae

    for layer in range(2):
        write_gemma_scope_sae(tmp_path / "transcoder_all" / f"layer_{layer}_width_16k_l0_small", kind="transcoder",
                              layer=layer, d_in=32, width=32, seed=layer)
    return load_transcoders(tmp_path)


@pytest.mark.real_model
def test_set_for_another_gemma_size(real_model, tmp_path):
    from tests.fixtures.gemma_scope_files import write_gemma_scope_sae

    write_gemma_scope_sae(tmp_path / "transcoder_all" / "layer_0_width_16k_l0_small", kind="transcoder", layer=0,
                          d_in=640, width=32, model_name="google/gemma-3-1b-pt")
    with pytest.raises(SAEModelMismatch, match="gemma-3-1b"):
        attribute(real_model, load_transcoders(tmp_path), "Hi", progress=False)


def test_bad_arguments(tiny_model, tiny_transcoder_root):
    tset = load_transcoders(tiny_transcoder_root / "plain")
    for kwargs, match in [
        ({"batch_size": 0}, "batch_size"),
        ({"max_logits": 0}, "max_logits"),
        ({"logit_probability": 1.5}, "logit_probability"),
        ({"max_feature_nodes": -1}, "max_feature_nodes"),
    ]:
        with pytest.raises(AttributionError, match=match):
            attribute(tiny_model, tset, PROMPT, progress=False, **kwargs)


def test_hub_set_offline(hub_cache, tiny_model):
    repo = "google/gemma-scope-2-270m-pt"
    for layer in (0, 1):
        hub_cache.add(repo, f"transcoder_all/layer_{layer}_width_16k_l0_small_affine", kind="transcoder", layer=layer,
                      affine=True, model_name="google/gemma-3-270m", seed=layer, width=32)
    tset = load_transcoders(repo, width="16k", l0="small", affine=True, layers=[0, 1])
    assert tset.layers == (0, 1) and tset.affine and tset.model_name == "google/gemma-3-270m"
    with pytest.raises(Exception, match="hf download"):
        load_transcoders(repo, width="16k", l0="small", affine=True)  # all 18 layers: layer 2 is not cached
    with pytest.raises(TranscoderSetError, match="width="):
        load_transcoders(repo, l0="small")
    assert math.isfinite(float(tset.b_enc(0).sum()))


@pytest.mark.real_model
def test_zero_positions_follow_circuit_tracer(real_model):
    import dataclasses

    from gemscope_widgets.backend.circuits.replacement import zero_positions

    chat = real_model.prompt([{"role": "user", "content": "Hi there"}]).input_ids
    plain = real_model.prompt("Hi there").input_ids
    assert zero_positions(real_model, chat) == 1 and zero_positions(real_model, plain) == 1
    it = dataclasses.replace(real_model, is_instruct=True)
    # An instruction-tuned model with a chat prompt: <bos><start_of_turn>user\n carry no nodes (circuit-tracer).
    assert zero_positions(it, chat) == 4
    assert zero_positions(it, plain) == 1


def test_chosen_targets_tokens_logit_difference_and_a_direction(tiny_model, tiny_transcoder_root):
    """attribute(targets=...): each target's row plus its bias equals its input, computed here from the model."""
    tset = load_transcoders(tiny_transcoder_root / "affine")
    ids = tiny_model.prompt(PROMPT).input_ids
    with torch.no_grad():
        out = tiny_model.model(input_ids=ids[None], output_hidden_states=True)
    logits = out.logits[0, -1].float()
    # The unembedding reads the final-normed last hidden state (transformers returns it normed as the last state).
    normed = out.hidden_states[-1][0, -1].float()
    a, b = int(torch.argsort(logits, descending=True)[0]), int(torch.argsort(logits, descending=True)[3])
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(tiny_model.d_model, generator=gen)
    targets = [b, logit_difference(tiny_model, a, b), ("random direction", direction)]
    graph = attribute(tiny_model, tset, PROMPT, targets=targets, max_feature_nodes=None, progress=False,
                      batch_size=16)
    assert graph.n_logits == 3 and completeness_error(graph) < 1e-4
    inputs = graph.node_inputs[graph.logit_slice]
    assert float(inputs[0]) == pytest.approx(float(logits[b] - logits.mean()), rel=1e-4, abs=1e-4)
    assert float(inputs[1]) == pytest.approx(float(logits[a] - logits[b]), rel=1e-4, abs=1e-4)
    assert float(inputs[2]) == pytest.approx(float(direction @ normed), rel=1e-4, abs=1e-4)
    vocab = tiny_model.lm_head.weight.shape[0]
    assert graph.logit_tokens.tolist() == [b, vocab + 1, vocab + 2]
    assert graph.logit_token_strings[2] == "random direction" and " − " in graph.logit_token_strings[1]
    node = int(torch.argmax(graph.node_influence()[: graph.n_selected]))
    result = graph.intervene({node: 0.0})  # direction targets have no probability: only the token target is listed
    assert result.logit_tokens == [b]
    with pytest.raises(AttributionError, match="not one"):
        attribute(tiny_model, tset, PROMPT, targets=[" Paris is"], progress=False)
    with pytest.raises(AttributionError, match="twice"):
        attribute(tiny_model, tset, PROMPT, targets=[b, b], progress=False)
    with pytest.raises(AttributionError, match="finite"):
        attribute(tiny_model, tset, PROMPT, targets=[("nan", torch.full((tiny_model.d_model,), float("nan")))],
                  progress=False)
