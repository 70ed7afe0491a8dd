"""Script-free HTML of the circuit view (the ``text/html`` of its mime bundle; see :mod:`.static_view`).

What a saved notebook without widget state shows in place of the live graph, read from the view's synced traits
only, so it is what the view drew under the same thresholds and pins:

* the prompt and the next-token candidates (the logit nodes) with their probabilities;
* a layer × position grid: the number of drawn feature nodes in each cell, shaded by their share of influence;
* the most influential drawn feature and error nodes, and the strongest drawn edges (signed direct effects);
* the supernodes (named groups of nodes, ``graph.supernodes``): members and summed influence;
* the last intervention's before / after table;
* attention: the heads carrying the most cross-position influence (``graph.top_heads``) when the head loadings at
  the view's thresholds were already computed (they cost about half an attribution, so displaying a view never
  starts them; otherwise a line says how to include them), and every answer the live attention panel had
  computed when the view was displayed (an edge's heads; a head's attention row and top QK pairs).

Node and edge selection follows ``js/lib/circuit_graph.ts`` (``Visible``): at the thresholds the kernel pruned at
(``_kept_at``), exactly what ``graph.prune()`` keeps (``_kept``); at others, the preview by influence rank (token and
logit nodes always, feature and error nodes whose rank is under the node threshold; edges whose rank is under the
edge threshold); unless ``show_all``, only the legible subgraph's nodes (said in the first line); pinned nodes always,
and edges between drawn nodes, or between two pinned nodes. Every text is escaped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gemscope_widgets.backend.circuits.head_loadings import computed_head_loadings

from .circuit_payload import KIND_CODES
from .payload import format_value
from .static_html import NOTE_STYLE, escape, frame, heat_style, joined, tokens_html
from .token_text import visible_text

MAX_NODES = 20  # rows of the node table
MAX_EDGES = 20  # rows of the edge table
MAX_TOP_HEADS = 10  # rows of the top heads table
MAX_EDGE_HEADS = 5  # heads listed per edge the attention panel answered
MAX_QK_PAIRS = 5  # QK pairs listed per head the attention panel answered
_DTYPES = {"uint16": "<u2", "uint32": "<u4", "float32": "<f4"}
_TABLE = "border-collapse:collapse;font-size:.85em;margin:4px 0 10px"
_CELL = "padding:1px 6px;text-align:left"
_MONO = "font-family:monospace;white-space:pre"
_SIGN = {True: "color:#1f77b4", False: "color:#d62728"}  # the view's edge colours (positive, negative)


def _arrays(header: dict[str, Any], data: bytes, group: str) -> dict[str, np.ndarray]:
    out = {}
    for name, ref in header[group].items():
        dtype, count, offset = _DTYPES[ref["dtype"]], int(ref["length"]), int(ref["offset"])
        out[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return out


class _Drawn:
    """The decoded payload and what the view draws under its thresholds and pins."""

    def __init__(self, widget: Any) -> None:
        self.header = header = widget._header
        data = bytes(widget._data)
        self.nodes = _arrays(header, data, "nodes")
        self.edges = _arrays(header, data, "edges")
        pinned = set(int(n) for n in widget.pinned)
        self.pinned_local = np.isin(self.nodes["node"], list(pinned)) if pinned else np.zeros(0, bool)
        kind = self.nodes["kind"]
        nt, et = float(widget.node_threshold), float(widget.edge_threshold)
        kept_at = dict(widget._kept_at or {})
        n_nodes = len(kind)
        flags = np.frombuffer(bytes(widget._kept), dtype=np.uint8)
        # Exact: the kernel's prune() at these thresholds; else the preview by influence rank (as the view).
        self.exact = (flags.size == n_nodes + len(self.edges["source"]) and kept_at.get("node_threshold") == nt
                      and kept_at.get("edge_threshold") == et)
        if self.exact:
            self.node_mask = flags[:n_nodes].astype(bool)
            keep = flags[n_nodes:].astype(bool)
        else:
            self.node_mask = (kind >= KIND_CODES["token"]) | (self.nodes["rank"] < nt)
            keep = self.edges["rank"] < et
        focus = header.get("focus") or {}
        self.focused = (not widget.show_all and "focus" in self.nodes
                        and int(focus.get("n_pruned", 0)) > int(focus.get("n_chosen", 0)))
        if self.focused:
            self.node_mask = self.node_mask & self.nodes["focus"].astype(bool)
        if pinned:
            self.node_mask |= self.pinned_local
        src, dst = self.edges["source"].astype(np.int64), self.edges["target"].astype(np.int64)
        both = self.node_mask[src] & self.node_mask[dst]
        if pinned:
            keep |= self.pinned_local[src] & self.pinned_local[dst]
        self.edge_mask = both & keep
        self.selected = set(int(n) for n in widget.selected)
        self.pinned = pinned

    def label(self, i: int) -> str:
        """The view's label of local node ``i`` (``js/lib/circuit_graph.ts`` ``label``)."""
        kind, layer, pos = int(self.nodes["kind"][i]), int(self.nodes["layer"][i]), int(self.nodes["pos"][i])
        tokens = self.header["tokens"]
        raw = tokens[pos] if pos < len(tokens) else ""
        tok = visible_text(raw)
        if kind == KIND_CODES["feature"]:
            base = feature_label(layer - 1, int(self.nodes["feature"][i]), pos, raw)
            label = self.header.get("labels", {}).get(str(i))
            return f"{base}: {label}" if label else base
        if kind == KIND_CODES["error"]:
            return f"error L{layer - 1} @{pos} “{tok}”"
        if kind == KIND_CODES["token"]:
            return f"token @{pos} “{tok}”"
        logits = self.header["logit_tokens"]
        j = int(self.nodes["node"][i]) - (int(self.header["n_nodes_total"]) - len(logits))
        return f"logit “{visible_text(logits[j]) if 0 <= j < len(logits) else ''}”"

    def marks(self, i: int) -> str:
        node = int(self.nodes["node"][i])
        return ("selected " if node in self.selected else "") + ("pinned" if node in self.pinned else "")


def feature_label(layer: int, feature: int, pos: int, token: str) -> str:
    """How the circuit view names a feature node: ``L{layer} #{feature} @{pos} “token”`` (``layer`` from 0,
    ``token`` the input token's text, shown with its spaces and newlines visible). Plain text, not HTML."""
    return f"L{layer} #{feature} @{pos} “{visible_text(token)}”"


def _table(head: list[str], rows: list[str]) -> str:
    cells = "".join(f'<th style="{_CELL};font-weight:normal;{NOTE_STYLE}">{escape(h)}</th>' for h in head)
    return f'<table style="{_TABLE}"><tr>{cells}</tr>{"".join(rows)}</table>'


def _td(text: str, style: str = "") -> str:
    return f'<td style="{_CELL};{style}">{escape(text)}</td>'


def _grid(d: _Drawn) -> str:
    """Layers up (logits on top, token embeddings at the bottom), positions across; drawn feature nodes per cell."""
    n_layers = int(d.header["n_layers"])
    tokens = d.header["tokens"]
    kind, layer, pos, influence = d.nodes["kind"], d.nodes["layer"], d.nodes["pos"], d.nodes["influence"]
    counts = np.zeros((n_layers + 2, len(tokens)), dtype=np.int64)
    shares = np.zeros((n_layers + 2, len(tokens)), dtype=np.float64)
    features = np.flatnonzero(d.node_mask & (kind == KIND_CODES["feature"]))
    np.add.at(counts, (layer[features].astype(np.int64), pos[features].astype(np.int64)), 1)
    np.add.at(shares, (layer[features].astype(np.int64), pos[features].astype(np.int64)), influence[features])
    top = float(shares.max(initial=0.0))
    head = "".join(f'<th style="{_CELL};{_MONO};font-weight:normal">{escape(visible_text(t))}</th>' for t in tokens)
    rows = []
    for row in range(n_layers, 0, -1):  # layer L sits in row L + 1 of the payload; row 0 is the embeddings
        cells = "".join(
            f'<td style="{_CELL};text-align:center;{heat_style(shares[row, p] / top if top > 0 else 0)}" '
            f'title="{escape(format_value(shares[row, p]))}">{counts[row, p] or ""}</td>'
            for p in range(len(tokens))
        )
        rows.append(f'<tr><td style="{_CELL};{NOTE_STYLE}">L{row - 1}</td>{cells}</tr>')
    return (
        f'<div style="{NOTE_STYLE}">drawn feature nodes per layer and token (shade: their influence)</div>'
        f'<table style="{_TABLE}"><tr><th></th>{head}</tr>{"".join(rows)}</table>'
    )


def _node_rows(d: _Drawn) -> list[str]:
    kind = d.nodes["kind"]
    order = [
        int(i) for i in np.argsort(-d.nodes["influence"], kind="stable")
        if d.node_mask[i] and kind[i] <= KIND_CODES["error"]
    ]
    rows = []
    for i in order[:MAX_NODES]:
        activation = format_value(float(d.nodes["activation"][i])) if kind[i] == KIND_CODES["feature"] else "—"
        rows.append(
            "<tr>" + _td(d.label(i), _MONO) + _td(activation) + _td(format_value(float(d.nodes["influence"][i])))
            + _td(d.marks(i)) + "</tr>"
        )
    more = len(order) - MAX_NODES
    if more > 0:
        rows.append(f'<tr><td style="{_CELL};{NOTE_STYLE}">… {more} more</td></tr>')
    return rows


def _edge_rows(d: _Drawn) -> list[str]:
    edges = np.flatnonzero(d.edge_mask)
    weight = d.edges["weight"]
    edges = edges[np.argsort(-np.abs(weight[edges]), kind="stable")]
    rows = []
    for e in edges[:MAX_EDGES]:
        w = float(weight[e])
        source, target = d.label(int(d.edges["source"][e])), d.label(int(d.edges["target"][e]))
        signed = ("+" if w >= 0 else "") + format_value(w)
        rows.append("<tr>" + _td(source, _MONO) + _td("→") + _td(target, _MONO) + _td(signed, _SIGN[w >= 0]) + "</tr>")
    more = len(edges) - MAX_EDGES
    if more > 0:
        rows.append(f'<tr><td style="{_CELL};{NOTE_STYLE}">… {more} more</td></tr>')
    return rows


def _supernodes(widget: Any, d: _Drawn) -> str:
    """The supernodes with their members (as the view labels them) and summed influence (``_groups``)."""
    groups = list(widget._groups or [])
    if not groups:
        return ""
    local = {int(n): i for i, n in enumerate(d.nodes["node"].tolist())}
    rows = []
    for group in groups:
        names = [d.label(local[m]) if m in local else f"node {m}" for m in group["members"]]
        rows.append(
            "<tr>" + _td(group["name"]) + _td(str(len(names))) + _td(format_value(float(group["influence"])))
            + _td("; ".join(names), _MONO) + "</tr>"
        )
    return (
        "<div><b>Supernodes</b> (each drawn as one node; edges and influence summed over its members)</div>"
        + _table(["name", "nodes", "influence", "members"], rows)
    )


def _intervention(record: dict[str, Any]) -> str:
    state = record.get("state")
    if not state:
        return ""
    if state == "error":
        return f"<div><b>Intervention failed:</b> {escape(record.get('message', ''))}</div>"
    if state == "running":
        return f'<div style="{NOTE_STYLE}">intervention running (not finished when this was saved)</div>'
    value = format_value(float(record.get("value", 0.0)))
    what = f"× {value}" if record.get("mode") == "scale" else f"set to {value}"
    rows = []
    for token, before, after in record.get("rows", []):
        known = before is not None and after is not None
        change = float(after) - float(before) if known else 0.0
        signed = (("+" if change >= 0 else "") + format_value(change)) if known else "—"
        rows.append(
            "<tr>" + _td(visible_text(str(token)), _MONO)
            + _td("—" if before is None else format_value(float(before)))
            + _td("—" if after is None else format_value(float(after)))
            + _td(signed, _SIGN[change >= 0] if known else "")
            + "</tr>"
        )
    changed = "; ".join(
        f"{label} ({format_value(float(before))} → {format_value(float(after))})"
        for label, before, after in record.get("changed", [])
    ) or ", ".join(str(int(n)) for n in record.get("nodes", []))
    return (
        f"<div><b>Intervention</b>: {escape(what)}: {escape(changed)} — next-token probabilities</div>"
        + _table(["token", "before", "after", "change"], rows)
    )


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "") + format_value(value)


def _top_heads(widget: Any) -> str:
    """``graph.top_heads`` at the view's thresholds if already computed, else a line saying how to include them."""
    graph = getattr(widget, "graph", None)
    nt, et = float(widget.node_threshold), float(widget.edge_threshold)
    loadings = computed_head_loadings(graph, nt, et) if graph is not None else None
    if loadings is None:
        return (
            f'<div style="{NOTE_STYLE}">Top heads not computed when this view was displayed: run graph.top_heads() '
            f"(node threshold {nt:.2f}, edge threshold {et:.2f}; about half an attribution's time) before displaying "
            "it to include them here. In the live view, click a node for the heads of its inputs from other "
            "positions.</div>"
        )
    rows = [
        "<tr>" + _td(f"L{h.layer}.H{h.head}", _MONO) + _td(format_value(100 * h.influence) + "%")
        + _td(format_value(h.abs_share)) + _td(str(h.n_top)) + "</tr>"
        for h in loadings.top(MAX_TOP_HEADS)
    ]
    return (
        f"<div>Heads carrying the most cross-position influence (graph.top_heads over {len(loadings)} kept "
        f"cross-position edges at node threshold {nt:.2f}, edge threshold {et:.2f}; "
        f"rule: {escape(loadings.rule)})</div>"
        + _table(["head", "share of influence", "Σ |share|", "edges it leads"], rows)
    )


def _panel_answers(widget: Any, d: _Drawn) -> str:
    """What the live attention panel had computed: each edge's heads, each head's row and top QK pairs."""
    relay = getattr(widget, "heads", None)
    answers = relay.answers() if relay is not None else []
    if not answers:
        return ""
    local = {int(n): i for i, n in enumerate(d.nodes["node"].tolist())}
    tokens = d.header["tokens"]

    def name(node: int) -> str:
        return d.label(local[node]) if node in local else f"node {node}"

    def token(pos: int) -> str:
        return f"@{pos} “{visible_text(tokens[pos]) if 0 <= pos < len(tokens) else ''}”"

    edges, qks = [], []
    for key, reply in answers:
        if key[0] == "edge_heads":
            listed = reply.get("heads", [])
            shown = "; ".join(f"L{layer}.H{head} {_signed(float(share))}" for layer, head, share in
                              listed[:MAX_EDGE_HEADS])
            more = int(reply.get("n_heads", len(listed))) - min(len(listed), MAX_EDGE_HEADS)
            shown += f"; {more} more heads" if more > 0 else ""
            edges.append(
                "<tr>" + _td(name(int(key[1])), _MONO) + _td("→") + _td(name(int(key[2])), _MONO)
                + _td(_signed(float(reply.get("weight", 0.0)))) + _td(shown, _MONO) + "</tr>"
            )
        else:
            _, layer, head, query_pos, key_pos = key
            row = reply.get("row", [])
            p = format_value(float(row[key_pos])) if 0 <= key_pos < len(row) else "—"
            trace = reply.get("qk")
            if trace is None:
                detail = f"QK split refused: {reply.get('error', '')}"
            else:
                label = {i: c.get("label") or i for i, c in trace.get("contributors", {}).items()}
                detail = f"score {_signed(float(trace['score']))}; top pairs (query × key): " + "; ".join(
                    f"{label.get(q, q)} × {label.get(k, k)} {_signed(float(v))}"
                    for q, k, v in trace.get("pair_wise_contributors", [])[:MAX_QK_PAIRS]
                )
            qks.append(
                "<tr>" + _td(f"L{layer}.H{head}", _MONO) + _td(f"{token(query_pos)} → {token(key_pos)}", _MONO)
                + _td(p) + _td(detail, _MONO) + "</tr>"
            )
    parts = [f'<div style="{NOTE_STYLE}">what the attention panel had computed when this view was displayed</div>']
    if edges:
        parts.append(_table(["source", "", "target", "weight", "heads carrying it (shares sum to the weight)"], edges))
    if qks:
        parts.append(_table(["head", "query → key", "attention", "why it attends"], qks))
    return "".join(parts)


def _attention(widget: Any, d: _Drawn) -> str:
    return "<div><b>Attention</b></div>" + _top_heads(widget) + _panel_answers(widget, d)


def _focus_note(header: dict[str, Any]) -> str:
    """What the legible subgraph leaves out (``js/lib/circuit_graph.ts`` ``focusNote``)."""
    f = header["focus"]
    return (f" · the legible subgraph: the {int(f['n_chosen'])} nodes with the most influence on "
            f"“{escape(visible_text(f['logit_token']))}” of the {int(f['n_pruned'])} feature and error nodes prune() "
            "keeps (show_all=True draws the rest)")


def circuit_html(widget: Any) -> str:
    """The circuit view as script-free HTML (see the module docstring)."""
    header = widget._header
    if not header:
        return frame("Attribution graph", f'<div style="{NOTE_STYLE}">No graph.</div>')
    d = _Drawn(widget)
    n_nodes, n_edges = int(d.node_mask.sum()), int(d.edge_mask.sum())
    parts = [
        f'<div style="{NOTE_STYLE}">'
        + escape(joined([header.get("model", ""), header.get("scan", ""), (
            f"node threshold {float(widget.node_threshold):.2f}, edge threshold {float(widget.edge_threshold):.2f}: "
            f"{n_nodes} of {len(d.nodes['node'])} nodes, {n_edges} of {int(header.get('n_edges_total', 0))} edges "
            "drawn")]))
        + ("" if d.exact else " (a preview by influence rank: the kernel had not pruned at these thresholds)")
        + (_focus_note(header) if d.focused else "") + "</div>",
        tokens_html(header["tokens"]),
        "<div><b>Next token</b>: "
        + ", ".join(
            f'<span style="{_MONO}">{escape(visible_text(t))}</span> {escape(format_value(float(p)))}'
            for t, p in zip(header["logit_tokens"], header["logit_probabilities"])
        )
        + "</div>",
        _grid(d),
        _supernodes(widget, d),
        "<div><b>Most influential nodes</b></div>",
        _table(["node", "activation", "influence", ""], _node_rows(d)),
        "<div><b>Strongest edges</b> (direct effects)</div>",
        _table(["source", "", "target", "weight"], _edge_rows(d)),
        _intervention(widget.intervention or {}),
        _attention(widget, d),
    ]
    return frame("Attribution graph", "".join(parts))
