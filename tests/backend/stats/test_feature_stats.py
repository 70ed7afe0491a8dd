"""FeatureStats: the streaming scan against a brute-force dense computation, caching, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.stats.corpus import tokenize_docs
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from gemscope_widgets.backend.stats.scan_state import reservoir_key as _reservoir_key
from gemscope_widgets.errors import FeatureIndexError, StatsCacheError
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae
from tests.helpers import SCAN_CORPUS

# The shared scan corpus plus documents with quotes, tabs and newlines, and a repeated code fragment.
CORPUS = [
    *SCAN_CORPUS,
    "quotes 'single' and \"double\" & tabs\tand newlines\nhere",
    "return fibonacci(n - 1) + fibonacci(n - 2) is recursion.",
    "A language model reads the text one token at a time.",
]
PARAMS = {"top_k": 4, "n_quantile": 3, "window": (3, 2), "max_doc_tokens": 24, "n_bins": 8}


@pytest.fixture(scope="module")
def stats_sae(tmp_path_factory):
    folder = write_gemma_scope_sae(
        tmp_path_factory.mktemp("stats_sae") / "resid_post/layer_1_width_16k_l0_medium",
        kind="sae", site="resid_post", layer=1, width=96, seed=3, threshold=0.3,
    )
    return load_sae_folder(folder)


@pytest.fixture
def stats_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def brute_force(gm, sae, texts, top_k, n_quantile, window, max_doc_tokens, n_bins):
    """Every activation of every document, kept densely; then the statistics by definition."""
    before, after = window
    docs = tokenize_docs(gm, texts, max_doc_tokens)
    hook = sae.config.hook_in
    per_doc = []
    for ids in docs:
        x = capture(gm, torch.tensor(ids), [hook])[hook][0]
        acts = sae.encode(x)
        acts[0] = 0.0  # <bos>
        per_doc.append(acts)
    allacts = torch.cat([a[1:] for a in per_doc])
    out = {"n_tokens": allacts.shape[0], "n_fired": (allacts > 0).sum(0), "max": allacts.max(0).values}
    hists = {}
    for f in range(sae.width):
        nz = allacts[:, f][allacts[:, f] > 0].double()
        if nz.numel():
            e = math.frexp(float(nz.max()) / n_bins)[1]
            bins = torch.floor(nz / 2.0**e).long()
            hists[f] = (np.arange(n_bins + 1) * 2.0**e, torch.bincount(bins, minlength=n_bins).numpy())
    out["hist"] = hists
    entries = {f: [] for f in range(sae.width)}
    for d, acts in enumerate(per_doc):
        peak, where = acts.max(0)
        for f in range(sae.width):
            if peak[f] > 0:
                p = int(where[f])
                lo, hi = max(0, p - before), min(len(docs[d]), p + after + 1)
                entries[f].append((float(peak[f]), d, p, acts[lo:hi, f].tolist()))
    out["top"] = {f: sorted(es, key=lambda e: (-e[0], e[1]))[:top_k] for f, es in entries.items()}
    out["quantile"] = {}
    for f, es in entries.items():
        keyed = [(float(_reservoir_key(torch.tensor(e[1]), torch.tensor(f))), e) for e in es]
        chosen = [e for _, e in sorted(keyed, key=lambda t: (-t[0], t[1][1]))[:n_quantile]]
        out["quantile"][f] = sorted(chosen, key=lambda e: -e[0])  # shown by value
    return out


def assert_matches(stats, ref, texts, sae):
    assert stats.n_tokens == ref["n_tokens"]
    torch.testing.assert_close(stats.density, ref["n_fired"].float() / ref["n_tokens"])
    torch.testing.assert_close(stats.max_act, ref["max"], rtol=1e-5, atol=1e-6)
    fired = 0
    for f in range(sae.width):
        h = stats.histogram(f)
        if f in ref["hist"]:
            fired += 1
            np.testing.assert_array_equal(h[1], ref["hist"][f][1])
            np.testing.assert_allclose(h[0], ref["hist"][f][0])
            assert h[1].sum() == int(ref["n_fired"][f])
        else:
            assert h is None
        for kind in ("top", "quantile"):
            want = ref[kind][f]
            got = stats.examples(f, kind=kind, count=100)
            assert stats.n_examples(f, kind) == len(want)
            assert [(e.doc, e.position) for e in got] == [(d, p) for _, d, p, _ in want], (f, kind)
            for e, (value, _, _, window) in zip(got, want, strict=True):
                assert e.value == pytest.approx(value, rel=1e-5)
                assert e.values == pytest.approx(window, rel=2e-3, abs=1e-3)  # float16 storage
                assert e.values[e.peak] == pytest.approx(value, rel=2e-3)
                assert len(e.tokens) == len(e.values)
    assert fired > 10, "the test SAE should fire on most features"


@pytest.mark.parametrize("batch_size", [1, 4])
def test_scan_equals_brute_force(tiny_model, stats_sae, stats_cache, batch_size):
    stats = FeatureStats.scan(tiny_model, stats_sae, CORPUS, batch_size=batch_size, cache=False,
                              progress=False, **PARAMS)
    ref = brute_force(tiny_model, stats_sae, CORPUS, **{**PARAMS})
    assert_matches(stats, ref, CORPUS, stats_sae)
    # Token strings of the window are the document's own tokens.
    f = int(torch.argmax(stats.density))
    ex = stats.examples(f)[0]
    prompt = tiny_model.prompt(CORPUS[ex.doc])
    assert ex.tokens[ex.peak] == prompt.tokens[ex.position]


def test_small_act_budget_and_streamed_blocks_agree(tiny_model, stats_sae, stats_cache):
    """Row-chunked SAE passes and tiny checkpoint blocks change nothing."""
    a = FeatureStats.scan(tiny_model, stats_sae, CORPUS, cache=False, progress=False, **PARAMS)
    b = FeatureStats.scan(tiny_model, stats_sae, CORPUS, cache=False, progress=False, act_budget=1,
                          checkpoint_docs=2, batch_size=3, **PARAMS)
    for kind in ("top", "quantile"):
        assert torch.equal(a._tensors[f"{kind}_doc"], b._tensors[f"{kind}_doc"])
    torch.testing.assert_close(a.max_act, b.max_act)


def test_cache_hit_never_runs_the_model(tiny_model, stats_sae, stats_cache, monkeypatch):
    first = FeatureStats.load_or_scan(tiny_model, stats_sae, CORPUS, progress=False, **PARAMS)
    first.label(5, "fox detector")

    def boom(*args, **kwargs):
        raise AssertionError("the model ran on a cache hit")

    monkeypatch.setattr(tiny_model.text_model, "forward", boom)
    second = FeatureStats.load_or_scan(tiny_model, stats_sae, CORPUS, progress=False, **PARAMS)
    torch.testing.assert_close(second.density, first.density)
    assert second.explanation(5) == "fox detector"
    f = int(torch.argmax(first.density))
    assert [e.tokens for e in second.examples(f)] == [e.tokens for e in first.examples(f)]
    # Another corpus is a miss: it must try to run the model.
    with pytest.raises(AssertionError, match="model ran"):
        FeatureStats.load_or_scan(tiny_model, stats_sae, [*CORPUS, "one more text"], progress=False, **PARAMS)


def _damage_json(folder):
    (folder / "stats.json").write_text("{not json")


def _drop_tensor(folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "stats.safetensors"))
    del tensors["top_window"]
    save_file(tensors, str(folder / "stats.safetensors"))


def _wrong_width(folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "stats.safetensors"))
    tensors["density"] = tensors["density"][:-1].clone()
    save_file(tensors, str(folder / "stats.safetensors"))


def _wrong_fingerprint(folder):
    meta = json.loads((folder / "stats.json").read_text())
    meta["key"]["corpus"] = "0" * 32
    (folder / "stats.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [_damage_json, _drop_tensor, _wrong_width, _wrong_fingerprint])
def test_damaged_cache_is_detected_and_rebuilt(tiny_model, stats_sae, stats_cache, damage):
    good = FeatureStats.load_or_scan(tiny_model, stats_sae, CORPUS, progress=False, **PARAMS)
    folder = good._path
    damage(folder)
    with pytest.raises(StatsCacheError):
        FeatureStats.load(folder, expect=good.meta["key"])
    with pytest.warns(UserWarning, match="Rebuilding"):
        rebuilt = FeatureStats.load_or_scan(tiny_model, stats_sae, CORPUS, progress=False, **PARAMS)
    torch.testing.assert_close(rebuilt.density, good.density)
    assert torch.equal(rebuilt._tensors["top_window"], good._tensors["top_window"])
    FeatureStats.load(folder, expect=good.meta["key"])  # the rebuilt cache is sound again


def test_interrupted_scan_resumes_to_the_same_result(tiny_model, stats_sae, stats_cache, monkeypatch):
    from gemscope_widgets.backend.stats import scan as stats_mod

    full = FeatureStats.scan(tiny_model, stats_sae, CORPUS, cache=False, progress=False, **PARAMS)
    real_batch = stats_mod.Scanner.batch
    seen: list[int] = []

    def failing(self, doc_ids, docs):
        if min(doc_ids) >= 6:
            raise KeyboardInterrupt
        seen.extend(doc_ids)
        return real_batch(self, doc_ids, docs)

    monkeypatch.setattr(stats_mod.Scanner, "batch", failing)
    with pytest.raises(KeyboardInterrupt):
        FeatureStats.scan(tiny_model, stats_sae, CORPUS, checkpoint_docs=3, progress=False, **PARAMS)
    assert sorted(seen) == list(range(6))
    resumed_docs: list[int] = []

    def counting(self, doc_ids, docs):
        resumed_docs.extend(doc_ids)
        return real_batch(self, doc_ids, docs)

    monkeypatch.setattr(stats_mod.Scanner, "batch", counting)
    resumed = FeatureStats.scan(tiny_model, stats_sae, CORPUS, checkpoint_docs=3, progress=False, **PARAMS)
    assert sorted(resumed_docs) == list(range(6, len(CORPUS)))  # the done documents were skipped
    assert resumed.n_tokens == full.n_tokens
    torch.testing.assert_close(resumed.density, full.density)
    for name, tensor in full._tensors.items():
        assert torch.equal(resumed._tensors[name], tensor), name
    assert not (resumed._path / "checkpoint.json").exists()


def test_quantile_examples_span_below_the_max(tiny_model, stats_sae, stats_cache):
    stats = FeatureStats.scan(tiny_model, stats_sae, CORPUS, cache=False, progress=False,
                              **{**PARAMS, "n_quantile": 8})
    f = int(torch.argmax(stats.density))
    values = [e.value for e in stats.examples(f, kind="quantile", count=100)]
    assert values == sorted(values, reverse=True)
    assert min(values) < float(stats.max_act[f])


def test_related_by_coactivation_and_accessor_errors(tiny_model, stats_sae, stats_cache):
    stats = FeatureStats.scan(tiny_model, stats_sae, CORPUS, cache=False, progress=False, **PARAMS)
    f = int(torch.argmax(stats.density))
    related = stats.related_by_coactivation(f, k=5)
    assert 0 < len(related) <= 5 and f not in [g for g, _ in related]
    mine = set(stats._feature_docs(f).tolist())
    g, score = related[0]
    theirs = set(stats._feature_docs(g).tolist())
    assert score == pytest.approx(len(mine & theirs) / len(mine | theirs))
    assert all(score >= s for _, s in related)
    with pytest.raises(FeatureIndexError, match="out of range"):
        stats.examples(stats_sae.width)
    with pytest.raises(Exception, match="kind"):
        stats.examples(0, kind="bottom")


def test_imported_parts_round_trip(tmp_path):
    from gemscope_widgets.backend.stats.feature_stats import Example

    ex = Example(tokens=["a", " cat"], values=[0.0, 2.5], peak=1, value=2.5)
    stats = FeatureStats.from_parts(
        sae_name="imported", width=10, source="neuronpedia", density=torch.full((10,), 0.01),
        examples={"top": {3: [ex]}}, histograms={3: ([0.0, 1.0, 2.0], [4, 1])},
        explanations={3: "cats"}, logits={3: ([("cat", 1.5)], [("dog", -1.0)])},
    )
    stats.save(tmp_path / "s")
    back = FeatureStats.load(tmp_path / "s")
    assert back.examples(3) == [ex] and back.n_examples(3, "top") == 1 and back.examples(4) == []
    assert back.explanation(3) == "cats" and back.stored_logits(3) == ([("cat", 1.5)], [("dog", -1.0)])
    np.testing.assert_array_equal(back.histogram(3)[1], [4, 1])
    assert back.histogram(4) is None and back.max_act is None
    assert back.related_by_coactivation(3) is None
    back.label(3, "felines")
    assert FeatureStats.load(tmp_path / "s").explanation(3) == "felines"
