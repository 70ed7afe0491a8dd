"""Every list a view draws names its features with the Scope's labels: the heatmap's token list (each of its
``list_k`` rows), the steering rows and the chat chips; the text equals ``scope.labels()``, from the kernel."""

from __future__ import annotations

import warnings

import pytest
import torch

from gemscope_widgets.backend.stats.feature_stats import FeatureStats

TEXT = "Paris is the capital of France. The quick brown fox jumps over the lazy dog."


@pytest.fixture
def scope(tiny_model, gemma_scope_folders, monkeypatch):
    from gemscope_widgets.backend.dictionaries.loading import load_sae
    from gemscope_widgets.scope import Scope

    monkeypatch.setattr(tiny_model, "_warned_chat", False)
    return Scope(tiny_model, load_sae(gemma_scope_folders["resid_post"]))


def test_every_row_of_a_tokens_feature_list_has_its_label(scope):
    widget = scope.heatmap(TEXT, top_n=4, progress=False)
    labels = widget.feature_info["0"]["labels"]
    want = scope.labels()
    block = widget.payload.block(0)
    rows = 0
    for t in range(len(block.indptr) - 1):
        listed = widget.token_features(t)  # the side list, as the view draws it (list_k rows)
        assert len(listed) <= widget.list_k
        for f, _value, _label in listed:
            assert labels.get(str(f)) == want.labels([f])[f] != ""
            rows += 1
    assert rows > 5 * 5, "the prompt lists more than five features on some tokens"  # the old limit was 5 a token
    # A longer list labels the rows it adds.
    widget.list_k = 40
    labels = widget.feature_info["0"]["labels"]
    for t in range(len(block.indptr) - 1):
        assert all(str(f) in labels for f, _v, _l in widget.token_features(t))


def test_steer_rows_carry_labels_that_follow_the_statistics(scope):
    want = scope.labels()
    w = scope.steer("The quick brown fox", {3: 1.0, 5: 0.5}, max_new_tokens=2, autorun=False)
    try:
        shown = {d["feature"]: d["feature_label"] for d in w.features}
        assert shown == {3: want.labels([3])[3], 5: want.labels([5])[5]}
        w.add_feature(7)
        w.wait()
        assert [d["feature_label"] for d in w.features if d["feature"] == 7] == [want.labels([7])[7]]
        # A statistics object with an explanation: the row relabels, as every other view does.
        sae = scope.sae()
        stats = FeatureStats.from_parts(sae_name=sae.config.name, width=sae.width, source="test",
                                        density=torch.full((sae.width,), 0.01), explanations={3: "capital cities"})
        scope.stats_holder().set(stats)
        assert [d["feature_label"] for d in w.features if d["feature"] == 3] == ["capital cities"]
    finally:
        w.close()


def test_chat_chips_carry_labels(scope):
    want = scope.labels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chat = scope.chat([{"role": "user", "content": "Where is the fox?"}], features=[3], max_new_tokens=2)
    summary = [item for turn in chat._view["turns"] for item in turn["summary"]]
    assert summary
    for item in summary:
        assert item["label"] == want.labels([item["feature"]])[item["feature"]] != ""
    assert chat._view["labels"]["3"] == want.labels([3])[3]
    # A feature selected from Python, in no summary, still gets its chip's label.
    outside = next(f for f in range(scope.sae().width) if all(item["feature"] != f for item in summary) and f != 3)
    chat.select(3, outside)
    assert chat._view["labels"][str(outside)] == want.labels([outside])[outside]
