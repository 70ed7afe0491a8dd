"""The heatmap widget on the Python side: building from a Scope, selection, callbacks, static views."""

from __future__ import annotations

import base64
import html
import json
import re

import numpy as np
import pytest

from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.errors import FeatureIndexError, GemscopeError
from gemscope_widgets.scope import Scope
from gemscope_widgets.widgets.heatmap import Heatmap, heatmap, split_prompts
from gemscope_widgets.widgets.payload import format_value

XSS = "<img src=x onerror=alert(1)>"
TEXT = f"The quick brown fox {XSS} jumps over the lazy dog."
CHAT = [{"role": "user", "content": "Paris is the capital of France."}]


@pytest.fixture(scope="module")
def scope(tiny_model, gemma_scope_folders):
    return Scope(
        tiny_model,
        {"resid": load_sae(gemma_scope_folders["resid_post"]), "tc": load_sae(gemma_scope_folders["transcoder"])},
    )


@pytest.fixture(scope="module")
def widget(scope):
    return scope.heatmap([TEXT, CHAT], top_n=8, progress=False)


def test_split_prompts():
    assert split_prompts("a") == ["a"]
    assert split_prompts(CHAT) == [CHAT]
    assert split_prompts(["a", CHAT]) == ["a", CHAT]
    with pytest.raises(GemscopeError, match="No prompts"):
        split_prompts([])


def test_build_holds_every_prompt_and_sae(widget, scope, tiny_model):
    assert widget.sae_names == ["resid", "tc"]
    assert widget.payload.n_prompts == 2
    assert widget.payload.tokens(1) == tiny_model.prompt(CHAT).tokens
    assert widget.top_n == 8 and widget.rank_by == "specific"
    # Both SAEs' numbers are the backend's, to float16 precision.
    for p, prompt in enumerate([TEXT, CHAT]):
        for s, name in enumerate(widget.sae_names):
            (sparse,) = prompt_features(tiny_model, [scope.sae(name)], prompt)
            expected = sparse.dense().numpy().astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(widget.payload.block(p, s).dense(), expected)


def test_one_forward_per_prompt_for_all_saes(scope, tiny_model):
    calls = []
    handle = tiny_model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        scope.heatmap(["one prompt", "another prompt"], progress=False)
    finally:
        handle.remove()
    assert len(calls) == 2


def test_token_features_and_top_features_follow_the_backend(widget, scope, tiny_model):
    (sparse,) = prompt_features(tiny_model, [scope.sae("resid")], TEXT)
    dense = sparse.dense().numpy().astype(np.float16).astype(np.float32)
    t = int(np.argmax((dense > 0).sum(axis=1)))
    expected = sorted(np.flatnonzero(dense[t]), key=lambda f: (-dense[t, f], f))[: widget.list_k]
    listed = widget.token_features(t)
    assert [f for f, _, _ in listed] == expected
    assert [text for _, _, text in listed] == [format_value(dense[t, f]) for f in expected]

    by_max = dense.max(axis=0)
    assert widget.top_features(0) == sorted(np.flatnonzero(by_max), key=lambda f: (-by_max[f], f))[:8]
    widget.rank_by = "sum"
    try:
        by_sum = dense.astype(np.float64).sum(axis=0)
        assert widget.top_features(0) == sorted(np.flatnonzero(by_sum), key=lambda f: (-by_sum[f], f))[:8]
    finally:
        widget.rank_by = "max"


def test_selection_from_the_browser_fires_the_callback_once(widget):
    seen = []
    widget.on_select(lambda *args: seen.append(args))
    try:
        # What the front end sends on a grid cell click: three traits in one message.
        widget.set_state({"selected_prompt": 1, "selected_token": 3, "selected_feature": 7})
        assert seen == [(1, 7, 3)]
        widget.set_state({"selected_prompt": 1, "selected_token": 3, "selected_feature": 7})
        assert seen == [(1, 7, 3)], "an unchanged selection must not fire again"
        widget.select(feature=9)
        assert seen[-1] == (1, 9, 3)
        widget.sae_index = 1  # another SAE: its feature ids mean something else
        assert widget.selected_feature == -1
        assert seen[-1] == (1, -1, 3)
    finally:
        widget.sae_index = 0
        widget._callbacks.clear()
        widget.select(prompt=-1, token=-1, feature=-1)


def test_bad_settings_raise_clear_errors(widget, scope):
    with pytest.raises(GemscopeError, match="rank_by must be one of specific, max, sum"):
        widget.rank_by = "mean"
    with pytest.raises(FeatureIndexError, match="outside the SAE's 128 features"):
        widget.selected_feature = 128
    with pytest.raises(GemscopeError, match="sae_index 5"):
        widget.sae_index = 5
    with pytest.raises(GemscopeError, match="top_n must be between 1"):
        widget.top_n = 0
    with pytest.raises(GemscopeError, match="No SAE named 'nope'"):
        scope.heatmap(TEXT, sae="nope")
    with pytest.raises(GemscopeError, match="needs both model= and sae="):
        heatmap(TEXT, model=scope.model)


def test_one_off_heatmap_loads_an_sae_from_a_path(tiny_model, gemma_scope_folders):
    w = heatmap(TEXT, model=tiny_model, sae=str(gemma_scope_folders["mlp_out"]), top_n=5)
    assert isinstance(w, Heatmap)
    assert w.payload.n_prompts == 1 and len(w.sae_names) == 1
    assert len(w.top_features(0)) == 5


def test_corpus_maxima_and_top_k(scope):
    maxima = np.full(128, 1000.0, dtype=np.float32)
    w = scope.heatmap(TEXT, sae="resid", feature_max={"resid": maxima}, top_k=2, progress=False)
    present = set(np.unique(w.payload.block(0, 0).indices).tolist())
    assert w.payload.feature_max(0) == dict.fromkeys(sorted(present), 1000.0)
    assert max(np.diff(w.payload.block(0, 0).indptr.astype(int))) <= 2
    with pytest.raises(GemscopeError, match="does not show"):
        scope.heatmap(TEXT, sae="resid", feature_max={"tc": maxima})


def test_state_is_all_in_traits_and_binary(widget):
    state = widget.get_state()
    assert isinstance(state["_data"], (bytes, memoryview))
    assert len(state["_data"]) == widget.nbytes == widget._header["bytes"]
    assert {"selected_prompt", "selected_token", "selected_feature", "sae_index", "top_n", "rank_by"} <= set(state)


def test_static_fallback_and_html_export_escape_token_text(widget, tmp_path):
    bundle, _ = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    static = bundle["text/html"]
    assert "<img" not in static
    assert "<img src=x onerror=alert(1)>" in html.unescape(re.sub(r"<[^>]+>", "", static))  # shown as text
    assert "<script" not in static

    path = widget.to_html(tmp_path / "heatmap.html")
    page = path.read_text()
    assert "<img" not in page, "token text must not appear as markup in the page"
    assert "http://" not in page and "https://" not in page, "the page must not reach the network"
    state = json.loads(re.search(r'id="gs-state">(.*?)</script>', page, re.S).group(1))
    assert base64.b64decode(state["_data"]["$bytes"]) == widget._data
    assert state["_header"]["prompts"][0]["tokens"] == widget.payload.tokens(0)


def pairs(csr) -> set[tuple[int, int]]:
    """The (token, feature) pairs of a CSR block."""
    rows = np.repeat(np.arange(len(csr.indptr) - 1), np.diff(np.asarray(csr.indptr, dtype=np.int64)))
    return set(zip(rows.tolist(), np.asarray(csr.indices).tolist()))


def test_level_keeps_the_first_latents_of_the_shown_sae(scope, tiny_model):
    from gemscope_widgets.backend.analysis.matryoshka import MATRYOSHKA_KEY, first_latents, prefix_levels
    from gemscope_widgets.errors import MatryoshkaError

    w = scope.heatmap([TEXT, CHAT], top_n=8, progress=False)
    assert w.levels == [prefix_levels(scope.sae(name)) for name in w.sae_names]
    # Whether each SAE was trained nested: these are flat, so the view says their first latents are not a level.
    assert w.nested == [MATRYOSHKA_KEY in scope.sae(name).config.raw for name in w.sae_names] == [False, False]
    k = w.levels[0][1]
    full = [w.payload.block(p, 0).indices.copy() for p in range(2)]
    other = [w.payload.block(p, 1).indices.copy() for p in range(2)]
    w.level = k
    for p, prompt in enumerate([TEXT, CHAT]):
        (sparse,) = prompt_features(tiny_model, [scope.sae(w.sae_names[0])], prompt)
        cut = first_latents(sparse, k)
        block = w.payload.block(p, 0)
        assert pairs(block) == pairs(cut)  # payload rows are ordered by float16 values: compare as sets
        assert (full[p] >= k).any() and (block.indices < k).all()  # the cut removed latents that fired
        assert all(f < k for f in w.top_features(p))
        assert np.array_equal(w.payload.block(p, 1).indices, other[p])  # the other SAE is untouched
    for bad in (-1, w.levels[0][-1] + 1):
        with pytest.raises(MatryoshkaError, match="outside"):
            w.level = bad
    assert w.level == k  # a refused level leaves the view as it was
    w.sae_index = 1  # another SAE starts from all its latents
    assert w.level == 0 and np.array_equal(w.payload.block(0, 0).indices, full[0])
