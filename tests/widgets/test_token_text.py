"""One way to name a token: visible_text (the saved-notebook HTML and the names the kernel sends) on the cases
js/lib/format.test.ts runs visibleText on, and the circuit and comparison views' static HTML and payload names
written with it (a leading space as ␣, markup as text)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from gemscope_widgets import compare_graphs
from gemscope_widgets.backend.circuits.comparison import KeyChange
from gemscope_widgets.widgets.circuit import Circuit
from gemscope_widgets.widgets.token_text import visible_text
from tests import helpers
from tests.fixtures.graphs import synthetic_graph

CASES = json.loads((Path(__file__).parent / "token_text_cases.json").read_text(encoding="utf-8"))
TOKENS = ["<bos>", " of", "<b>", " the", "\n", " of"]


def test_visible_text_matches_the_shared_cases():
    assert len(CASES) > 5
    for token, text in CASES:
        assert visible_text(token) == text, token


def test_static_circuit_names_tokens_with_visible_text():
    g = synthetic_graph(n_features=30, n_edges=300, tokens=TOKENS)
    page = helpers.static_of(Circuit.build(g))
    # Labels and the per-position grid name a token as the live view does: “␣of”, never “ of”.
    assert "“␣of”" in page and "“ of”" not in page and ">␣of<" in page
    assert "“&lt;b&gt;”" in page and "“<b>”" not in page
    assert ">␣the<" in page


def test_comparison_payload_and_static_html_name_tokens_with_visible_text():
    a = synthetic_graph(n_features=30, n_edges=400, dense_logits=True, seed=1, tokens=TOKENS)
    b = synthetic_graph(n_features=30, n_edges=400, dense_logits=True, seed=2, tokens=TOKENS)
    comparison = compare_graphs(a, b, k=8)
    # Edges between token nodes and the rest carry token names; a token key listed as a change is named the same.
    tokens = [KeyChange(("token", t), t, 0.2, 0.1, True, False) for t in (" of", "<b>")]
    view = replace(comparison, only_a=tokens + comparison.only_a).widget()
    data = view._comparison
    assert [c["label"] for c in data["only_a"][:2]] == ["token “␣of”", "token “<b>”"]
    sent = {e[end] for side in ("edges_only_a", "edges_only_b") for e in data[side] for end in ("source", "target")}
    names = {n for n in sent if n.startswith("token ")}
    assert names and names <= {f"token “{visible_text(t)}”" for t in TOKENS}
    page = view.static_html()
    assert "token “␣of”" in page and "token “&lt;b&gt;”" in page
    assert "“ of”" not in page and "“<b>”" not in page
