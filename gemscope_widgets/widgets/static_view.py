"""Script-free HTML renderings of the widgets, carried as ``text/html`` in each widget's mime bundle.

A notebook saved without widget state (JupyterLab's default) reopens with no live widget models; JupyterLab
then shows the next mime type of each output. With this rendering beside the widget view, it shows the
heatmap's colours, the pane's summary and the steering texts instead of ``<...Steer object at 0x...>``; the
same HTML reads on nbviewer and GitHub. With widget state saved, the live widget renders as before.

Each renderer reads only the widget's synced traits, so it shows exactly what the view would at that moment;
numbers follow :func:`~gemscope_widgets.widgets.payload.format_value`. The frame, escaping, token runs and the
mime-bundle mixin are :mod:`.static_html`'s; a rendering made mid-generation marks its texts partial.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .payload import format_percent, format_value
from .static_html import (
    MAX_TOKENS,
    NOTE_STYLE,
    escape,
    frame,
    heat_style,
    in_progress_html,
    joined,
    running_token_text,
    tokens_html,
)
from .token_text import visible_text

MAX_COLUMNS = 20  # heatmap feature columns drawn
STATIC_WAIT_S = 5.0  # how long a display waits for the texts it renders (the steering widget's first generation)


def heatmap_html(widget: Any) -> str:
    """Each prompt's text shaded by the selected (or strongest) feature, and its tokens × top-features grid."""
    payload = widget.payload
    sae = widget.sae_index
    parts = [f'<div style="{NOTE_STYLE}">SAE {escape(payload.sae_names[sae])}</div>']
    maxima = payload.feature_max(sae) or {}
    for p in range(payload.n_prompts):
        tokens = payload.tokens(p)
        special = payload.header["prompts"][p]["special"]
        block = payload.block(p, sae)
        dense_cols = payload.top_features(
            p, sae, min(widget.top_n, MAX_COLUMNS), widget.rank_by, widget.dense_features()
        )
        rows = np.repeat(np.arange(len(tokens)), np.diff(block.indptr.astype(np.int64)))

        def column(f: int, block: Any = block, rows: Any = rows, n: int = len(tokens)) -> np.ndarray:
            out = np.zeros(n, dtype=np.float32)
            hit = block.indices.astype(np.int64) == f
            out[rows[hit]] = block.values[hit].astype(np.float32)
            return out

        def scale(f: int, col: np.ndarray) -> float:
            corpus = maxima.get(f)
            return float(corpus) if corpus and corpus > 0 else float(col.max(initial=0.0))

        shown = widget.selected_feature if widget.selected_prompt in (-1, p) and widget.selected_feature >= 0 else -1
        if shown < 0 and dense_cols:
            shown = dense_cols[0]
        parts.append(f"<div><b>Prompt {p + 1}</b> · {len(tokens)} tokens")
        if shown >= 0:
            col = column(shown)
            parts.append(f" · coloured by feature #{shown}</div>")
            parts.append(tokens_html(tokens, col, scale(shown, col), special=special))
        else:
            parts.append("</div>" + tokens_html(tokens, special=special))
        if not dense_cols:
            parts.append(f'<div style="{NOTE_STYLE}">No active features.</div>')
            continue
        cols = [column(f) for f in dense_cols]
        scales = [scale(f, c) for f, c in zip(dense_cols, cols)]
        head = "".join(
            f'<th style="font-weight:normal;padding:0 3px" title="{escape(widget.label(f, sae))}">{f}</th>'
            for f in dense_cols
        )
        labelled = [f for f in dense_cols if widget.label(f, sae)]
        if labelled:
            names = " · ".join(f"#{f} {escape(widget.label(f, sae))}" for f in labelled)
            parts.append(f'<div style="{NOTE_STYLE}">{names}</div>')
        body = []
        for t, token in enumerate(tokens[:MAX_TOKENS]):
            cells = "".join(
                f'<td style="min-width:1.6em;{heat_style(c[t] / s if s > 0 else 0)}" '
                f'title="#{f} = {escape(format_value(c[t]))}"></td>'
                for f, c, s in zip(dense_cols, cols, scales)
            )
            label_style = "font-family:monospace;white-space:pre;padding-right:6px"
            label = f'<td style="{label_style}">{t} {escape(visible_text(token))}</td>'
            body.append(f"<tr>{label}{cells}</tr>")
        more = len(tokens) - MAX_TOKENS
        if more > 0:
            body.append(f'<tr><td style="{NOTE_STYLE}">… {more} more tokens</td></tr>')
        parts.append(
            '<table style="border-collapse:collapse;font-size:.85em;margin:4px 0 10px">'
            '<tr><th style="text-align:left;font-weight:normal">token \\ feature</th>'
            f"{head}</tr>{''.join(body)}</table>"
        )
    return frame("Feature heatmap", "".join(parts))


# --- feature pane ------------------------------------------------------------------------------------


def _f32(data: Any) -> np.ndarray:
    if not data:
        return np.zeros(0, dtype=np.float32)
    return np.frombuffer(bytes(data), dtype="<f4")


def pane_label_text(info: dict[str, Any]) -> str:
    """The pane's label line, worded as the live pane words it (``js/feature_pane.ts``): the explanation, else
    ``Automatic label: …``, else ``No explanation yet.`` Plain text."""
    if info.get("explanation"):
        return str(info["explanation"])
    if info.get("label"):
        return f"Automatic label: {info['label']}"
    return "No explanation yet."


def feature_pane_html(widget: Any) -> str:
    """The pane's summary: explanation, density, logits, related features and the first top examples."""
    info = widget.info or {}
    width = info.get("width", "?")
    parts = [f'<div style="{NOTE_STYLE}">{escape(joined([info.get("sae", ""), f"{width} features"]))}</div>']
    parts.append(f"<div>{escape(pane_label_text(info))}</div>")
    facts = []
    if isinstance(info.get("density"), (int, float)):
        facts.append(f"fires on {format_percent(info['density'])} of {int(info.get('n_tokens') or 0):,} tokens")
    if isinstance(info.get("max_act"), (int, float)):
        facts.append(f"max activation {format_value(info['max_act'])}")
    if info.get("source"):
        facts.append(f"from {info['source']}")
    if facts:
        parts.append(f'<div style="{NOTE_STYLE}">{escape(" · ".join(facts))}</div>')
    logits = widget.logits or {}
    for label, key in (("Promotes", "top"), ("Suppresses", "bottom")):
        rows = logits.get(key) or []
        if rows:
            shown_tokens = " ".join(
                '<span style="font-family:monospace;white-space:pre-wrap">'
                f"{escape(running_token_text(str(tok)))}</span>"
                f' <span style="{NOTE_STYLE}">{escape(format_value(val))}</span>'
                for tok, val in rows
            )
            parts.append(f"<div><b>{label}</b>: {shown_tokens}</div>")
    related = widget.related or []
    if related:
        chips = ", ".join(f"#{int(r['feature'])} ({escape(format_value(r['score']))})" for r in related)
        parts.append(f"<div><b>Related</b>: {chips}</div>")
    page = widget.examples or {}
    items = page.get("items") or []
    max_act = info.get("max_act")
    scale = float(max_act) if isinstance(max_act, (int, float)) and max_act > 0 else (
        float(items[0]["value"]) if items else 0.0)
    if items:
        parts.append(f"<div><b>Top activations</b> ({len(items)} of {int(page.get('total') or 0)})</div>")
        for ex in items:
            values = _f32(ex.get("values"))
            parts.append(
                f'<div style="display:flex;gap:6px">'
                f'<span style="{NOTE_STYLE}">{escape(format_value(ex["value"]))}</span>'
                f"{tokens_html(ex['tokens'], values, scale, mark=int(ex.get('peak', -1)))}</div>"
            )
    else:
        parts.append(f'<div style="{NOTE_STYLE}">No examples.</div>')
    return frame(f"Feature {int(widget.feature)}", "".join(parts))


# --- steering ----------------------------------------------------------------------------------------


def steer_html(widget: Any) -> str:
    """The steering settings and the baseline and steered texts side by side (divergence underlined)."""
    rows = []
    for f in widget.features:
        if f.get("mode") == "ablate":
            what = "ablate (→ 0)"
        else:
            multiple, raw = format_value(f.get("multiple", 0)), format_value(f.get("raw", 0))
            what = f"{multiple}× = {raw} raw ({f.get('scale_source', '')})"
        where = f"{f.get('mode', '')} · {f.get('positions', '')}"
        rows.append(f"<li>#{int(f['feature'])} · {escape(where)} · {escape(what)}</li>")
    features = f"<ul>{''.join(rows)}</ul>" if rows else f'<div style="{NOTE_STYLE}">No features.</div>'
    prompt = tokens_html(widget.prompt_tokens, special=widget.prompt_special)
    d = int(widget.divergence)
    partial = " (partial)" if widget.running else ""
    columns = (
        '<div style="display:grid;grid-template-columns:1fr 1fr;gap:12px">'
        f"<div><b>baseline{partial}</b>{tokens_html(widget.baseline_tokens, mark=d)}</div>"
        f"<div><b>steered{partial}</b>{tokens_html(widget.steered_tokens, mark=d)}</div></div>"
    )
    status = f'<div style="{NOTE_STYLE}">{escape(widget.status)}</div>' if widget.status else ""
    error = f"<div><b>Error:</b> {escape(widget.error)}</div>" if widget.error else ""
    head = f'<div style="{NOTE_STYLE}">{escape(widget.sae_name)}</div>' if widget.sae_name else ""
    running = in_progress_html("The generation was") if widget.running else ""
    body = running + head + features + f'<div style="{NOTE_STYLE}">prompt</div>' + prompt + columns + status + error
    return frame("Steering", body)


# --- token view --------------------------------------------------------------------------------------


def token_view_html(widget: Any) -> str:
    """The tokens, the selected one underlined."""
    body = tokens_html(widget.tokens, special=widget.special or None, mark=int(widget.selected_token))
    return frame("Tokens", body)


# --- chat and contrast -------------------------------------------------------------------------------


def _heat_rows(data: Any, n_rows: int) -> np.ndarray:
    """``float32 [n_rows, T]`` from a widget's heat bytes (``[0, 0]`` when empty)."""
    flat = _f32(data)
    return flat.reshape(n_rows, -1) if n_rows and flat.size else np.zeros((0, 0), dtype=np.float32)


def chat_html(widget: Any) -> str:
    """The conversation turn by turn (template tokens in italics), shaded by the first selected feature, with each
    turn's strongest features; the warning, status and error lines as the view shows them."""
    view = widget._view or {}
    tokens = list(view.get("tokens") or [])
    special = [a or b for a, b in zip(view.get("special") or [], view.get("template") or [])] or None
    features = list(widget.features)
    heat = _heat_rows(widget._heat, len(features))
    values = heat[0] if len(heat) else None
    scale = float(values.max(initial=0.0)) if values is not None else 0.0
    names = view.get("sae_names") or [""]
    parts = [f'<div style="{NOTE_STYLE}">SAE {escape(names[min(widget.sae_index, len(names) - 1)])}']
    if features:
        parts.append(f" · coloured by feature #{features[0]}")
    parts.append("</div>")
    if widget.running:
        parts.insert(0, in_progress_html("The model's turn was"))
    if widget.warning:
        parts.append(f'<div style="{NOTE_STYLE}">{escape(widget.warning)}</div>')
    if view.get("system"):
        parts.append(
            f'<div style="{NOTE_STYLE}">system (folded into the first user turn): {escape(view["system"])}</div>'
        )
    def run(a: int, b: int) -> str:
        return tokens_html(tokens[a:b], None if values is None else values[a:b], scale,
                           special=None if special is None else special[a:b])

    done = 0
    for turn in view.get("turns") or []:
        a, b = int(turn["start"]), int(turn["end"])
        if a > done:  # <bos>, or template tokens between turns
            parts.append(run(done, a))
        done = max(done, b)
        chips = ", ".join(f"#{int(s['feature'])} ({escape(format_value(s['max']))})" for s in turn.get("summary") or [])
        parts.append(f"<div style=\"margin-top:6px\"><b>{escape(turn['role'])}</b>")
        parts.append(f' <span style="{NOTE_STYLE}">strongest: {chips}</span></div>' if chips else "</div>")
        parts.append(run(a, b))
    if done < len(tokens):
        parts.append(run(done, len(tokens)))
    if widget.streaming:
        parts.append(f"<div><b>model</b> (generating)</div>{tokens_html(list(widget.streaming))}")
    if widget.status:
        parts.append(f'<div style="{NOTE_STYLE}">{escape(widget.status)}</div>')
    if widget.error:
        parts.append(f"<div><b>Error:</b> {escape(widget.error)}</div>")
    return frame("Conversation", "".join(parts))


def contrast_html(widget: Any) -> str:
    """The ranked features (values on a, on b, difference; t for pairs) and both prompts side by side, shaded by
    the selected (or first) feature, the compared span underlined."""
    view = widget._view or {}
    rows = list(view.get("rows") or [])
    pairs = int(view.get("n_pairs") or 1)
    head = (f"{escape(view.get('sae_name', ''))} · span {escape(view.get('span', ''))} "
            f"({escape(view.get('reduce', ''))})")
    parts = [f'<div style="{NOTE_STYLE}">{head}{f" · {pairs} pairs" if pairs > 1 else ""}</div>']
    if view.get("caveat"):
        parts.append(f'<div style="{NOTE_STYLE}">{escape(view["caveat"])}</div>')
    cols = ["feature", "a", "b", "diff"] + (["t"] if pairs > 1 else [])
    def cell(r: dict[str, Any], c: str) -> str:
        if c != "feature":
            return escape(format_value(r[c]))
        label = str(r.get("label") or "")
        return f"#{int(r[c])}" + (f' <span style="{NOTE_STYLE}">{escape(label)}</span>' if label else "")

    body = [
        "<tr>" + "".join(f'<td style="padding:0 6px">{cell(r, c)}</td>' for c in cols if c in r) + "</tr>"
        for r in rows
    ]
    if rows:
        header = "".join(f'<th style="font-weight:normal;padding:0 6px">{c}</th>' for c in cols)
        table = f'<table style="border-collapse:collapse;font-size:.85em"><tr>{header}</tr>'
        parts.append(f'{table}{"".join(body)}</table>')
    else:
        parts.append(f'<div style="{NOTE_STYLE}">No feature differs.</div>')
    features = [int(r["feature"]) for r in rows]
    shown = widget.selected_feature if widget.selected_feature in features else (features[0] if features else -1)
    heats = {"a": _heat_rows(widget._heat_a, len(features)), "b": _heat_rows(widget._heat_b, len(features))}
    row = features.index(shown) if shown >= 0 else -1
    shade = {k: h[row] if row >= 0 and len(h) else None for k, h in heats.items()}
    scale = max((float(v.max(initial=0.0)) for v in shade.values() if v is not None), default=0.0)  # one scale
    sides = []
    for key in ("a", "b"):
        side = view.get(key) or {}
        span = [int(x) for x in side.get("span") or []]
        special = [a or b for a, b in zip(side.get("special") or [], side.get("template") or [])] or None
        text = tokens_html(list(side.get("tokens") or []), shade[key], scale, special=special,
                           mark=span[0] if len(span) == 1 else -1)
        where = f"span: tokens {span[0]}–{span[-1]}" if span else "span: none"
        sides.append(f'<div><b>{key}</b> <span style="{NOTE_STYLE}">{where}</span>{text}</div>')
    if shown >= 0:
        parts.append(f'<div style="{NOTE_STYLE}">coloured by feature #{shown}</div>')
    parts.append('<div style="display:grid;grid-template-columns:1fr 1fr;gap:12px">' + "".join(sides) + "</div>")
    if widget.error:
        parts.append(f"<div><b>Error:</b> {escape(widget.error)}</div>")
    return frame("Contrast", "".join(parts))


# --- probe ---------------------------------------------------------------------------------------------------

_ROC_COLOURS = ("#1e88e5", "#8e24aa", "#43a047", "#f4511e")  # the three probes, then the shown latent


def _roc_svg(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], size: int = 160) -> str:
    """The ROC curves as an inline SVG polyline each (no script), the chance diagonal dashed."""
    lines = [f'<line x1="0" y1="{size}" x2="{size}" y2="0" stroke="gray" stroke-dasharray="3 3"/>']
    for (name, fpr, tpr), colour in zip(curves, _ROC_COLOURS):
        points = " ".join(f"{x * size:.1f},{(1 - y) * size:.1f}" for x, y in zip(fpr, tpr))
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}">'
                     f"<title>{escape(name)}</title></polyline>")
    return (f'<svg width="{size}" height="{size}" viewBox="0 0 {size} {size}" '
            f'style="border:1px solid rgba(128,128,128,.45)">{"".join(lines)}</svg>')


def probe_html(widget: Any) -> str:
    """The held-out ROC curves (the three probes and the selected, else the best single, latent), the AUROCs with
    their intervals, the SAE probe's latents with labels and densities, and the learning curve."""
    view = widget._view or {}
    roc = np.frombuffer(widget._roc, dtype=np.float32) if widget._roc else np.zeros(0, np.float32)
    features = list(view.get("features") or [])
    ids = [int(f["feature"]) for f in features]
    best = int(view.get("best", -1))
    fallback = best if best in ids else (ids[0] if ids else -1)
    shown = widget.selected_feature if widget.selected_feature in ids else fallback
    curves = []
    for c in view.get("roc") or []:
        if int(c["feature"]) in (-1, shown):
            o, n = int(c["offset"]), int(c["n"])
            curves.append((str(c["name"]), roc[o : o + n], roc[o + n : o + 2 * n]))
    head = (f"{escape(view.get('sae_name', ''))} · layer {escape(view.get('layer', ''))} · position "
            f"{escape(view.get('position', ''))} · {escape(view.get('n_positive', 0))} + "
            f"{escape(view.get('n_negative', 0))} "
            f"prompts · {escape(view.get('scheme', ''))} · seed {escape(view.get('seed', ''))}")
    parts = [f'<div style="{NOTE_STYLE}">{head}</div>']
    th = 'style="font-weight:normal;padding:0 6px;text-align:left"'
    td = 'style="padding:0 6px"'
    rows = "".join(
        f"<tr><td {td}>{escape(d['title'])}</td><td {td}>{escape(format_value(d['auroc']))}</td>"
        f"<td {td}>[{escape(format_value(d['low']))}, {escape(format_value(d['high']))}]</td>"
        f"<td {td}>{escape(d['n_held_out'])}</td></tr>"
        for d in view.get("detectors") or []
    )
    detectors = (f'<table style="border-collapse:collapse;font-size:.85em"><tr><th {th}>detector</th>'
                 f"<th {th}>held-out AUROC</th><th {th}>95% interval</th><th {th}>held out</th></tr>{rows}</table>")
    parts.append(f'<div style="display:flex;gap:12px;align-items:flex-start">{_roc_svg(curves)}{detectors}</div>')
    legend = " · ".join(f'<span style="color:{colour}">■</span> {escape(name)}'
                        for (name, _, _), colour in zip(curves, _ROC_COLOURS))
    parts.append(f'<div style="{NOTE_STYLE}">ROC on held-out prompts: {legend}</div>')
    if features:
        body = "".join(
            f"<tr><td {td}>#{int(f['feature'])} <span style=\"{NOTE_STYLE}\">{escape(f.get('label') or '')}</span></td>"
            f"<td {td}>{escape(format_value(f['auroc']))}</td>"
            f"<td {td}>[{escape(format_value(f['low']))}, {escape(format_value(f['high']))}]</td>"
            f"<td {td}>{escape('' if f.get('density') is None else format_percent(f['density']))}</td>"
            f"<td {td}>{escape(format_value(f['mean_difference']))}</td>"
            f"<td {td}>{escape(f['chosen_in'])}/{escape(view.get('n_folds', 1))}</td></tr>"
            for f in features
        )
        parts.append(f'<table style="border-collapse:collapse;font-size:.85em"><tr><th {th}>latent</th>'
                     f"<th {th}>AUROC alone</th><th {th}>95% interval</th><th {th}>density</th>"
                     f"<th {th}>Δ mean</th><th {th}>chosen</th></tr>{body}</table>")
    curve = view.get("curve") or {}
    sizes = list(curve.get("sizes") or [])
    if sizes:
        cells = "".join(f"<th {th}>{escape(s)}</th>" for s in sizes)
        body = "".join(
            f"<tr><td {td}>{escape(name)}</td>" + "".join(f"<td {td}>{escape(format_value(v))}</td>" for v in values)
            + "</tr>" for name, values in (curve.get("values") or {}).items()
        )
        parts.append(f'<div style="{NOTE_STYLE}">learning curve: held-out AUROC by training prompts per class</div>'
                     f'<table style="border-collapse:collapse;font-size:.85em"><tr><th {th}></th>{cells}</tr>'
                     f"{body}</table>")
    if widget.error:
        parts.append(f"<div><b>Error:</b> {escape(widget.error)}</div>")
    return frame("Probe", "".join(parts))
