"""Short automatic labels for SAE features: the tokens a feature fires on and the tokens it promotes.

A feature with no human or Neuronpedia explanation is otherwise a bare number. Its label puts together the two
views that dashboards show first (Neuronpedia's feature page, Anthropic's "Towards Monosemanticity" feature
browser): the tokens at the peaks of its top-activating examples, and the top tokens of its logit lens
(``W_U · (w_dec[f] ⊙ (1 + final_norm.weight))``, see :mod:`~gemscope_widgets.backend.analysis.logit_lens`).

``KeyError/Error → raised, exception`` reads: fires most on "KeyError" and "Error", and pushes the next token
towards "raised" and "exception". Without examples (no statistics yet) only the ``→ ...`` part is given.
An explanation (a user label or an imported Neuronpedia one) always wins over the automatic label.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.analysis.logit_lens import feature_direction, norm_gain
from gemscope_widgets.backend.gemma.prompts import token_strings

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

MAX_LABEL_CHARS = 40
_MAX_TOKEN_CHARS = 14
_N_EXAMPLES = 20  # top examples whose peak tokens vote
_LOGIT_CANDIDATES = 24  # top logit tokens scanned for readable ones
_BATCH = 64  # features per W_U product (a [V, 64] float32 block: 67 MB for Gemma 3's 262k vocabulary)


def clean_token(token: str) -> str:
    """A token as a label shows it: whitespace trimmed, control tokens and byte pieces dropped ("" then)."""
    text = token.strip().replace("\u2581", "")
    if not text or (text.startswith("<") and text.endswith(">")) or "\ufffd" in text:
        return ""
    if not text.isprintable():
        return ""
    return text if len(text) <= _MAX_TOKEN_CHARS else text[: _MAX_TOKEN_CHARS - 1] + "…"


def _readable(tokens: Iterable[str], k: int) -> list[str]:
    """The first ``k`` distinct (case-insensitively) cleaned tokens, words and numbers before punctuation."""
    cleaned = [t for t in (clean_token(tok) for tok in tokens) if t]
    words = [t for t in cleaned if any(c.isalnum() for c in t)]
    chosen: list[str] = []
    seen: set[str] = set()
    for t in words + [t for t in cleaned if t not in words]:
        if t.lower() not in seen:
            seen.add(t.lower())
            chosen.append(t)
        if len(chosen) == k:
            break
    return chosen


def peak_tokens(stats: Any, f: int, k: int = 2) -> list[str]:
    """Up to ``k`` tokens feature ``f`` fires on most: its top examples' peak tokens, weighted by activation."""
    if stats is None:
        return []
    votes: dict[str, float] = {}
    for example in stats.examples(f, kind="top", count=_N_EXAMPLES):
        if 0 <= example.peak < len(example.tokens):
            token = clean_token(example.tokens[example.peak])
            if token:
                votes[token] = votes.get(token, 0.0) + max(float(example.value), 0.0)
    return _readable(sorted(votes, key=lambda t: -votes[t]), k)


@torch.inference_mode()
def top_logit_tokens(gm: GemmaModel, sae: Any, features: Sequence[int], k: int = 2) -> dict[int, list[str]]:
    """For each feature, up to ``k`` readable tokens among the ones its decoder direction promotes most.

    One ``W_U`` product per batch of features; the same ranking as
    :func:`~gemscope_widgets.backend.analysis.logit_lens.logit_lens`.
    """
    features = [sae.check_feature(f) for f in features]
    w_u = gm.lm_head.weight.detach()
    gain = norm_gain(gm.final_norm).cpu()
    out: dict[int, list[str]] = {}
    for start in range(0, len(features), _BATCH):
        chunk = features[start : start + _BATCH]
        dirs = torch.stack([feature_direction(gm, sae, f) * gain for f in chunk])  # [n, d]
        logits = w_u @ dirs.T.to(w_u.device, w_u.dtype)  # [V, n]
        top = torch.topk(logits.float(), min(_LOGIT_CANDIDATES, logits.shape[0]), dim=0).indices.T.cpu()
        for f, ids in zip(chunk, top.tolist(), strict=True):
            out[f] = _readable(token_strings(gm.tokenizer, ids), k)
    return out


def compose_label(fires_on: Sequence[str], promotes: Sequence[str]) -> str:
    """``"a/b → c, d"``, cut to :data:`MAX_LABEL_CHARS` (with "…")."""
    left = "/".join(fires_on)
    right = ", ".join(promotes)
    label = f"{left} → {right}" if left and right else left or (f"→ {right}" if right else "")
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"


class FeatureLabels:
    """Labels for one model + SAE (+ optional statistics), computed on demand and kept.

    ``labels([f, ...])`` returns ``{f: text}``: the explanation when the statistics have one (user or
    Neuronpedia), otherwise the automatic label. ``auto(f)`` is always the automatic one. Cheap after the first
    call per feature: a batch of 64 features costs one ``[V, d] @ [d, 64]`` product.
    """

    def __init__(self, gm: GemmaModel, sae: Any, stats: Any = None) -> None:
        self.gm = gm
        self.sae = sae
        self.stats = stats
        self._auto: dict[int, str] = {}

    def set_stats(self, stats: Any) -> None:
        """New statistics (a finished scan): labels that used examples are recomputed on next use."""
        self.stats = stats
        self._auto.clear()

    def auto(self, f: int) -> str:
        return self.autos([f])[int(f)]

    def autos(self, features: Iterable[int]) -> dict[int, str]:
        wanted = [self.sae.check_feature(f) for f in features]
        missing = list(dict.fromkeys(f for f in wanted if f not in self._auto))
        if missing:
            promotes = top_logit_tokens(self.gm, self.sae, missing)
            for f in missing:
                self._auto[f] = compose_label(peak_tokens(self.stats, f), promotes[f])
        return {f: self._auto[f] for f in wanted}

    def labels(self, features: Iterable[int]) -> dict[int, str]:
        features = [self.sae.check_feature(f) for f in features]
        explained = {}
        if self.stats is not None:
            for f in features:
                text = self.stats.explanation(f)
                if text:
                    explained[f] = text
        autos = self.autos([f for f in features if f not in explained])
        return {f: explained.get(f) or autos[f] for f in features}
