"""Behaviour evidence against the plain batched forward passes it needs, interleaved in one process.

``run(gm, sae, repeats=3) -> dict`` with, for each case, our time, the bare time and ``ratio`` (target ≤ 1.3), the
medians of wall seconds; beside them the medians of process CPU seconds and their ``cpu_ratio`` (steadier on a
shared machine, where wall time stretches with the load), and the load average before and after:

* ``probe``: :func:`probe` on 256 + 256 prompts (the refusal sets under eight framings; held-out split, learning
  curve, bootstrap intervals), against one plain forward of the same pre-tokenised prompts in padded batches of
  :data:`BATCH`, stopped after the SAE's layer (the SAE encode and the scikit-learn fits are ours alone);
* ``entities``: :func:`entity_knowledge` of the built-in entity set, against what it needs done plainly: the
  first questions' prompts forwarded to the SAE's layer in padded batches, and every question answered by Hugging
  Face ``generate`` in left-padded batches of :data:`BATCH` (greedy, ``MAX_ANSWER_TOKENS`` new tokens, KV cache).

``python -m benchmarks.evidence_case [--smoke] [--repeats N] [--warmup N] [--only probe|entities] [--out FILE]`` runs
this case alone (the embedded 270M with the demo SAE, or the tiny random model with a random SAE) and prints the JSON
(and writes it to ``FILE``, e.g. ``benchmarks/results/evidence_cpu.json``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import statistics
import sys
import warnings
from typing import Any

import torch

from .harness import cpu_seconds, error_text, fix_threads, time_interleaved

BATCH = 32
FRAMINGS = (
    "{}", "Please answer: {}", "Quick question. {}", "{} Thanks!", "I need help. {}", "{} Be brief.",
    "Hi there. {}", "{} Explain simply.",
)
"""Eight framings of each of the 32 + 32 built-in refusal-set requests: 256 prompts per class."""


class _Stop(Exception):
    pass


def _rows(ids: list[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in ids)
    fill = [[pad] * (width - len(r)) for r in ids]
    rows = [f + r if left else r + f for r, f in zip(ids, fill)]
    mask = [[0] * len(f) + [1] * len(r) if left else [1] * len(r) + [0] * len(f) for r, f in zip(ids, fill)]
    return torch.tensor(rows), torch.tensor(mask)


def bare_forward(gm: Any, ids: list[list[int]], layer: int, batch: int = BATCH) -> None:
    """Plain forwards of the decoder over ``ids`` in right-padded batches, stopped by a raising hook after
    ``layer`` (no capture, no tokeniser, no SAE)."""

    def stop(*_: Any) -> None:
        raise _Stop

    handle = gm.layers[layer].register_forward_hook(stop)
    try:
        for start in range(0, len(ids), batch):
            x, mask = _rows(ids[start : start + batch], 0, left=False)
            with torch.inference_mode(), contextlib.suppress(_Stop):
                gm.text_model(input_ids=x.to(gm.device), attention_mask=mask.to(gm.device), use_cache=False)
    finally:
        handle.remove()


def bare_generate(gm: Any, ids: list[list[int]], max_new_tokens: int, batch: int = BATCH) -> None:
    """Greedy answers to every prompt with Hugging Face ``generate``, left-padded batches, KV cache."""
    pad = int(gm.tokenizer.pad_token_id)
    for start in range(0, len(ids), batch):
        x, mask = _rows(ids[start : start + batch], pad, left=True)
        with torch.inference_mode():
            gm.model.generate(
                input_ids=x.to(gm.device), attention_mask=mask.to(gm.device), max_new_tokens=max_new_tokens,
                do_sample=False, top_p=None, top_k=None, pad_token_id=pad,
            )


def probe_prompts() -> tuple[list[str], list[str]]:
    """256 + 256 prompts: the built-in refusal sets under :data:`FRAMINGS`."""
    from gemscope_widgets.backend.behaviour.prompt_sets import HARMFUL_REQUESTS, HARMLESS_REQUESTS

    positive = [f.format(p) for f in FRAMINGS for p in HARMFUL_REQUESTS]
    negative = [f.format(p) for f in FRAMINGS for p in HARMLESS_REQUESTS]
    return positive, negative


def _with_cpu(fns: dict[str, Any], cpu: dict[str, list[float]]) -> dict[str, Any]:
    """``fns`` each wrapped to append its process CPU seconds to ``cpu[name]`` (warm-up runs included)."""

    def wrap(name: str, fn: Any) -> Any:
        def call() -> None:
            start = cpu_seconds()
            fn()
            cpu.setdefault(name, []).append(cpu_seconds() - start)

        return call

    return {name: wrap(name, fn) for name, fn in fns.items()}


def _ratio(
    out: dict[str, Any], key: str, timings: dict[str, Any], note: str, cpu: dict[str, list[float]], warmup: int
) -> None:
    ours, bare = timings["ours"], timings["bare"]
    for t in (ours, bare):
        if isinstance(t, BaseException):
            out[f"{key}_error"] = error_text(t)
            return
    out[f"{key}_ratio"] = ours.median / bare.median
    out[f"{key}_ours_s"] = ours.median
    out[f"{key}_bare_s"] = bare.median
    ours_cpu, bare_cpu = (statistics.median(cpu[name][warmup:]) for name in ("ours", "bare"))
    out[f"{key}_cpu_ratio"] = ours_cpu / bare_cpu
    out[f"{key}_ours_cpu_s"] = ours_cpu
    out[f"{key}_bare_cpu_s"] = bare_cpu
    out[f"{key}_runs"] = {name: {"wall_s": [round(r, 3) for r in timings[name].runs],
                                 "cpu_s": [round(r, 3) for r in cpu[name][warmup:]]} for name in ("ours", "bare")}
    out[f"{key}_what"] = note


def run(gm: Any, sae: Any, repeats: int = 3, *, only: str | None = None, warmup: int = 1) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    out: dict[str, Any] = {"target": "each ratio ≤ 1.3", "warmup": warmup, "repeats": repeats,
                           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                           "load_average_before": round(os.getloadavg()[0], 2)}
    layer = int(sae.config.layer)
    if only != "entities":
        _probe_case(gm, sae, layer, repeats, warmup, out)
    if only != "probe":
        _entities_case(gm, sae, layer, repeats, warmup, out)
    out["load_average_after"] = round(os.getloadavg()[0], 2)
    return out


def _probe_case(gm: Any, sae: Any, layer: int, repeats: int, warmup: int, out: dict[str, Any]) -> None:
    from gemscope_widgets.backend.behaviour.probe import probe

    positive, negative = probe_prompts()
    ids = [gm.prompt(p).input_ids.tolist() for p in positive + negative]
    cpu: dict[str, list[float]] = {}
    timings = time_interleaved(_with_cpu({
        "ours": lambda: probe(gm, sae, positive, negative, chat=False, progress=False),
        "bare": lambda: bare_forward(gm, ids, layer),
    }, cpu), repeats=repeats, warmup=warmup)
    _ratio(out, "probe", timings, f"{len(positive)} + {len(negative)} prompts, SAE width {sae.width}; bare: "
           f"{len(ids)} forwards to layer {layer} in batches of {BATCH}", cpu, warmup)


def _entities_case(gm: Any, sae: Any, layer: int, repeats: int, warmup: int, out: dict[str, Any]) -> None:
    from gemscope_widgets.backend.behaviour.entities import (
        MAX_ANSWER_TOKENS,
        entity_knowledge,
        load_entities,
        question_prompt,
    )

    entities = load_entities()
    first = [gm.prompt(question_prompt(e, e.questions[0])).input_ids.tolist() for e in entities]
    asked = [gm.prompt(question_prompt(e, q)).input_ids.tolist() for e in entities for q in e.questions]

    def bare_entities() -> None:
        bare_forward(gm, first, layer)
        bare_generate(gm, asked, MAX_ANSWER_TOKENS)

    cpu: dict[str, list[float]] = {}
    timings = time_interleaved(_with_cpu({
        "ours": lambda: entity_knowledge(gm, sae, min_right=1, progress=False),
        "bare": bare_entities,
    }, cpu), repeats=repeats, warmup=warmup)
    _ratio(out, "entities", timings, f"{len(entities)} entities, {len(asked)} questions; bare: {len(first)} forwards "
           f"to layer {layer} + {len(asked)} greedy answers of {MAX_ANSWER_TOKENS} tokens, batches of {BATCH}",
           cpu, warmup)


def main(argv: list[str]) -> int:
    """This case alone: the embedded 270M with its demo SAE (``--smoke``: the tiny model, a random SAE)."""
    from gemscope_widgets.backend.gemma.model import load_model

    fix_threads()
    repeats = 1 if "--smoke" in argv else int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else 3
    if "--smoke" in argv:
        from gemscope_widgets.cache import cache_dir

        from . import sae_fixture
        from .tiny import build_tiny_checkpoint

        gm = load_model(str(build_tiny_checkpoint(cache_dir("bench", "tiny-gemma3"))), dtype="float32",
                        progress=False)
        folder = sae_fixture.ensure_fixture(gm, cache_dir("bench", "sae", "tiny-gemma3"), gm.n_layers // 2, 512)
        sae = sae_fixture.load_fixture(folder)
    else:
        from gemscope_widgets.backend.default import load_default

        gm, sae = load_default(dtype="float32", progress=False, stats=False)
    only = argv[argv.index("--only") + 1] if "--only" in argv else None
    warmup = int(argv[argv.index("--warmup") + 1]) if "--warmup" in argv else 1
    result = {"date": datetime.date.today().isoformat(), "model": "tiny random" if "--smoke" in argv else gm.name,
              **run(gm, sae, repeats=repeats, only=only, warmup=warmup)}
    text = json.dumps(result, indent=1)
    print(text)
    if "--out" in argv:
        with open(argv[argv.index("--out") + 1], "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
