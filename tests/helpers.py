"""Helpers shared by test modules (test modules never import each other).

Fixtures live in tests/fixtures/ (pytest plugins); the tiny model itself in gemscope_widgets.testing.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import torch

STEER_TEXT = "Paris is the capital of France. The quick brown fox"

# A small corpus and scan settings that fill every section of a feature's statistics on the tiny model.
SCAN_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France. The capital of Italy is Rome.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)",
    "Sparse autoencoders find features in the residual stream of a language model.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
    "Gemma reads text and writes text. The lazy dog sleeps.",
    "The capital of France is Paris, and the fox is quick.",
    "Rome, Paris, fox, dog: the residual stream of a model.",
]
SCAN_PARAMS = {"top_k": 6, "n_quantile": 4, "window": (3, 2), "max_doc_tokens": 24, "n_bins": 8}


def hook_ids(module: torch.nn.Module) -> set[tuple[str, str, int]]:
    """Every forward (pre-)hook registered on ``module`` and its children.

    transformers registers hooks of its own (for ``output_hidden_states``), so tests compare this set
    before and after a call instead of expecting none.
    """
    found = set()
    for name, sub in module.named_modules():
        found.update((name, "fwd", k) for k in sub._forward_hooks)
        found.update((name, "pre", k) for k in sub._forward_pre_hooks)
    return found


def active_feature(sae: Any, gm: Any, prompt: str = STEER_TEXT) -> int:
    """The feature with the largest activation on the prompt (so clamp/ablate have something to change)."""
    from gemscope_widgets.backend.gemma.capture import capture

    ids = gm.prompt(prompt).input_ids
    acts = capture(gm, ids, sae.read_hook_points)
    xs = {h: acts[h][0, 1:] for h in sae.read_hook_points}
    peaks = [float(sae.feature_activation(f, xs).max()) for f in range(sae.width)]
    best = max(range(sae.width), key=peaks.__getitem__)
    assert peaks[best] > 0, "no feature fires on the prompt; the clamp tests would prove nothing"
    return best


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)


def assert_inert(html: str) -> None:
    """Parsed as a browser would: only plain layout tags and style/title/class attributes; no script, no event
    handler, no external resource, nothing made from text."""
    parser = _Tags()
    parser.feed(html)
    assert parser.tags <= {"div", "span", "b", "table", "tr", "td", "th", "ul", "li"}, parser.tags
    assert parser.attrs <= {"style", "title", "class"}, parser.attrs


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def static_of(widget: Any) -> str:
    """A widget's script-free ``text/html`` fallback, checked inert; the live view stays first in the bundle."""
    data, _meta = widget._repr_mimebundle_()
    assert WIDGET_VIEW in data, "the live widget view stays first in the bundle"
    html = str(data["text/html"])
    assert_inert(html)
    return html


def token_activations(gm: Any, sae: Any, texts: list[str], max_doc_tokens: int) -> torch.Tensor:
    """Dense ``[N, W]`` activations of a one-layer SAE on every unmasked token of ``texts``, by hand: one
    document at a time (no padding), a plain forward hook on the layer, ``relu(pre) * (pre > threshold)``."""
    from gemscope_widgets.backend.gemma.prompts import masked_ids
    from gemscope_widgets.backend.gemma.sites import parse_hook_point
    from gemscope_widgets.backend.stats.corpus import tokenize_docs

    layer, sub, kind = parse_hook_point(sae.config.hook_in)
    assert not sub and kind == "output", "resid_post SAEs only"
    hidden = sorted(masked_ids(gm.tokenizer))
    rows = []
    for ids in tokenize_docs(gm, texts, max_doc_tokens):
        seen: dict[str, torch.Tensor] = {}
        h = gm.layers[layer].register_forward_hook(
            lambda m, a, o, seen=seen: seen.__setitem__("x", o[0] if isinstance(o, tuple) else o)
        )
        with torch.no_grad():
            gm.model(input_ids=torch.tensor([ids]))
        h.remove()
        keep = ~torch.isin(torch.tensor(ids), torch.tensor(hidden))
        x = seen["x"][0][keep].float()
        pre = x @ sae.w_enc + sae.b_enc
        rows.append(torch.where(pre > sae.threshold, pre, torch.zeros(())))
    return torch.cat(rows)
