"""One rule for special tokens: every <bos>/<pad> position of a document is left out of the scan, as in the heatmap."""

from __future__ import annotations

import torch

from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.gemma.prompts import masked_ids
from gemscope_widgets.backend.stats.corpus import tokenize_docs
from gemscope_widgets.backend.stats.feature_stats import FeatureStats

MID_BOS = "The quick brown fox jumps over<bos> the lazy dog, and the capital of France is Paris."


def test_literal_special_text_in_a_document_is_parsed_like_a_prompt(tiny_model):
    doc = tokenize_docs(tiny_model, [MID_BOS], 128)[0]
    prompt = tiny_model.prompt(MID_BOS)
    assert doc == prompt.input_ids.tolist()
    bos = tiny_model.tokenizer.bos_token_id
    assert doc[0] == bos and bos in doc[1:], "the literal <bos> is the control token, as in a prompt"
    assert prompt.masked.tolist() == [t in masked_ids(tiny_model.tokenizer) for t in doc]


def test_scan_max_equals_the_heatmaps_masked_column_max(tiny_model, scan_sae, stats_cache):
    prompt = tiny_model.prompt(MID_BOS)
    mid = [i for i, t in enumerate(prompt.input_ids.tolist()) if i > 0 and t == tiny_model.tokenizer.bos_token_id]
    heat = prompt_features(tiny_model, [scan_sae], prompt)[0].dense()  # what the heatmap shows
    column_max = heat.max(0).values
    # The mid-text <bos> fires features above their maximum elsewhere: an unmasked scan would report them.
    hook = scan_sae.config.hook_in
    raw = scan_sae.encode(capture(tiny_model, prompt.input_ids, [hook])[hook][0])
    assert (raw[mid].max(0).values > column_max).any()

    stats = FeatureStats.scan(tiny_model, scan_sae, [MID_BOS], cache=False, progress=False, max_doc_tokens=128,
                              top_k=3, n_quantile=2)
    torch.testing.assert_close(stats.max_act, column_max, rtol=1e-5, atol=1e-6)
    assert stats.n_tokens == int((~prompt.masked).sum())
    hidden = masked_ids(tiny_model.tokenizer)
    ids = prompt.input_ids.tolist()
    n_examples = 0
    for f in range(scan_sae.width):
        for kind in ("top", "quantile"):
            for ex in stats.examples(f, kind=kind, count=10):
                n_examples += 1
                assert ids[ex.position] not in hidden, (f, kind, ex.position)
                assert ex.value == float(column_max[f]) or kind == "quantile"
    assert n_examples > 0


def test_mid_text_bos_in_a_batched_corpus(tiny_model, scan_sae, stats_cache, scan_corpus):
    """Padded batches with several documents: no statistic or example sits on a masked position."""
    corpus = [*scan_corpus, MID_BOS]
    stats = FeatureStats.scan(tiny_model, scan_sae, corpus, cache=False, progress=False, batch_size=4,
                              max_doc_tokens=128)
    docs = tokenize_docs(tiny_model, corpus, 128)
    hidden = masked_ids(tiny_model.tokenizer)
    assert stats.n_tokens == sum(sum(t not in hidden for t in d) for d in docs)
    for f in range(scan_sae.width):
        for ex in stats.examples(f, count=100) + stats.examples(f, kind="quantile", count=100):
            assert docs[ex.doc][ex.position] not in hidden
