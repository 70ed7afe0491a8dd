"""LLM-written explanations (delphi's protocol) on the real 270M as explainer and scorer: balanced accuracies from
the recorded probabilities, deciles, the held-out split, the probabilities against a plain forward, the cache and
resuming, the labels they become, and bad input."""

from __future__ import annotations

import glob
import warnings

import pytest
import torch

from gemscope_widgets.backend.analysis.card import FeatureCards
from gemscope_widgets.backend.analysis.explain import BaseExplainerWarning, explain
from gemscope_widgets.backend.analysis.explain_prompts import chat_ids, scorer_messages
from gemscope_widgets.backend.analysis.explain_scoring import MIN_ACTIVATING, MIN_NON_ACTIVATING, held_out_contexts
from gemscope_widgets.backend.analysis.label_scores import MAX_DOC_TOKENS, label_texts
from gemscope_widgets.backend.analysis.labels import FeatureLabels
from gemscope_widgets.backend.stats.corpus import tokenize_docs
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from gemscope_widgets.backend.workspace import Workspace
from gemscope_widgets.errors import ExplainError

pytestmark = pytest.mark.real_model

SETTINGS = {"n_explain": 3, "deciles": 5, "n_test": 5, "n_non": 3, "max_new_tokens": 6, "logit_k": 3,
            "batch_size": 8, "progress": False}


@pytest.fixture(scope="module")
def parts(demo_scope_parts):
    gm, sae = demo_scope_parts
    stats = FeatureStats.cached(gm, sae)
    assert stats is not None  # load_default scans them
    labels = FeatureLabels(gm, sae, stats)
    held = labels.held_out()
    good, few = [], None
    for f in range(64):
        on, off = held_out_contexts(held, f)
        if len(on) >= 2 * MIN_ACTIVATING and len(off) >= 2 * MIN_NON_ACTIVATING and len(good) < 2:
            good.append(f)
        elif 0 < len(on) < MIN_ACTIVATING and few is None:
            few = f
    assert len(good) == 2 and few is not None
    return gm, sae, stats, labels, held, good, few


class _Forwards:
    """Counts the decoder's forwards; ``stop_when`` raises KeyboardInterrupt at a forward once it is true."""

    def __init__(self, gm, stop_when=None):
        self.n = 0
        self.stop_when = stop_when
        self.handle = gm.text_model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if self.stop_when is not None and self.stop_when():
            raise KeyboardInterrupt
        self.n += 1

    def remove(self):
        self.handle.remove()


@pytest.fixture(scope="module")
def runs(parts, tmp_path_factory):
    """A: interrupted once the first feature is cached; B: the same call, resumed; C: again (all cached)."""
    gm, _, _, labels, _, (f1, f2), _ = parts
    root = tmp_path_factory.mktemp("explanations")
    done = lambda: bool(glob.glob(str(root / "*" / f"{f1}.json")))  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter = _Forwards(gm, stop_when=done)
        try:
            with pytest.raises(KeyboardInterrupt):
                explain(labels, [f1, f2], gm, cache=root, **SETTINGS)
        finally:
            counter.remove()
        assert not glob.glob(str(root / "*" / f"{f2}.json"))
        counter = _Forwards(gm)
        try:
            b = explain(labels, [f1, f2], gm, cache=root, **SETTINGS)
        finally:
            counter.remove()
        forwards_b = counter.n
        counter = _Forwards(gm)
        try:
            c = explain(labels, [f1, f2], gm, cache=root, **SETTINGS)
        finally:
            counter.remove()
    warned = [w for w in caught if issubclass(w.category, BaseExplainerWarning)]
    return b, forwards_b, c, counter.n, warned


def _hand_balanced_accuracy(contexts):
    pos = [c for c in contexts if c.activating]
    neg = [c for c in contexts if not c.activating]
    said = lambda c: c.p_one / (c.p_one + c.p_zero) > 0.5  # noqa: E731
    return 0.5 * (sum(said(c) for c in pos) / len(pos) + sum(not said(c) for c in neg) / len(neg))


def test_balanced_accuracy_equals_a_hand_computation(runs, parts):
    b = runs[0]
    for e in b.values():
        for result in (e.detection, e.fuzzing):
            assert len(result.contexts) == SETTINGS["n_test"] + SETTINGS["n_non"]
            assert result.balanced_accuracy == pytest.approx(_hand_balanced_accuracy(result.contexts), abs=1e-12)
            for c in result.contexts:
                assert c.probability == pytest.approx(c.p_one / (c.p_one + c.p_zero))
                assert 0 < c.p_one < 1 and 0 < c.p_zero < 1
        assert e.scores == {f"detection ({e.scorer})": e.detection.balanced_accuracy,
                            f"fuzzing ({e.scorer})": e.fuzzing.balanced_accuracy}


def test_probabilities_equal_a_plain_forward_of_the_whole_prompt(runs, parts):
    """The prefix cache, the batching and the right padding change nothing: P("1"), P("0") as one prompt alone."""
    gm = parts[0]
    e = next(iter(runs[0].values()))
    one, zero = (gm.tokenizer(s, add_special_tokens=False)["input_ids"][0] for s in ("1", "0"))
    for result in (e.fuzzing,):
        c = result.contexts[-1]  # the last of a padded batch
        ids = chat_ids(gm, scorer_messages(result.method, e.text, c.text), "[")
        with torch.inference_mode():
            probs = torch.softmax(gm.model(torch.tensor([ids])).logits[0, -1].float(), -1)
        assert float(probs[one]) == pytest.approx(c.p_one, abs=2e-4)
        assert float(probs[zero]) == pytest.approx(c.p_zero, abs=2e-4)


def test_activating_contexts_span_the_deciles(runs, parts):
    """Against held-out documents re-tokenised here (in the held-out pass's order: by length, then index): each
    activating context's decile is its document's rank by
    peak // (activating documents // deciles), one per decile; non-activating ones come from documents where the
    feature never fires."""
    gm, _, _, _, held, _, _ = parts
    lengths = [len(d) - 1 for d in tokenize_docs(gm, label_texts(), MAX_DOC_TOKENS)]  # <bos> is not scored
    lengths = [lengths[i] for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i))]  # the pass's order
    assert sum(lengths) == held.n_tokens
    starts = [sum(lengths[:i]) for i in range(len(lengths) + 1)]
    for f, e in runs[0].items():
        a = held.activations(f)
        peaks = {d: float(a[starts[d] : starts[d + 1]].max()) for d in range(len(lengths)) if lengths[d]}
        ranked = sorted((d for d in peaks if peaks[d] > 0), key=lambda d: (-peaks[d], d))
        size = len(ranked) // SETTINGS["deciles"]
        for result in (e.detection, e.fuzzing):
            on = [c for c in result.contexts if c.activating]
            assert sorted(c.decile for c in on) == list(range(SETTINGS["deciles"]))
            for c in on:
                assert c.decile == ranked.index(c.doc) // size
                assert c.peak == pytest.approx(peaks[c.doc])
            for c in result.contexts:
                if not c.activating:
                    assert peaks[c.doc] == 0 and c.decile is None


def _in_order(pieces, text):
    """Whether ``pieces`` occur in ``text`` one after another (marks or other text may sit between them)."""
    at = 0
    for piece in pieces:
        at = text.find(piece, at)
        if at < 0:
            return False
        at += len(piece)
    return True


def test_no_scored_context_was_shown_to_the_explainer(runs, parts):
    stats = parts[2]
    for f, e in runs[0].items():
        shown = stats.examples(f, kind="top", count=SETTINGS["n_explain"])
        assert e.shown_docs == [ex.doc for ex in shown]
        body = e.prompt[e.prompt.rindex("<start_of_turn>user"):]  # the feature's own turn, after the few-shot ones
        for ex in shown:  # what the explainer saw: every token of each top example, in order
            assert _in_order([t for t in ex.tokens if t.strip()], body)
        texts = ["".join(ex.tokens).strip() for ex in shown]
        for c in e.detection.contexts:  # the scored ones (plain text) are none of them, nor part of one
            assert c.text.strip()
            assert all(c.text.strip() not in t and t not in c.text for t in texts)


def test_cache_and_resume(runs, parts):
    b, forwards_b, c, forwards_c, warned = runs
    f1, f2 = parts[5]
    assert b[f1].cached and not b[f2].cached  # the interrupted run kept f1; the resumed one made only f2
    assert forwards_b > 0 and forwards_c == 0
    assert all(c[f].cached for f in (f1, f2))
    for f in (f1, f2):
        assert c[f].text == b[f].text and c[f].scores == b[f].scores
        assert c[f].detection.contexts == b[f].detection.contexts
    assert b[f2].prefills == 1 + b[f2].detection.prefills + b[f2].fuzzing.prefills
    assert len(warned) == 1  # the base explainer, warned once over three calls


def test_explanations_become_labels_with_their_scores(runs, parts):
    gm, sae, stats, labels, *_ = parts
    for f, e in runs[0].items():
        assert labels.labels([f])[f] == (e.text or labels.auto(f))
        if e.text:
            score = labels.scores([f], compute=False, progress=False)[f]
            assert score.source == "explainer (google/gemma-3-270m)" and score.imported == e.scores
            assert FeatureCards(gm, sae, stats, labels=labels).card(f).info.explanation == e.text


def test_bad_input(parts, tmp_path):
    gm, _, _, labels, _, _, few = parts
    with pytest.raises(ExplainError, match="No features"):
        explain(labels, [], gm)
    with pytest.raises(ExplainError, match="n_test"):
        explain(labels, [few], gm, n_test=3, deciles=10)
    with pytest.raises(ExplainError, match="load_model"):
        explain(labels, [few], "gemma-3-1b-it")
    counter = _Forwards(gm)
    try:
        result = explain(labels, [few], gm, cache=tmp_path, **SETTINGS)
    finally:
        counter.remove()
    assert len(result) == 0 and "too few" in result.skipped[few] and counter.n == 0
    workspace = Workspace(gm, parts[1])  # a Workspace (or a Scope) is a source too: its labels of that SAE
    assert "too few" in explain(workspace, few, gm, cache=tmp_path, **SETTINGS).skipped[few]
