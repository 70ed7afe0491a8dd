"""Short automatic labels for SAE features: the tokens a feature fires on and the tokens it promotes.

A feature with no human or Neuronpedia explanation is otherwise a bare number. Its label puts together the two
views that dashboards show first (Neuronpedia's feature page, Anthropic's "Towards Monosemanticity" feature
browser): the tokens at the peaks of its top-activating examples, and the top tokens of its logit lens
(``W_U · (w_dec[f] ⊙ (1 + final_norm.weight))``, see :mod:`~gemscope_widgets.backend.analysis.logit_lens`).

``KeyError/Error → raised, exception`` reads: fires most on "KeyError" and "Error", and pushes the next token
towards "raised" and "exception". Without examples (no statistics yet) only the ``→ ...`` part is given.
An explanation always wins over the automatic label: the user's own label first, then one written by a language
model (:func:`~.explain.explain`, added with :meth:`FeatureLabels.add_explanations`), then an imported one
(Neuronpedia).

Every label has a score (:mod:`.label_scores`: a lookup-table simulation and precision/recall on held-out text).
Once the held-out pass exists (:meth:`FeatureLabels.scores` makes it; first use of the embedded default makes it for
the demo SAE), an automatic label keeps its ``→ promotes`` half only when those tokens, as the next token, predict
the feature's activation with r ≥ :data:`~.label_scores.MIN_FIT`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.analysis.label_scores import (
    MIN_ACTIVE,
    MIN_FIT,
    HeldOutTokens,
    LabelScore,
    LabelScores,
    explanation_words,
    held_out_tokens,
    simulation_scores,
)
from gemscope_widgets.backend.analysis.label_tokens import clean_token, token_set
from gemscope_widgets.backend.analysis.logit_lens import feature_direction, norm_gain
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.errors import LabelScoreError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

MAX_LABEL_CHARS = 40
_N_EXAMPLES = 20  # top examples whose peak tokens vote
_LOGIT_CANDIDATES = 24  # top logit tokens scanned for readable ones
_BATCH = 64  # features per W_U product (a [V, 64] float32 block: 67 MB for Gemma 3's 262k vocabulary)


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
        # [n, V]: each feature's logits contiguous, so topk runs along rows (6x faster than down a [V, n] column)
        logits = dirs.to(w_u.device, w_u.dtype) @ w_u.T
        top = torch.topk(logits.float(), min(_LOGIT_CANDIDATES, logits.shape[1]), dim=1).indices.cpu()
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

    ``scores(features=None)`` gives every label's :class:`~.label_scores.LabelScore` (all features by default, in
    one batched pass; sortable: ``.sorted("simulation")``); ``score(f)`` one. ``held`` (or :meth:`held_out`) is the
    held-out pass they are computed on; ``texts`` replaces its default text (:func:`~.label_scores.label_texts`).
    """

    def __init__(self, gm: GemmaModel, sae: Any, stats: Any = None, *, held: HeldOutTokens | None = None,
                 texts: Sequence[str] | None = None) -> None:
        self.gm = gm
        self.sae = sae
        self.stats = stats
        self.texts = texts
        self._held = held
        self._held_checked = held is not None
        self._auto: dict[int, str] = {}
        self._parts: dict[int, tuple[list[str], list[str], float | None]] = {}
        self._scores: dict[int, LabelScore] = {}
        self._explained: dict[int, tuple[str, str, dict[str, float]]] = {}

    def add_explanations(self, explanations: Iterable[Any]) -> None:
        """Use written explanations (objects with ``feature``, ``text``, ``source`` and ``scores``, e.g.
        :class:`~.explain.Explanation`) as these features' labels, under a user's own label and over an imported
        one; their scores ride along in each :class:`~.label_scores.LabelScore`'s ``imported``."""
        for e in explanations:
            f = self.sae.check_feature(e.feature)
            if e.text:
                self._explained[f] = (str(e.text), str(e.source), dict(e.scores))
                self._scores.pop(f, None)

    def explanation(self, f: int) -> tuple[str, str, dict[str, float]] | None:
        """``(text, source, scores)`` of ``f``'s explanation: the user's label ("user"), else one added by
        :meth:`add_explanations`, else an imported one (its source name); None when it has none."""
        f = int(f)
        stats = self.stats
        text = stats.explanation(f) if stats is not None else None
        if text and stats.explanation_source(f) == "user":
            return text, "user", {}
        if f in self._explained:
            return self._explained[f]
        if text:
            return text, stats.explanation_source(f) or "user", stats.explanation_scores(f)
        return None

    def set_stats(self, stats: Any) -> None:
        """New statistics (a finished scan): labels that used examples are recomputed on next use."""
        self.stats = stats
        self._auto.clear()
        self._parts.clear()
        self._scores.clear()

    def held_out(self, *, compute: bool = True, progress: bool = True) -> HeldOutTokens | None:
        """The held-out activations labels are scored on: kept, else read from the cache, else (``compute``)
        computed and cached (:func:`~.label_scores.held_out_tokens`); ``None`` when neither."""
        if self._held is None and (compute or not self._held_checked):
            self._held = held_out_tokens(self.gm, self.sae, self.texts, compute=compute, progress=progress)
            self._held_checked = True
            if self._held is not None:  # promotes halves are judged now
                self._auto.clear()
                self._parts.clear()
                self._scores.clear()
        return self._held

    def auto(self, f: int) -> str:
        return self.autos([f])[int(f)]

    def autos(self, features: Iterable[int]) -> dict[int, str]:
        wanted = [self.sae.check_feature(f) for f in features]
        missing = list(dict.fromkeys(f for f in wanted if f not in self._auto))
        if missing:
            promotes = top_logit_tokens(self.gm, self.sae, missing)
            held = self.held_out(compute=False)
            fits: dict[int, Any] = {}
            if held is not None:
                sets = {f: token_set(self.gm.tokenizer, promotes[f]) for f in missing}
                fits = simulation_scores(held, sets, next_token=True)
            for f in missing:
                fires_on = peak_tokens(self.stats, f)
                r = fits[f][0] if f in fits else None
                kept = promotes[f] if held is None or (r is not None and r >= MIN_FIT) else []
                self._parts[f] = (fires_on, promotes[f], r)
                self._auto[f] = compose_label(fires_on, kept)
        return {f: self._auto[f] for f in wanted}

    def unlabelled(self, features: Iterable[int] | None = None) -> int:
        """How many of ``features`` (default: all) have no automatic label yet: the work the next :meth:`autos` of
        them does (one ``W_U`` product per 64 features; the first search of a 4096-wide SAE labels them all)."""
        wanted = range(int(self.sae.width)) if features is None else (int(f) for f in features)
        return sum(1 for f in wanted if f not in self._auto)

    def labels(self, features: Iterable[int]) -> dict[int, str]:
        features = [self.sae.check_feature(f) for f in features]
        explained = {}
        for f in features:
            found = self.explanation(f)
            if found is not None:
                explained[f] = found[0]
        autos = self.autos([f for f in features if f not in explained])
        return {f: explained.get(f) or autos[f] for f in features}

    def score(self, f: int, *, compute: bool = True) -> LabelScore:
        """The :class:`~.label_scores.LabelScore` of ``f``'s label (``compute=False``: without computing the
        held-out pass when it is not there yet; the score then says so). :class:`LabelScoreError` when ``f``
        fires on too few held-out tokens to score (:meth:`scores` skips such features and says why)."""
        result = self.scores([f], compute=compute)[int(f)]
        if result.simulation is None and result.n_active < MIN_ACTIVE and self._held is not None and result.label:
            raise LabelScoreError(f"Feature {int(f)}'s label cannot be scored: it {result.reason.split(': ')[0]}.")
        return result

    def scores(self, features: Iterable[int] | None = None, *, compute: bool = True,
               progress: bool = True) -> LabelScores:
        """Every label's score (``features``: default all), in one batched pass over the held-out tokens.

        A label explained by the statistics is scored from its words, an automatic one from its fires-on tokens
        (from its kept promotes tokens, as the next token, when it has no fires-on part); see
        :mod:`~.label_scores`. Imported explanation scores ride along in ``imported``. Kept until the statistics
        or a label change.
        """
        wanted = list(range(int(self.sae.width))) if features is None else [self.sae.check_feature(f)
                                                                             for f in features]
        held = self.held_out(compute=compute, progress=progress)
        labels = self.labels(wanted)
        stale = [f for f in wanted if f not in self._scores or self._scores[f].label != labels[f]]
        if stale:
            self._score(stale, labels, held)
        return LabelScores({f: self._scores[f] for f in wanted})

    def _score(self, features: list[int], labels: dict[int, str], held: HeldOutTokens | None) -> None:
        tok = self.gm.tokenizer
        same: dict[int, frozenset[int]] = {}
        nxt: dict[int, frozenset[int]] = {}
        meta: dict[int, tuple[str, dict[str, float], float | None]] = {}
        for f in features:
            found = self.explanation(f)
            if found is not None:
                meta[f] = (found[1], dict(found[2]), None)
                same[f] = token_set(tok, explanation_words(found[0]))
                continue
            fires_on, promotes, r = self._parts[f]
            meta[f] = ("auto", {}, r)
            if fires_on:
                same[f] = token_set(tok, fires_on)
            else:
                kept = promotes if held is None or (r is not None and r >= MIN_FIT) else []
                nxt[f] = token_set(tok, kept)
        n = held.n_tokens if held is not None else 0
        rows = {} if held is None else {**simulation_scores(held, same), **simulation_scores(held, nxt,
                                                                                               next_token=True)}
        for f in features:
            source, imported, promotes_r = meta[f]
            if held is None:
                row: tuple[Any, ...] = (None, None, None, 0, 0, "the held-out pass has not run yet "
                                        "(scope.labels().scores() runs it)")
            elif not labels[f]:
                row = (None, None, None, rows[f][3], rows[f][4], "no label to score")
            else:
                row = rows[f]
            self._scores[f] = LabelScore(f, labels[f], source, simulation=row[0], precision=row[1], recall=row[2],
                                         n_active=row[3], n_predicted=row[4], n_tokens=n, promotes=promotes_r,
                                         imported=imported, reason=row[5])
