"""Every widget's mime bundle carries a script-free ``text/html`` rendering of what its view shows, with all
model and token text escaped (the fallback a notebook saved without widget state shows)."""

from __future__ import annotations

from html import escape as html_escape

import numpy as np
import pytest

from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.scope import Scope
from gemscope_widgets.widgets.heatmap import Heatmap
from gemscope_widgets.widgets.payload import PromptView, encode_payload, format_value
from gemscope_widgets.widgets.static_html import heat_style
from gemscope_widgets.widgets.token_view import TokenView
from tests.helpers import static_of

XSS = '<img src=x onerror="alert(1)">'


class _Sparse:
    """The shape encode_payload reads from a backend SparseActivations."""

    def __init__(self, dense: np.ndarray) -> None:
        rows, cols = np.nonzero(dense)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))])
        self.indices, self.values = cols, dense[rows, cols]
        self.width, self.sae_name = dense.shape[1], "layer_1/<b>sae</b>"


def test_heatmap_static_view_shades_the_selected_feature_and_escapes_tokens():
    tokens = ["<bos>", "Paris", XSS, "\n"]
    dense = np.zeros((4, 6), dtype=np.float32)
    dense[1, 2], dense[2, 2], dense[2, 5] = 1.0, 4.0, 2.0
    header, data = encode_payload([PromptView(tokens, [True, False, False, False], [True, False, False, False])],
                                  [[_Sparse(dense)]])
    widget = Heatmap(header, data, top_n=5)
    widget.select(prompt=0, token=2, feature=2)
    html = static_of(widget)
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert "layer_1/&lt;b&gt;sae&lt;/b&gt;" in html and "coloured by feature #2" in html
    # Token 2 carries feature 2's maximum: the strongest shade; token 1 a quarter of it.
    assert heat_style(1.0) in html and heat_style(0.25) in html
    assert f'title="#5 = {format_value(2.0)}"' in html  # grid cells: every top feature is a column
    assert "↵" in html


def test_token_view_static_view():
    html = static_of(TokenView(["<bos>", XSS, " there"], special=[True, False, False], selected_token=1))
    assert "&lt;img" in html and "there" in html and "underline" in html


@pytest.fixture(scope="module")
def scope(tiny_model, gemma_scope_folders):
    return Scope(tiny_model, load_sae_folder(gemma_scope_folders["resid_post"]))


def test_feature_pane_static_view(scope):
    pane = scope.feature(3)
    pane.logits = {"top": [[XSS, 1.5]], "bottom": [["</div><script>x()</script>", -1.0]]}
    pane.info = {**pane.info, "explanation": XSS, "density": 0.0123, "n_tokens": 1000}
    html = static_of(pane)
    assert "Feature 3" in html and "Promotes" in html and "Suppresses" in html
    assert "fires on 1.23% of 1,000 tokens" in html
    assert "&lt;/div&gt;&lt;script&gt;" in html and html.count("<div") == html.count("</div>")


def test_steer_static_view_shows_both_texts(scope):
    w = scope.steer("The quick brown " + XSS, {3: 2.0}, max_new_tokens=4, stop_at_eos=False)
    try:
        w.wait()
        html = static_of(w)
    finally:
        w.close()
    assert "baseline" in html and "steered" in html and "#3 · add · all · 2× = " in html
    for token in w.steered_tokens + w.baseline_tokens + w.prompt_tokens:
        assert (token.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
                .replace("'", "&#x27;").replace("\n", "↵\n")) in html


SCRIPT = "</div><script>alert(1)</script>"


def _escaped(token: str) -> str:
    return (token.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("'", "&#x27;").replace("\n", "↵\n"))


def test_chat_static_view_escapes_messages(scope):
    import warnings

    conv = [{"role": "system", "content": SCRIPT}, {"role": "user", "content": "Hi " + XSS},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": SCRIPT}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chat = scope.chat(conv, features=[3])
    html = static_of(chat)
    assert "Conversation" in html and "coloured by feature #3" in html and "base model" in html
    assert "<script" not in html and "<img" not in html
    assert "system (folded into the first user turn): &lt;/div&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<div") == html.count("</div>")  # the message's </div> did not close anything
    assert [line for line in html.split("<b>") if line.startswith(("user", "model"))]
    assert "strongest: #" in html  # each turn's summary
    for token in chat._view["tokens"]:
        assert _escaped(token) in html


def test_contrast_static_view_escapes_prompts_and_lists_features(scope):
    panel = scope.contrast("The fox " + XSS, "The dog " + SCRIPT, span="all", k=5)
    html = static_of(panel.view)
    rows = panel.view._view["rows"]
    assert "Contrast" in html and f"coloured by feature #{rows[0]['feature']}" in html
    assert "<script" not in html and "<img" not in html
    for token in panel.view._view["a"]["tokens"] + panel.view._view["b"]["tokens"]:
        assert _escaped(token) in html
    assert html.count("<tr>") == len(rows) + 1 and html.count("<div") == html.count("</div>")
    assert all(html_escape(r["label"]) in html for r in rows)  # each feature's label, as text
    panel.view.selected_feature = rows[1]["feature"]
    html = static_of(panel)
    assert f"coloured by feature #{rows[1]['feature']}" in html and f"Feature {rows[1]['feature']}" in html


def test_feature_pane_static_view_words_the_label_as_the_live_pane(scope):
    """The pane's label line as ``js/feature_pane.ts`` words it: the explanation, else "Automatic label: …"."""
    pane = scope.feature(3)
    label = pane.info.get("label") or ""
    assert label, "the tiny SAE's feature has an automatic label"
    pane.info = {**pane.info, "explanation": ""}
    html = static_of(pane)
    assert f"<div>{html_escape('Automatic label: ' + label)}</div>" in html and "No explanation yet." not in html
    pane.info = {**pane.info, "label": XSS}
    assert f"Automatic label: {html_escape(XSS)}" in static_of(pane)
    pane.info = {**pane.info, "label": "", "explanation": "", "sae": ""}
    html = static_of(pane)
    assert "No explanation yet." in html
    assert f'<div style="opacity:.8;font-size:.9em">{pane.info["width"]} features</div>' in html  # no " · " first


def test_static_views_say_they_are_a_saved_copy_of_the_current_state(scope):
    """Rendered now (what the display shows or would be updated with): the pane's current feature, and a line
    saying later changes in the live view are not in the copy."""
    pane = scope.feature(3)
    pane.show(5)
    html = static_of(pane)
    assert "Feature 5" in html and "Feature 3" not in html
    assert "later changes in the live view are not in this copy" in html


def test_steer_static_view_says_a_running_generation_is_partial(scope):
    w = scope.steer("The quick brown", {3: 2.0}, max_new_tokens=4, stop_at_eos=False)
    try:
        w.wait()
        done = static_of(w)
        assert "partial" not in done and "still running" not in done
        w.set_strength(3, 0.5)
        w.wait()
        assert "#3 · add · all · 0.5× = " in static_of(w)
        # Caught mid-generation (the traits the session writes while tokens stream in).
        with w.hold_trait_notifications():
            w.running, w.status = True, "generating… 2/4"
        html = static_of(w)
    finally:
        w.close()
    assert "The generation was still running when this copy was made: what follows is partial" in html
    assert "<b>steered (partial)</b>" in html and "<b>baseline (partial)</b>" in html
