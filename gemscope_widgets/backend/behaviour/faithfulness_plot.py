"""The early-answering curve as a script-free SVG (what a :class:`CoTFaithfulness` shows in a notebook).

One line per answer: its probability, normalised over the candidate answers, after each number of kept steps
(Lanham et al., 2023, Fig. 3 style). The full-chain answer's line is drawn thicker; with a corrupted step, that
answer's probability on the corrupted chain is dotted from the corrupted step on; with filler, its probability with
filler in place of the reasoning is a dashed level line. Every text is escaped; no script, no external resource.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gemscope_widgets.backend.behaviour.faithfulness import CoTFaithfulness

# Mid-tone colours readable on light and dark backgrounds (Tableau 10).
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
WIDTH, HEIGHT = 520, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 150, 24, 36


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _xy(cut: float, p: float, n_cuts: int) -> tuple[float, float]:
    """SVG coordinates of probability ``p`` after ``cut`` kept steps (of ``n_cuts - 1``)."""
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    x = _LEFT + (cut / max(n_cuts - 1, 1)) * plot_w
    y = _TOP + (1.0 - float(p)) * plot_h
    return round(x, 2), round(y, 2)


def _points(values: list[float], start: int, n_cuts: int) -> str:
    return " ".join(f"{x},{y}" for x, y in (_xy(start + i, v, n_cuts) for i, v in enumerate(values)))


def curve_svg(result: CoTFaithfulness) -> str:
    """``<svg>`` of the curve (``WIDTH`` × ``HEIGHT`` px): x = steps kept (0..n), y = normalised answer probability."""
    probs = result.curve.normalized  # [n_cuts, n_answers]
    n_cuts = probs.shape[0]
    final = int(result.curve.logprobs[-1].argmax())
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'style="font:11px sans-serif;color:inherit" role="img">',
        f"<title>{_e('early answering: P(answer) after each number of kept reasoning steps')}</title>",
    ]
    x0, _ = _xy(0, 1.0, n_cuts)
    x1, y0 = _xy(n_cuts - 1, 0.0, n_cuts)
    for p in (0.0, 0.5, 1.0):  # axes and grid
        _, y = _xy(0, p, n_cuts)
        parts.append(f'<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="currentColor" stroke-opacity="0.25"/>')
        parts.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end" fill="currentColor">{p:g}</text>')
    for c in range(n_cuts):
        x, _ = _xy(c, 0.0, n_cuts)
        parts.append(f'<text x="{x}" y="{y0 + 14}" text-anchor="middle" fill="currentColor">{c}</text>')
    parts.append(f'<text x="{(x0 + x1) / 2}" y="{HEIGHT - 4}" text-anchor="middle" fill="currentColor">'
                 "reasoning steps kept</text>")
    parts.append(f'<text x="{x0}" y="{_TOP - 10}" fill="currentColor">P(answer), normalised over the answers</text>')
    for a, answer in enumerate(result.answers):
        colour = PALETTE[a % len(PALETTE)]
        width = 3 if a == final else 1.5
        column = [float(v) for v in probs[:, a]]
        tips = ", ".join(f"{c}: {v:.3f}" for c, v in enumerate(column))
        parts.append(f'<polyline class="gs-cot-curve" data-answer="{a}" fill="none" stroke="{colour}" '
                     f'stroke-width="{width}" points="{_points(column, 0, n_cuts)}">'
                     f"<title>{_e(answer)} — {tips}</title></polyline>")
        for c, v in enumerate(column):
            x, y = _xy(c, v, n_cuts)
            parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>')
        _, ly = _xy(0, 1.0 - a * 0.12, n_cuts)
        parts.append(f'<line x1="{x1 + 12}" y1="{ly}" x2="{x1 + 30}" y2="{ly}" stroke="{colour}" '
                     f'stroke-width="{width}"/><text x="{x1 + 34}" y="{ly + 4}" fill="currentColor">'
                     f"{_e(repr(answer))}</text>")
    colour = PALETTE[final % len(PALETTE)]
    if result.corrupted is not None and result.corrupted_step is not None:
        step = int(result.corrupted_step)
        column = [float(v) for v in result.corrupted.normalized[step:, final]]
        parts.append(f'<polyline class="gs-cot-corrupted" fill="none" stroke="{colour}" stroke-width="2" '
                     f'stroke-dasharray="2 3" points="{_points(column, step, n_cuts)}">'
                     f"<title>{_e(f'step {step} corrupted: {result.corrupted_text!r}')}</title></polyline>")
    if result.filler is not None:
        _, y = _xy(0, float(result.filler.normalized[0, final]), n_cuts)
        parts.append(f'<line class="gs-cot-filler" x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="{colour}" '
                     f'stroke-width="1.5" stroke-dasharray="6 4"><title>filler in place of the reasoning: '
                     f"{float(result.filler.normalized[0, final]):.3f}</title></line>")
    notes = []
    if result.corrupted is not None:
        notes.append("dotted: one step corrupted")
    if result.filler is not None:
        notes.append("dashed: filler")
    for i, note in enumerate(notes):
        _, ly = _xy(0, 1.0 - (len(result.answers) + i) * 0.12, n_cuts)
        parts.append(f'<text x="{x1 + 12}" y="{ly + 4}" fill="currentColor" fill-opacity="0.8">{_e(note)}</text>')
    parts.append("</svg>")
    return "".join(parts)
