"""The circuit view's attention panel, kernel side: the "edge_heads" / "head_qk" replies relay the backend's
graph.edge_heads, attention_row and qk_attribution for the same edge and head (tiny Gemma 3, calibrated
transcoders), echo the request id, are cached per graph, and carry the backend's short message on bad input."""

from __future__ import annotations

import json

import pytest

from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.qk import attention_row, qk_attribution
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.errors import GraphError
from gemscope_widgets.testing.transcoders import write_calibrated_set
from gemscope_widgets.widgets.circuit import Circuit
from gemscope_widgets.widgets.circuit_heads import MAX_HEADS, QK_TOP


@pytest.fixture(scope="module")
def view(tiny_model, tmp_path_factory):
    root = write_calibrated_set(tiny_model, tmp_path_factory.mktemp("heads_set"), width=128, l0=8, affine=True, seed=1)
    graph = attribute(tiny_model, load_transcoders(root, "transcoder_all"), "Paris is the capital of the country",
                      progress=False)
    w = Circuit.build(graph)
    sent: list[dict] = []
    w.send = sent.append  # what the kernel would send to the view
    return w, sent


def ask(w, sent, message):
    sent.clear()
    w._on_custom_msg(w, message, [])
    assert len(sent) == 1, sent
    return json.loads(json.dumps(sent[0]))  # what crosses to the browser


def test_edge_heads_and_head_qk_are_the_backends(view):
    w, sent = view
    g = w.graph
    last = g.n_pos - 1
    source, target = g.token_slice.start + 1, g.logit_slice.start
    reply = ask(w, sent, {"type": "edge_heads", "source": source, "target": target, "request": 7})
    want = g.edge_heads(source, target)
    assert reply["request"] == 7 and reply["source"] == source and reply["target"] == target
    assert "error" not in reply
    assert reply["weight"] == pytest.approx(want.weight, rel=1e-6)
    assert reply["heads"] == [[h.layer, h.head, pytest.approx(h.share, rel=1e-6)] for h in want.heads[:MAX_HEADS]]
    assert reply["n_heads"] == len(want.heads) and reply["n_heads"] > 1
    total = sum(s for _, _, s in reply["heads"]) + reply["rest"]
    assert total == pytest.approx(want.weight, rel=1e-4, abs=1e-6)  # the listed heads plus the rest are the edge

    layer, head, _ = reply["heads"][0]
    info_before = json.dumps(g.info.get("qk_tracing", {}), sort_keys=True)
    qk = ask(w, sent, {"type": "head_qk", "layer": layer, "head": head, "query_pos": last, "key_pos": 1,
                       "request": 8})
    assert qk["request"] == 8 and (qk["layer"], qk["head"], qk["query_pos"], qk["key_pos"]) == (layer, head, last, 1)
    assert qk["row"] == pytest.approx(attention_row(g, layer, head, last).tolist(), rel=1e-6)
    assert sum(qk["row"]) == pytest.approx(1.0, abs=1e-5)
    trace = json.loads(json.dumps(qk_attribution(g, layer, head, last, 1, top=QK_TOP).to_dict()))
    assert qk["qk"] == trace
    assert len(qk["qk"]["pair_wise_contributors"]) == QK_TOP
    assert qk["qk"]["probability"] == pytest.approx(qk["row"][1], rel=1e-6)
    # The view asks; it does not file traces in the graph (graph.qk does, for the files).
    assert json.dumps(g.info.get("qk_tracing", {}), sort_keys=True) == info_before

    # Cached per graph: the same question again is answered from the cache, under its new request id.
    assert w.heads._cache  # filled
    cached = ask(w, sent, {"type": "head_qk", "layer": layer, "head": head, "query_pos": last, "key_pos": 1,
                           "request": 9})
    assert cached["request"] == 9 and cached["qk"] == qk["qk"]


def test_bad_requests_reply_with_the_backends_message(view):
    w, sent = view
    g = w.graph
    feats = g.selected_active_features
    same = (feats[:, 1] == 3).nonzero()[:, 0].tolist()
    low, high = sorted(same[:2], key=lambda k: int(feats[k, 0]))
    reply = ask(w, sent, {"type": "edge_heads", "source": low, "target": high, "request": 1})
    with pytest.raises(GraphError) as want:
        g.edge_heads(low, high)
    assert reply["error"] == str(want.value) and "heads" not in reply

    error_node = g.error_slice.start + 2 * g.n_pos + 4
    reply = ask(w, sent, {"type": "edge_heads", "source": g.token_slice.start, "target": error_node, "request": 2})
    with pytest.raises(GraphError) as want:
        g.edge_heads(g.token_slice.start, error_node)
    assert reply["error"] == str(want.value)

    # A key after the query: the row is still sent, the QK split is refused with the backend's words.
    reply = ask(w, sent, {"type": "head_qk", "layer": 1, "head": 0, "query_pos": 2, "key_pos": 4, "request": 3})
    assert "causal" in reply["error"] and "qk" not in reply and len(reply["row"]) == 3
    reply = ask(w, sent, {"type": "head_qk", "layer": 9, "head": 0, "query_pos": 2, "key_pos": 1, "request": 4})
    assert "layers 0..3" in reply["error"] and "row" not in reply
