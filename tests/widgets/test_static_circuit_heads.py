"""The circuit view's saved-notebook HTML carries the attention panel's content: the top heads when the head
loadings at the view's thresholds exist (never computing them itself: they cost about half an attribution), a line
saying how to include them when they do not, and every answer the live panel computed (an edge's heads, a head's
attention row and QK pairs), each the backend's numbers, every token and label escaped (tiny Gemma 3, calibrated
transcoders)."""

from __future__ import annotations

import html
import re

import pytest

from gemscope_widgets.backend.circuits.attached_state import existing_state
from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.qk import attention_row, qk_attribution
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.testing.transcoders import write_calibrated_set
from gemscope_widgets.widgets.circuit import Circuit
from gemscope_widgets.widgets.payload import format_value
from tests import helpers

PROMPT = "Paris <i>is</i> the capital of the country"


@pytest.fixture(scope="module")
def graph(tiny_model, tmp_path_factory):
    root = write_calibrated_set(tiny_model, tmp_path_factory.mktemp("static_heads"), width=128, l0=8, affine=True,
                                seed=1)
    return attribute(tiny_model, load_transcoders(root, "transcoder_all"), PROMPT, progress=False)


def attention_section(page: str) -> str:
    start = page.index("<b>Attention</b>")
    return page[start:]


def signed(v: float) -> str:
    return ("+" if v >= 0 else "") + format_value(v)


def test_static_attention_says_how_to_include_top_heads_and_starts_nothing(graph):
    view = Circuit.build(graph)
    section = attention_section(helpers.static_of(view))
    assert "Top heads not computed" in section and "graph.top_heads()" in section
    assert "<table" not in section  # no panel answers yet, no head table
    assert existing_state(graph) is None  # displaying the view ran no frozen forward


def test_static_attention_shows_top_heads_and_the_panels_answers(graph):
    view = Circuit.build(graph)
    sent: list[dict] = []
    view.send = sent.append
    loadings = graph.head_loadings(progress=False)  # at the view's default thresholds (0.8, 0.98)
    want = loadings.top(10)
    assert len(want) > 1

    last = graph.n_pos - 1
    source, target = graph.token_slice.start + 1, graph.logit_slice.start
    view._on_custom_msg(view, {"type": "edge_heads", "source": source, "target": target, "request": 1}, [])
    edge = graph.edge_heads(source, target)
    layer, head = edge.heads[0].layer, edge.heads[0].head
    view._on_custom_msg(view, {"type": "head_qk", "layer": layer, "head": head, "query_pos": last, "key_pos": 1,
                               "request": 2}, [])
    assert [m.get("error") for m in sent] == [None, None]

    page = helpers.static_of(view)
    section = attention_section(page)
    # The top heads table: graph.top_heads' order and shares.
    names = re.findall(r">(L\d+\.H\d+)</td><td[^>]*>([^<]*)%</td>", section)
    assert [n for n, _ in names[: len(want)]] == [f"L{h.layer}.H{h.head}" for h in want]
    assert [p for _, p in names[: len(want)]] == [format_value(100 * h.influence) for h in want]
    assert f"over {len(loadings)} kept cross-position edges" in section
    # The edge the panel asked about: its weight and its largest heads with their shares.
    assert signed(edge.weight) in section
    for h in edge.heads[:5]:
        assert html.escape(f"L{h.layer}.H{h.head} {signed(h.share)}") in section
    # The head's row at the key and its top QK pair, labels as the backend names them.
    row = attention_row(graph, layer, head, last)
    trace = qk_attribution(graph, layer, head, last, 1, top=10)
    assert f"<td style=\"padding:1px 6px;text-align:left;\">{format_value(float(row[1]))}</td>" in section
    q, k, v = trace.top_pairs()[0]
    assert html.escape(f"{q.label} × {k.label} {signed(v)}") in section
    # Tokens are text, never markup.
    assert "<i>" not in page and "&lt;" in page


def test_static_attention_without_the_model_says_so(graph, tmp_path):
    from gemscope_widgets.backend.circuits.graph import AttributionGraph

    loaded = AttributionGraph.load(graph.save(tmp_path / "g.safetensors"))
    section = attention_section(helpers.static_of(Circuit.build(loaded)))
    assert "Top heads not computed" in section
