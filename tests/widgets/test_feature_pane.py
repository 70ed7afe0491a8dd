"""FeaturePane (Python side): every section is filled from the real backend, actions go through messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from gemscope_widgets.backend.stats.holder import StatsHolder
from gemscope_widgets.errors import FeatureIndexError
from gemscope_widgets.scope import Scope
from gemscope_widgets.widgets.feature_pane import FeaturePane
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae
from tests.helpers import SCAN_CORPUS as CORPUS
from tests.helpers import SCAN_PARAMS as PARAMS


def f32(view: bytes) -> np.ndarray:
    return np.frombuffer(view, dtype="<f4")


@pytest.fixture(scope="module")
def pane_sae(tmp_path_factory):
    folder = write_gemma_scope_sae(
        tmp_path_factory.mktemp("pane_sae") / "resid_post/layer_1_width_16k_l0_medium",
        kind="sae", site="resid_post", layer=1, width=48, seed=7, threshold=0.3,
    )
    return load_sae_folder(folder)


@pytest.fixture(scope="module")
def pane_stats(tiny_model, pane_sae, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEMSCOPE_CACHE", str(tmp_path_factory.mktemp("pane_cache")))
        return FeatureStats.scan(tiny_model, pane_sae, CORPUS, cache=False, progress=False, **PARAMS)


@pytest.fixture(scope="module")
def busy_feature(pane_stats) -> int:
    """A feature with more examples than one page, so paging has somewhere to go."""
    counts = [pane_stats.n_examples(f) for f in range(pane_stats.width)]
    return int(np.argmax(counts))


def reference_logits(gm, sae, f, k):
    direction = sae.w_dec[f].float() * (1 + gm.final_norm.weight.float())
    logits = gm.lm_head.weight.float() @ direction
    return torch.topk(logits, k).values.tolist(), torch.topk(-logits, k).values.neg().tolist()


def test_pane_shows_scan_statistics(tiny_model, pane_sae, pane_stats, busy_feature):
    f = busy_feature
    pane = FeaturePane(tiny_model, pane_sae, pane_stats, feature=f, page_size=3)
    assert pane.feature == f
    assert pane.info["density"] == pytest.approx(float(pane_stats.density[f]))
    assert pane.info["max_act"] == pytest.approx(float(pane_stats.max_act[f]))
    assert pane.info["url"] == ""  # a local tiny SAE has no Neuronpedia page
    assert pane.info["dictionary"] == "SAE"
    edges, counts = pane_stats.histogram(f)
    np.testing.assert_allclose(f32(pane.histogram["edges"]), edges, rtol=1e-6)
    np.testing.assert_array_equal(f32(pane.histogram["counts"]), counts)

    page = pane.examples
    assert page["total"] == pane_stats.n_examples(f) > 3
    expected = pane_stats.examples(f, start=0, count=3)
    assert [item["tokens"] for item in page["items"]] == [e.tokens for e in expected]
    for item, ex in zip(page["items"], expected):
        assert isinstance(item["values"], bytes)  # binary buffer, not a JSON float list
        np.testing.assert_allclose(f32(item["values"]), ex.values, rtol=1e-6)
        assert item["peak"] == ex.peak and item["value"] == pytest.approx(ex.value)
    assert pane.quantiles["total"] == pane_stats.n_examples(f, "quantile")

    top, bottom = reference_logits(tiny_model, pane_sae, f, pane.logits_k)
    np.testing.assert_allclose([v for _, v in pane.logits["top"]], top, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([v for _, v in pane.logits["bottom"]], bottom, rtol=1e-4, atol=1e-5)

    w = pane_sae.w_dec.float()
    cos = torch.nn.functional.normalize(w, dim=1) @ torch.nn.functional.normalize(w[f], dim=0)
    cos[f] = -2
    decoder = [r for r in pane.related if r["kind"] == "decoder"]
    assert decoder[0]["feature"] == int(cos.argmax())
    assert decoder[0]["score"] == pytest.approx(float(cos.max()), abs=1e-5)
    assert all(r["feature"] != f for r in pane.related)


def test_paging_and_related_click_through_messages(tiny_model, pane_sae, pane_stats, busy_feature):
    f = busy_feature
    pane = FeaturePane(tiny_model, pane_sae, pane_stats, feature=f, page_size=2)
    pane._on_custom_msg(pane, {"type": "page", "kind": "top", "start": 2}, [])
    assert pane.examples["start"] == 2
    assert [i["tokens"] for i in pane.examples["items"]] == [e.tokens for e in pane_stats.examples(f, start=2, count=2)]
    other = pane.related[0]["feature"]
    pane_stats.label(other, "a label set by the user")
    pane._on_custom_msg(pane, {"type": "open", "feature": other}, [])
    assert pane.feature == other
    assert pane.info["explanation"] == "a label set by the user"
    assert pane.examples["start"] == 0
    pane._on_custom_msg(pane, {"type": "open", "feature": 10_000}, [])
    assert pane.feature == other and "10000" in pane.error
    with pytest.raises(FeatureIndexError):
        pane.show(-1)


def test_test_your_own_text(tiny_model, pane_sae, pane_stats, busy_feature):
    pane = FeaturePane(tiny_model, pane_sae, pane_stats, feature=busy_feature)
    text = "The capital of France is Paris."
    pane._on_custom_msg(pane, {"type": "test", "text": text}, [])
    ref = prompt_features(tiny_model, [pane_sae], text)[0]
    assert pane.test["tokens"] == list(ref.prompt.tokens)
    np.testing.assert_allclose(f32(pane.test["values"]), ref.dense()[:, busy_feature].numpy(), rtol=1e-5)
    assert f32(pane.test["values"]).max() > 0 or ref.dense()[:, busy_feature].max() == 0
    pane.test_text("")
    assert pane.test["error"] and pane.test["tokens"] == []


def test_missing_statistics_show_logits_and_the_scan_fills_them(tiny_model, pane_sae, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path / "cache"))
    pane = FeaturePane(tiny_model, pane_sae, None, feature=3, corpus=CORPUS)
    assert pane.info["source"] == "" and pane.examples["total"] == 0 and pane.histogram == {}
    assert len(pane.logits["top"]) == pane.logits_k
    seen = []
    pane.observe(lambda change: seen.append(dict(change["new"])), names="scan")
    pane.run_scan(wait=True, **PARAMS)
    assert pane.scan["state"] == "done", pane.scan
    running = [s for s in seen if s["state"] == "running" and s["total"]]
    assert running and running[-1]["done"] == running[-1]["total"] == len(CORPUS)
    assert pane.stats is not None and pane.info["source"] == "scan"
    assert pane.examples["total"] == pane.stats.n_examples(3)


def test_scope_feature_and_steer_button(tiny_model, pane_sae, pane_stats):
    scope = Scope(tiny_model, pane_sae, check=False)
    scope.stats_holder().set(pane_stats)
    pane = scope.feature(5)
    assert pane.stats is pane_stats and pane.feature == 5
    assert not pane.can_steer
    got = []
    pane.on_steer(got.append)
    assert pane.can_steer
    pane._on_custom_msg(pane, {"type": "steer"}, [])
    assert got == [5]


def test_custom_messages_do_not_shadow_the_comm_handler():
    import ipywidgets

    # The browser's messages reach Python through Widget._handle_msg; the pane's handler must not replace it.
    assert FeaturePane._handle_msg is ipywidgets.Widget._handle_msg


def test_the_scan_runs_as_the_holders_job_shared_cancellable_and_its_failure_shown(
        tiny_model, pane_sae, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path / "cache"))
    holder = StatsHolder(tiny_model, pane_sae)
    pane, other = (FeaturePane(tiny_model, pane_sae, holder=holder, feature=f, corpus=CORPUS) for f in (3, 4))

    pane.run_scan(corpus=123, wait=True)  # a bad corpus: the short error, in the pane
    assert pane.scan["state"] == "error" and "Cannot use a int as a corpus" in pane.scan["message"]

    def cancel_after_first_batch(change):
        if change["new"]["state"] == "running" and change["new"]["done"]:
            holder.jobs.cancel("scan")

    pane.observe(cancel_after_first_batch, names="scan")
    job = pane.run_scan(wait=True, batch_size=2, **PARAMS)
    assert job.state == "cancelled" and pane.scan["state"] == "idle" and "cancelled" in pane.scan["message"]
    assert holder.stats is None and pane.info["source"] == ""
    pane.unobserve(cancel_after_first_batch, names="scan")

    job = pane.run_scan(batch_size=2, **PARAMS)
    assert other.run_scan() is job  # a second pane follows the running scan instead of starting another
    job.wait(120)
    assert pane.scan["state"] == other.scan["state"] == "done"
    assert pane.info["source"] == other.info["source"] == "scan" and other.stats is holder.stats
