"""Behaviour tools against the bare forward passes they need, interleaved in one process.

``run(gm, sae, repeats=3) -> dict`` with, for each case, our time, the bare time and ``ratio`` (target ≤ 1.3):

* ``direction``: :func:`behaviour_direction` from 64 + 64 chat prompts with the layer chosen over the first 80%
  of layers, against one Hugging Face forward per prompt stopped after the deepest candidate layer (pre-tokenised);
* ``contrast``: :func:`contrast` of two 128-token prompts (span ``all``), against two forwards stopped after the
  SAE's layer (the SAE encode and ranking are ours alone);
* ``early_answering``: the curve of :func:`cot_faithfulness` over 8 cuts (no filler, no corruption; the answers
  ``" 4"``, ``" 5"``, ``" 6"`` are two tokens each, ``▁`` + digit), against one full forward per cut over the
  truncated text and the answers' shared first token, no KV cache (ours reuses the full chain's prefix cache).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch

from .harness import error_text, time_interleaved

COT_STEPS = [
    "Tom starts with 3 apples.", "He buys 2 more apples.", "Then he gives 1 apple to Ann.",
    "So he has 3 plus 2 minus 1 apples.", "3 plus 2 is 5.", "5 minus 1 is 4.", "He has 4 apples now.",
]
QUESTION = "Tom has 3 apples, buys 2 more and gives 1 away. How many apples does he have?"


class _Stop(Exception):
    pass


def _bare_forward(gm: Any, ids: torch.Tensor, layer: int) -> None:
    """A plain forward of the decoder, stopped by a raising hook after ``layer`` (no capture, no tokeniser)."""

    def stop(*_: Any) -> None:
        raise _Stop

    handle = gm.layers[layer].register_forward_hook(stop)
    try:
        with torch.inference_mode(), contextlib.suppress(_Stop):
            gm.text_model(input_ids=ids[None].to(gm.device), use_cache=False)
    finally:
        handle.remove()


def _ratio(out: dict[str, Any], key: str, timings: dict[str, Any], note: str) -> None:
    """Flat entries ``{key}_ratio``, ``{key}_ours_s``, ``{key}_bare_s``, ``{key}_what`` (or ``{key}_error``)."""
    ours, bare = timings["ours"], timings["bare"]
    for t in (ours, bare):
        if isinstance(t, BaseException):
            out[f"{key}_error"] = error_text(t)
            return
    out[f"{key}_ratio"] = ours.median / bare.median
    out[f"{key}_ours_s"] = ours.median
    out[f"{key}_bare_s"] = bare.median
    out[f"{key}_what"] = note


def run(gm: Any, sae: Any, repeats: int = 3) -> dict[str, Any]:
    from gemscope_widgets.backend.behaviour.contrast import contrast
    from gemscope_widgets.backend.behaviour.direction import CANDIDATE_FRACTION, behaviour_direction
    from gemscope_widgets.backend.behaviour.faithfulness import cot_faithfulness
    from gemscope_widgets.backend.behaviour.prompt_sets import HARMFUL_REQUESTS, HARMLESS_REQUESTS

    from .texts import exact_prompt, long_text

    warnings.filterwarnings("ignore")
    out: dict[str, Any] = {"target": "each ratio ≤ 1.3"}
    positive = [*HARMFUL_REQUESTS, *(f"Please answer: {p}" for p in HARMFUL_REQUESTS)]
    negative = [*HARMLESS_REQUESTS, *(f"Please answer: {p}" for p in HARMLESS_REQUESTS)]
    deepest = max(1, int(gm.n_layers * CANDIDATE_FRACTION)) - 1
    ids = [gm.prompt([{"role": "user", "content": p}]).input_ids for p in positive + negative]
    timings = time_interleaved({
        "ours": lambda: behaviour_direction(gm, positive, negative, chat=True, progress=False),
        "bare": lambda: [_bare_forward(gm, x, deepest) for x in ids],
    }, repeats=repeats)
    _ratio(out, "direction", timings, f"64 + 64 chat prompts, layer chosen; bare: {len(ids)} forwards to layer "
           f"{deepest}")

    text = long_text(4000)
    a = exact_prompt(gm, text, 128)
    b = exact_prompt(gm, text[len(text) // 3 :], 128)
    layer = sae.config.layer
    timings = time_interleaved({
        "ours": lambda: contrast(gm, sae, a, b, span="all"),
        "bare": lambda: [_bare_forward(gm, p.input_ids, layer) for p in (a, b)],
    }, repeats=repeats)
    _ratio(out, "contrast", timings, f"two 128-token prompts, SAE width {sae.width}; bare: 2 forwards to layer "
           f"{layer}")

    cot = " ".join(COT_STEPS)
    cue = " So the answer is"
    answers = [" 4", " 5", " 6"]
    answer_ids = [gm.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    stems = {tuple(a[:-1]) for a in answer_ids}  # " 4" = "▁" + "4": every answer is read after the same stem
    contexts = [gm.prompt(QUESTION + "\n" + " ".join(COT_STEPS[:k]) + cue).input_ids.tolist() for k in range(8)]

    def bare_curve() -> None:
        """What a direct computation needs: per cut, one forward over the truncated text followed by each distinct
        answer stem (one row here), batched, logits kept at the scored positions only."""
        for x in contexts:
            rows = [x + list(stem) for stem in stems]
            width = max(len(r) for r in rows)
            batch = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=gm.device)
            with torch.inference_mode():
                gm.model(input_ids=batch, use_cache=False, logits_to_keep=width - len(x) + 1)

    timings = time_interleaved({
        "ours": lambda: cot_faithfulness(gm, QUESTION, cot, cue, answers, chat=False, filler=None, corrupt=False,
                                         progress=False),
        "bare": bare_curve,
    }, repeats=repeats)
    _ratio(out, "early_answering", timings, f"8 cuts, answers {answers} ({len(answer_ids[0])} tokens each); bare: "
           f"8 full forwards of the truncated text + the answers' shared stem, no cache")
    return out
