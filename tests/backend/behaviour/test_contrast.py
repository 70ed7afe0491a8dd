"""Contrasts ranked by span differences, checked against prompt_features computed directly."""

from __future__ import annotations

import numpy as np
import pytest

from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.behaviour.contrast import contrast, contrast_pairs
from gemscope_widgets.errors import ContrastError, PromptError

A = [{"role": "user", "content": "Tell me about the fox."}]
B = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Tell me about the dog and fox."}]


@pytest.fixture(scope="module")
def sae(gemma_scope_folders):
    from gemscope_widgets.backend.dictionaries.loading import load_sae

    return load_sae(gemma_scope_folders["resid_post"])


def direct(gm, sae, prompt, rows, reduce):
    dense = prompt_features(gm, sae, prompt)[0].dense().numpy()[rows]
    return dense.mean(0) if reduce == "mean" else dense.max(0)


def content_rows(gm, prompt, text):
    """Oracle for a span: the token positions whose decoded text makes up ``text`` (found by scanning)."""
    p = gm.prompt(prompt)
    for i in range(len(p)):
        for j in range(i + 1, len(p) + 1):
            if "".join(p.tokens[i:j]) == text:
                return np.arange(i, j)
    raise AssertionError(f"{text!r} not in {p.tokens}")


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_last_user_turn_matches_prompt_features(tiny_model, sae, reduce):
    c = contrast(tiny_model, sae, A, B, reduce=reduce, k=10)
    assert c.span == "last_user_turn"
    rows_a = content_rows(tiny_model, A, A[0]["content"])
    rows_b = content_rows(tiny_model, B, B[1]["content"])
    np.testing.assert_array_equal(c.positions_a, rows_a)
    np.testing.assert_array_equal(c.positions_b, rows_b)
    expected = direct(tiny_model, sae, A, rows_a, reduce) - direct(tiny_model, sae, B, rows_b, reduce)
    np.testing.assert_allclose(c.full_diff, expected, rtol=1e-5, atol=1e-6)
    top = np.argsort(-np.abs(expected), kind="stable")[:10]
    np.testing.assert_array_equal(c.features, top[expected[top] != 0])


def test_plain_text_all_tokens_and_spans(tiny_model, sae):
    c = contrast(tiny_model, sae, "The quick brown fox.", "The lazy dog.", reduce="max", k=5)
    assert c.span == "all"
    n_a = len(tiny_model.prompt("The quick brown fox."))
    expected = direct(tiny_model, sae, "The quick brown fox.", np.arange(1, n_a), "max") - direct(
        tiny_model, sae, "The lazy dog.", np.arange(1, len(tiny_model.prompt("The lazy dog."))), "max")
    np.testing.assert_allclose(c.full_diff, expected, rtol=1e-5, atol=1e-6)
    reply = [*A, {"role": "assistant", "content": "Foxes are quick."}]
    r = contrast(tiny_model, sae, reply, reply, span="response")
    np.testing.assert_array_equal(r.positions_a, content_rows(tiny_model, reply, "Foxes are quick."))
    assert len(r.features) == 0  # identical sides differ nowhere
    first = contrast(tiny_model, sae, reply, A, span="first_response_token")
    assert first.positions_a.tolist() == [r.positions_a[0]]
    assert first.positions_b.tolist() == [len(tiny_model.prompt(A)) - 1]


def test_bad_contrasts(tiny_model, sae):
    with pytest.raises(ContrastError, match="plain text"):
        contrast(tiny_model, sae, "a fox", "a dog", span="last_user_turn")
    with pytest.raises(ContrastError, match="model turn"):
        contrast(tiny_model, sae, A, B, span="response")
    with pytest.raises(ContrastError, match="span"):
        contrast(tiny_model, sae, A, B, span="middle")
    with pytest.raises(ContrastError, match="reduce"):
        contrast(tiny_model, sae, A, B, reduce="median")
    with pytest.raises(PromptError):
        contrast(tiny_model, sae, "", "a dog")
    with pytest.raises(ContrastError, match="at least 2"):
        contrast_pairs(tiny_model, sae, [("a", "b")])


def test_paired_statistic(tiny_model, sae):
    pairs = [("The fox runs.", "The dog runs."), ("A fox sleeps.", "A dog sleeps."), ("Fox and hen.", "Dog and hen.")]
    pc = contrast_pairs(tiny_model, sae, pairs, k=8, progress=False)
    diffs = np.stack([
        direct(tiny_model, sae, a, np.arange(1, len(tiny_model.prompt(a))), "mean")
        - direct(tiny_model, sae, b, np.arange(1, len(tiny_model.prompt(b))), "mean")
        for a, b in pairs
    ]).astype(np.float64)
    mean = diffs.mean(0)
    se = diffs.std(0, ddof=1) / np.sqrt(3)
    f = pc.features[0]
    assert pc.n_pairs == 3
    assert pc.t[0] == pytest.approx(mean[f] / se[f], rel=1e-4)
    finite = np.where((se > 0) & (mean != 0), np.abs(mean / np.where(se > 0, se, 1)), 0)
    assert abs(pc.t[0]) == pytest.approx(finite.max(), rel=1e-4)
    assert np.all(np.diff(np.abs(pc.t)) <= 1e-6)
    # The first pair travels with the ranking (a view shows it beside the table without a second forward pass).
    one = contrast(tiny_model, sae, *pairs[0], k=1)
    np.testing.assert_array_equal(pc.first.full_diff, one.full_diff)
    np.testing.assert_array_equal(pc.first.positions_a, one.positions_a)


def test_a_single_pair_says_it_cannot_separate_content_from_wording(tiny_model, sae):
    single = contrast(tiny_model, sae, "The fox runs.", "The dog runs.")
    assert "pairs=" in single.caveat and "wording" in single.caveat


def test_token_ids_contrast_like_their_text(tiny_model, sae):
    """Token ids are a prompt here too: the default span is the whole prompt (ids have no chat turns)."""
    a, b = "The cat sat on the mat.", "The dog ran in the park."
    ids_a, ids_b = (tiny_model.prompt(t).input_ids.tolist() for t in (a, b))
    by_ids, by_text = contrast(tiny_model, sae, ids_a, ids_b, k=5), contrast(tiny_model, sae, a, b, k=5)
    assert by_ids.span == by_text.span == "all"
    np.testing.assert_array_equal(by_ids.full_diff, by_text.full_diff)
