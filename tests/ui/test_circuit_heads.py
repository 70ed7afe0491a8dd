"""The circuit view's attention panel in a real JupyterLab in Chromium (tiny Gemma 3, calibrated transcoders):
click the top logit, pick a cross-position input, see the heads that carry it, pick a head, see its attention row
and QK pairs: the same numbers as graph.edge_heads / attention_row / qk_attribution, formatted as format_value
does; feature labels with markup stay text."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.browser

SETUP = """
import json, tempfile
from pathlib import Path
from tests.fixtures.tiny_scope import tiny_scope
from gemscope_widgets.testing.transcoders import write_calibrated_set
from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.qk import attention_row, qk_attribution
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.widgets.circuit import Circuit
from gemscope_widgets.widgets.payload import format_value

gm = tiny_scope().model
root = write_calibrated_set(gm, Path(tempfile.mkdtemp()) / "set", width=128, l0=8, affine=True, seed=1)
g = attribute(gm, load_transcoders(root, "transcoder_all"), "Paris is the capital of the country", progress=False)
for layer, _pos, feature in g.selected_active_features.tolist():
    g.feature_labels[(layer, feature)] = f"<img src=x onerror=alert('qk')> {layer}/{feature}"
w = Circuit.build(g, node_threshold=1.0, edge_threshold=1.0)
w.show_all = True
w
"""


def _click_node(page, widget, node: int) -> None:
    widget.locator("canvas").scroll_into_view_if_needed()
    xy = widget.evaluate(f"e => e.gsCircuit.screen({node})")
    assert xy is not None, f"node {node} is not drawn"
    box = widget.locator("canvas").bounding_box()
    page.mouse.click(box["x"] + xy[0], box["y"] + xy[1])


def test_edge_heads_and_qk_pairs_in_the_view(lab_server, page):
    from playwright.sync_api import expect

    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    lab_server.open_and_run(page, "circuit_heads.ipynb", [SETUP])
    widget = page.locator(".gs-circuit").first
    expect(widget.locator("canvas")).to_be_visible(timeout=60_000)
    page.wait_for_function("e => Number(e.dataset.frames) >= 1", arg=widget.element_handle(), timeout=30_000)

    logit = int(lab_server.run_code(page, "print(g.logit_slice.start)"))
    _click_node(page, widget, logit)
    edges = widget.locator(".gs-ct-hd-edge")
    expect(edges.first).to_be_visible(timeout=30_000)
    # The listed inputs are the logit's payload edges from other positions, strongest first.
    sources = [int(b.get_attribute("data-source")) for b in edges.all()]
    want_sources = json.loads(lab_server.run_code(page, (
        "import torch\n"
        f"row = g.adjacency_matrix[{logit}].clone()\n"
        "row[[n for n in range(g.n_nodes) if g.node_info(n).pos == g.n_pos - 1]] = 0\n"
        "print(json.dumps([int(i) for i in torch.argsort(row.abs(), descending=True, stable=True)[:%d]]))"
        % len(sources)
    )))
    assert sources == want_sources
    # Each names its source once (the label holds its position) and the position it reaches.
    first = edges.first.text_content()
    src_pos = int(lab_server.run_code(page, f"print(g.node_info({sources[0]}).pos)"))
    last = int(lab_server.run_code(page, "print(g.n_pos - 1)"))
    assert len(re.findall(rf"@{src_pos}(?!\d)", first)) == 1 and first.endswith(f"→ @{last}"), first

    source = sources[0]
    edges.first.click()
    rows = widget.locator(".gs-ct-hd-head")
    expect(rows.first).to_be_visible(timeout=60_000)
    want = json.loads(lab_server.run_code(page, (
        f"e = g.edge_heads({source}, {logit})\n"
        "print(json.dumps([[h.layer, h.head, h.share, format_value(h.share)] for h in e.heads[:16]]))"
    )))
    got = [[int(r.get_attribute("data-layer")), int(r.get_attribute("data-head")), float(r.get_attribute("data-share")),
            r.locator(".gs-ct-hd-value").text_content()] for r in rows.all()]
    assert [r[:2] for r in got] == [r[:2] for r in want]
    assert [r[2] for r in got] == pytest.approx([r[2] for r in want], rel=1e-6)
    assert [r[3] for r in got] == [r[3] for r in want]  # the same digits as the kernel's format_value

    layer, head = got[0][0], got[0][1]
    rows.first.locator(".gs-ct-hd-pick").click()
    pairs = widget.locator(".gs-ct-hd-pair")
    expect(pairs.first).to_be_visible(timeout=60_000)
    want_qk = json.loads(lab_server.run_code(page, (
        f"pos = g.node_info({source}).pos\n"
        f"t = qk_attribution(g, {layer}, {head}, g.n_pos - 1, pos).to_dict()\n"
        f"row = attention_row(g, {layer}, {head}, g.n_pos - 1).tolist()\n"
        "print(json.dumps({'pairs': t['pair_wise_contributors'], 'labels': {k: v['label'] for k, v in "
        "t['contributors'].items()}, 'row': row, 'key': pos, 'q': [[i, format_value(v)] for i, v in "
        "t['top_q_marginal_contributors']]}))"
    )))
    got_pairs = [[p.get_attribute("data-q"), p.get_attribute("data-k"), float(p.get_attribute("data-value"))]
                 for p in pairs.all()]
    assert [p[:2] for p in got_pairs] == [p[:2] for p in want_qk["pairs"]]
    assert [p[2] for p in got_pairs] == pytest.approx([p[2] for p in want_qk["pairs"]], rel=1e-6)
    # Labels with markup are shown as characters.
    first = pairs.first.locator(".gs-ct-hd-label").first.text_content()
    assert first == want_qk["labels"][want_qk["pairs"][0][0]]
    keys = widget.locator(".gs-ct-hd-key")
    assert [float(k.get_attribute("data-p")) for k in keys.all()] == pytest.approx(want_qk["row"], rel=1e-6, abs=1e-9)
    assert int(widget.locator(".gs-ct-hd-here").get_attribute("data-pos")) == want_qk["key"]
    q_items = widget.locator(".gs-ct-hd-q li")
    assert [[li.get_attribute("data-id"), li.text_content().split("  ")[0]] for li in q_items.all()] == want_qk["q"]
    assert "<img src=x onerror=alert('qk')>" in widget.locator(".gs-ct-hd-qk").text_content()

    # Another key of the row: the split of the head's score to that key instead.
    keys.first.locator(".gs-ct-hd-pick").click()
    expect(widget.locator(".gs-ct-hd-here")).to_have_attribute("data-pos", "0", timeout=60_000)
    want_first = json.loads(lab_server.run_code(page, (
        f"print(json.dumps(qk_attribution(g, {layer}, {head}, g.n_pos - 1, 0).to_dict()['pair_wise_contributors']))"
    )))
    expect(pairs.first).to_have_attribute("data-q", want_first[0][0])
    assert [p.get_attribute("data-k") for p in pairs.all()] == [p[1] for p in want_first]
    assert widget.locator("img").count() == 0
    assert alerts == [], f"text ran as markup: {alerts}"
