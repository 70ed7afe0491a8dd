"""Early answering: answer probabilities checked against direct model calls on the truncated texts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemscope_widgets.backend.behaviour.faithfulness import cot_faithfulness, split_sentences
from gemscope_widgets.backend.gemma.model import BaseModelChatWarning
from gemscope_widgets.errors import FaithfulnessError

Q = "Tom has 3 apples and buys 2 more. How many apples does he have?"
COT = "He starts with 3 apples. He buys 2 more apples. 3 plus 2 is 5."
CUE = " So the answer is"
ANSWERS = [" 5", " 6", " five apples"]


def direct_logprob(gm, context: str, answer: str, chat: bool) -> float:
    """Oracle: one unbatched forward on the truncated text + answer, log-softmax summed over the answer tokens."""
    tok = gm.tokenizer
    ctx = tok(context, add_special_tokens=not chat)["input_ids"]
    ans = tok(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + ans])
    with torch.no_grad():
        logp = torch.log_softmax(gm.model(input_ids=ids).logits[0].double(), dim=-1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(ans)))


def test_sentences():
    ends = split_sentences(COT)
    assert [COT[a:b] for a, b in zip([0, *ends[:-1]], ends)] == [
        "He starts with 3 apples. ", "He buys 2 more apples. ", "3 plus 2 is 5."]


def test_early_answering_equals_direct_calls_tiny(tiny_model):
    r = cot_faithfulness(tiny_model, Q, COT, CUE, ANSWERS, chat=False, progress=False)
    assert r.contexts == [
        Q + "\n" + CUE,
        Q + "\nHe starts with 3 apples." + CUE,
        Q + "\nHe starts with 3 apples. He buys 2 more apples." + CUE,
        Q + "\n" + COT + CUE,
    ]
    assert len(r.answer_tokens[2]) > 1  # a multi-token answer, scored in full
    expected = np.array([[direct_logprob(tiny_model, c, a, False) for a in ANSWERS] for c in r.contexts])
    np.testing.assert_allclose(r.curve.probs, np.exp(expected), rtol=1e-4, atol=1e-9)
    # Corruption: the middle step with a number (step 1) gets every number + 1; later cuts are rescored.
    assert r.corrupted_step == 1 and r.corrupted_text == "He buys 3 more apples. "
    bad = Q + "\nHe starts with 3 apples. He buys 3 more apples. 3 plus 2 is 5." + CUE
    np.testing.assert_allclose(r.corrupted.logprobs[-1], [direct_logprob(tiny_model, bad, a, False) for a in ANSWERS],
                               rtol=1e-4)
    np.testing.assert_array_equal(r.corrupted.logprobs[:2], r.curve.logprobs[:2])
    n = len(tiny_model.tokenizer(COT, add_special_tokens=False)["input_ids"])
    filler = Q + "\n" + (" ..." * n).rstrip() + CUE
    np.testing.assert_allclose(r.filler.logprobs[0], [direct_logprob(tiny_model, filler, a, False) for a in ANSWERS],
                               rtol=1e-4)
    assert r.agreement[-1] == 1.0 and 0.0 <= r.area_over_curve <= 1.0


def test_chat_mode_and_dependence(tiny_model, gemma_scope_folders, monkeypatch):
    monkeypatch.setattr(tiny_model, "_warned_chat", False)
    from gemscope_widgets.backend.dictionaries.loading import load_sae

    sae = load_sae(gemma_scope_folders["resid_post"])
    with pytest.warns(BaseModelChatWarning):
        r = cot_faithfulness(tiny_model, Q, COT, CUE, ANSWERS[:2], chat=True, sae=sae, corrupt=(0, "He has 9."),
                             progress=False)
    assert r.contexts[0].startswith("<bos><start_of_turn>user\n" + Q + "<end_of_turn>\n<start_of_turn>model\n")
    expected = [direct_logprob(tiny_model, r.contexts[-1], a, True) for a in ANSWERS[:2]]
    np.testing.assert_allclose(r.curve.logprobs[-1], expected, rtol=1e-4)
    dep = r.dependence
    assert dep is not None and dep.answer == r.final_answer and len(dep.features) > 0
    assert set(dep.totals) == {"question", "chain_of_thought", "cue"}
    np.testing.assert_allclose(dep.total, dep.question + dep.chain_of_thought + dep.cue)
    assert 0 <= dep.cot_share <= 1


def test_bad_input(tiny_model):
    with pytest.raises(FaithfulnessError, match="chain of thought is empty"):
        cot_faithfulness(tiny_model, Q, "  ", CUE, ANSWERS, chat=False)
    with pytest.raises(FaithfulnessError, match="distinct"):
        cot_faithfulness(tiny_model, Q, COT, CUE, [" 5", " 5"], chat=False)
    with pytest.raises(FaithfulnessError, match="list"):
        cot_faithfulness(tiny_model, Q, COT, CUE, " 5", chat=False)
    with pytest.raises(FaithfulnessError, match="out of range"):
        cot_faithfulness(tiny_model, Q, COT, CUE, ANSWERS, chat=False, corrupt=(7, "x"), progress=False)


@pytest.mark.parametrize("which", ["tiny_model", "tiny_vlm_model"])
def test_prefix_cache_runs_fewer_tokens_and_equals_plain_forwards(which, request):
    """Contexts longer than the tiny model's sliding window (16): the shared prefix's cache is reused and the
    scores still equal unbatched direct calls (both model classes: the VLM's decoder sits deeper)."""
    from gemscope_widgets.backend.behaviour.faithfulness import score_answers

    tiny_model = request.getfixturevalue(which)

    tok = tiny_model.tokenizer
    texts = [Q + "\n" + COT[:n] + CUE for n in (0, 25, len(COT))]
    contexts = [tok(t)["input_ids"] for t in texts]
    answers = [tok(a, add_special_tokens=False)["input_ids"] for a in ANSWERS]
    assert len(contexts[-1]) > 2 * tiny_model.text_model.config.sliding_window
    seen = []
    handle = tiny_model.embed.register_forward_hook(lambda m, args, out: seen.append(args[0].numel()))
    try:
        cached = score_answers(tiny_model, contexts, answers, prefix=contexts[-1]).logprobs
        n_cached = sum(seen)
        seen.clear()
        plain = score_answers(tiny_model, contexts, answers).logprobs
    finally:
        handle.remove()
    assert n_cached < 0.7 * sum(seen)  # without the cache every context runs in full
    expected = [[direct_logprob(tiny_model, t, a, False) for a in ANSWERS] for t in texts]
    np.testing.assert_allclose(cached, expected, rtol=1e-4)
    np.testing.assert_allclose(plain, expected, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_transcoders(tiny_model, tmp_path_factory):
    from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
    from gemscope_widgets.testing.transcoders import write_calibrated_set

    root = write_calibrated_set(tiny_model, tmp_path_factory.mktemp("cot_tc"), width=64, l0=8, affine=True, seed=5)
    return load_transcoders(root, "transcoder_all")


def test_circuit_dependence_sums_graph_edges_by_region(tiny_model, tiny_transcoders):
    """Oracle: the graph's edges into each answer-position feature summed by hand over the source nodes whose
    position lies in the question, the chain or the cue (positions found by decoding, not offsets); the four parts
    add up to the feature's pre-activation computed from the captured MLP input."""
    from gemscope_widgets.backend.behaviour.cot_dependence import CircuitDependence
    from gemscope_widgets.backend.gemma.capture import capture

    r = cot_faithfulness(tiny_model, Q, COT, CUE, ANSWERS[:2], chat=False, filler=None, corrupt=False,
                         transcoders=tiny_transcoders, k=5, max_feature_nodes=None, progress=False)
    dep = r.dependence
    assert isinstance(dep, CircuitDependence) and dep.answer == r.final_answer
    graph = dep.graph
    ids = graph.input_tokens.tolist()
    assert ids == tiny_model.tokenizer(r.contexts[-1])["input_ids"]
    head, chain = len(Q + "\n"), len(Q + "\n" + COT)
    starts = [len(tiny_model.tokenizer.decode(ids[1:j])) for j in range(len(ids))]
    region = [0 if s < head else (1 if s < chain else 2) for s in starts]
    region[0] = 3  # <bos>: counted with the biases
    assert {0, 1, 2} <= set(region)
    assert 0 < len(dep.features) <= 5 and (dep.features[:, 1] == len(ids) - 1).all()
    assert (np.diff(dep.influence) <= 1e-7).all()
    acts = capture(tiny_model, graph.input_tokens[None], [f"model.layers.{L}.pre_feedforward_layernorm.output"
                                                          for L in range(tiny_model.n_layers)], stop_early=False)
    for i, (layer, pos, feature) in enumerate(dep.features.tolist()):
        node = graph.node_index((layer, pos, feature))
        sums = [0.0, 0.0, 0.0, 0.0]
        for j in range(graph.n_selected + (graph.n_layers + 1) * graph.n_pos):
            sums[region[graph.node_info(j).pos]] += float(graph.adjacency_matrix[node, j])
        np.testing.assert_allclose([dep.question[i], dep.chain_of_thought[i], dep.cue[i]], sums[:3], rtol=1e-4,
                                   atol=1e-5)
        x = acts[f"model.layers.{layer}.pre_feedforward_layernorm.output"][0, pos].float()
        pre = float(x @ tiny_transcoders.w_enc(layer)[:, feature] + tiny_transcoders.b_enc(layer)[feature])
        total = dep.question[i] + dep.chain_of_thought[i] + dep.cue[i] + dep.bias[i]
        assert abs(total - pre) <= 1e-3 * max(1.0, abs(pre))
    assert 0 <= dep.cot_share <= 1


def test_curve_svg_draws_every_cut_and_escapes_answers(tiny_model):
    """The notebook rendering: one polyline per answer through (cut, normalised probability) points, the corrupted
    and filler companions, answers as escaped text; no script, no event handler."""
    import re
    from html.parser import HTMLParser

    from gemscope_widgets.backend.behaviour.faithfulness_plot import _xy

    answers = [" 5", ' <img src=x onerror="alert(1)">']
    r = cot_faithfulness(tiny_model, Q, COT, CUE, answers, chat=False, progress=False)
    html = r._repr_html_()

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: set[str] = set()
            self.attrs: set[str] = set()

        def handle_starttag(self, tag, attrs):
            self.tags.add(tag)
            self.attrs.update(name for name, _ in attrs)

    tags = Tags()
    tags.feed(html)
    assert "img" not in tags.tags and "script" not in tags.tags and not any(a.startswith("on") for a in tags.attrs)
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    n = len(r.cuts)
    for a in range(len(answers)):
        points = re.search(rf'data-answer="{a}"[^>]*points="([^"]+)"', html).group(1).split()
        assert len(points) == n
        got = [tuple(float(v) for v in p.split(",")) for p in points]
        expected = [_xy(c, r.curve.normalized[c, a], n) for c in range(n)]
        np.testing.assert_allclose(got, expected, atol=0.01)
    assert 'class="gs-cot-corrupted"' in html and 'class="gs-cot-filler"' in html
    assert f"area over the curve {r.area_over_curve:.3f}" in html


def test_answer_rows_share_stems():
    """Answers are read from as few rows as their stems allow: " 4" and " 42" (▁ 4, ▁ 4 2) from one row."""
    from gemscope_widgets.backend.behaviour.faithfulness import _answer_rows

    assert _answer_rows([[9, 4], [9, 5], [9, 6]]) == ([[9]], [0, 0, 0])
    assert _answer_rows([[9, 4], [9, 4, 2], [7]]) == ([[9, 4]], [0, 0, 0])
    rows, where = _answer_rows([[1, 2, 3], [4, 5], [1, 6]])
    assert sorted(map(tuple, rows)) == [(1, 2), (4,)] and [tuple(rows[w]) for w in where] == [(1, 2), (4,), (1, 2)]
