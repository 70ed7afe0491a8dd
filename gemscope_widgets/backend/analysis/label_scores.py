"""How well a feature's label fits: a simulation score and precision/recall on held-out text, with no language model.

A label names tokens, so it can predict where the feature fires. The simulator is a lookup table (the LLM-free
baseline of Bills et al., "Language models can explain neurons in language models", 2023, and of EleutherAI's
``delphi``): it predicts ``p_t = 1`` for a held-out token ``t`` when the token is in the label's token set ``S``,
else ``p_t = 0``. With ``a_t`` the feature's true activation (0 where it does not fire) over the ``N`` held-out
tokens::

    simulation r = Pearson(p, a)
                 = (N·Σ p·a − Σp·Σa) / sqrt((N·Σp − (Σp)²) · (N·Σa² − (Σa)²))      (0 when p or a is constant)
    precision    = #{t : p_t = 1 and a_t > 0} / #{t : p_t = 1}                       (None when Σp = 0)
    recall       = #{t : p_t = 1 and a_t > 0} / #{t : a_t > 0}

A feature with fewer than :data:`MIN_ACTIVE` held-out activating tokens is not scored (its score says so).

The token set ``S`` of a label (matching is on :func:`~.label_tokens.clean_token` text, case-insensitively):

- an automatic label ``a/b → c, d``: its *fires-on* tokens ``a``, ``b`` (every vocabulary entry whose cleaned text is
  one of them) predict activation at the same token. Its *promotes* half ``c, d`` claims the feature fires before
  those tokens: it is scored on its own with ``p_t = 1`` when the **next** token is one of them. The promotes half
  is kept in the label only when its r is at least :data:`MIN_FIT`; otherwise it is dropped as logit-lens noise.
- a text explanation (a user's label or an imported one): every vocabulary entry whose cleaned text equals a word
  of it (``\\w+`` runs, and the text inside quotes or backticks), except the function words of :data:`STOP_WORDS`.

Held-out text: the default corpus's documents after the :data:`SCANNED_DOCS` that the default statistics scan reads
(:func:`label_texts`), so no token that chose a label's peak tokens is ever scored; pass other ``texts`` for
statistics of another corpus. One early-exit forward pass over them (:func:`held_out_tokens`) keeps every non-zero
activation of every feature (COO, a few MB) and is cached beside the statistics (``cache_dir("stats", ...)``, keyed
by model, SAE and texts like a scan); scores for any set of labels are then computed from it for all features at
once (:func:`simulation_scores`: a membership test over the non-zero entries, no loop over features).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from gemscope_widgets.backend.analysis.features import sae_inputs
from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.gemma.prompts import masked_ids
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.stats import store
from gemscope_widgets.backend.stats.corpus import (
    corpus_fingerprint,
    default_corpus,
    pad_batch,
    plan_batches,
    tokenize_docs,
)
from gemscope_widgets.backend.stats.scan import encode_entries
from gemscope_widgets.cache import cache_dir, key_digest, name_slug
from gemscope_widgets.errors import LabelScoreError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

MIN_ACTIVE = 5
"""Held-out activating tokens a feature needs for its label to be scored."""
MIN_FIT = 0.1
"""Smallest simulation r for which an automatic label keeps its "→ promotes" half."""
SCANNED_DOCS = 2000
"""Documents of the default corpus that the default statistics scan reads (``default_corpus()``)."""
HELD_OUT_DOCS = 400
"""Documents after those that :func:`label_texts` gives (about 25k tokens at 128 tokens a document)."""
MAX_DOC_TOKENS = 128
FORMAT = 1
STOP_WORDS = frozenset((
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "not", "no", "is",
    "are", "be", "as", "it", "its", "this", "that", "these", "those", "which", "token", "tokens", "word", "words",
    "mention", "mentions", "mentioning", "reference", "references", "referring", "related", "text", "phrase",
    "phrases", "about", "like", "such", "e", "g", "i",
))
"""Words of a text explanation that name no token of their own."""
_QUOTED = re.compile(r"[\"'`“”‘’]([^\"'`“”‘’]{1,40})[\"'`“”‘’]")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class HeldOutTokens:
    """Every non-zero activation of one SAE over held-out text.

    ``ids [N]`` int64: the scored tokens (``<bos>``/``<pad>`` left out); ``next_ids [N]`` int64: the token after
    each in its document (-1 at a document's end); ``token, feature [nnz]`` int64 and ``value [nnz]`` float32: the
    non-zero activations (``token`` indexes ``ids``); ``width``: the SAE's number of features; ``texts``: a hash
    of the held-out texts.
    """

    ids: torch.Tensor
    next_ids: torch.Tensor
    token: torch.Tensor
    feature: torch.Tensor
    value: torch.Tensor
    width: int
    texts: str = ""

    @property
    def n_tokens(self) -> int:
        return int(self.ids.numel())

    def activations(self, f: int) -> torch.Tensor:
        """Feature ``f``'s activation on every held-out token, ``[N]`` float32 (for checks and small cases)."""
        out = torch.zeros(self.n_tokens, dtype=torch.float32)
        hit = self.feature == int(f)
        out[self.token[hit]] = self.value[hit]
        return out

    def mean_activation(self) -> torch.Tensor:
        """Every feature's mean activation over the held-out tokens, ``[W]`` float32."""
        sums = torch.zeros(self.width, dtype=torch.float64).index_add_(0, self.feature, self.value.double())
        return (sums / max(1, self.n_tokens)).float()


@dataclass(frozen=True)
class LabelScore:
    """How well ``label`` fits feature ``feature`` (see the module docstring for the formulas).

    ``source``: "auto", "user" or the import's name ("neuronpedia"); ``simulation``: Pearson r of the lookup-table
    simulation on held-out tokens (None when not scored: ``reason`` says why); ``precision``, ``recall`` (None when
    undefined); ``n_active``: held-out tokens where the feature fires; ``n_predicted``: where the label predicts it;
    ``n_tokens``: held-out tokens; ``promotes``: r of an automatic label's "→ promotes" half (next-token
    predictor; None otherwise); ``imported``: scores that came with an imported explanation, ``{"type (model)":
    value}`` (e.g. Neuronpedia's ``eleuther_fuzz``, ``eleuther_recall``).
    """

    feature: int
    label: str
    source: str
    simulation: float | None
    precision: float | None
    recall: float | None
    n_active: int
    n_predicted: int
    n_tokens: int
    promotes: float | None = None
    imported: dict[str, float] = field(default_factory=dict)
    reason: str = ""


class LabelScores(Mapping[int, LabelScore]):
    """``{feature: LabelScore}`` with :meth:`sorted`; iteration is by feature index."""

    def __init__(self, scores: Mapping[int, LabelScore]) -> None:
        self._scores = dict(sorted(scores.items()))

    def __getitem__(self, f: int) -> LabelScore:
        return self._scores[int(f)]

    def __iter__(self) -> Iterator[int]:
        return iter(self._scores)

    def __len__(self) -> int:
        return len(self._scores)

    def sorted(self, by: str = "simulation", *, descending: bool = True) -> list[LabelScore]:
        """Scores ordered by ``by`` ("simulation", "precision", "recall", "n_active", "promotes"); unscored
        ones (None) last. :class:`LabelScoreError` for another key."""
        keys = ("simulation", "precision", "recall", "n_active", "promotes")
        if by not in keys:
            raise LabelScoreError(f"Sort label scores by one of {keys}, not {by!r}.")
        sign = -1.0 if descending else 1.0
        return sorted(self._scores.values(),
                      key=lambda s: (getattr(s, by) is None, sign * float(getattr(s, by) or 0.0), s.feature))

    def __repr__(self) -> str:
        scored = [s for s in self._scores.values() if s.simulation is not None]
        return f"LabelScores({len(self)} labels, {len(scored)} scored)"


# ---------------------------------------------------------------------- held-out activations


def label_texts(max_docs: int = HELD_OUT_DOCS) -> list[str]:
    """The default corpus's documents after the first :data:`SCANNED_DOCS` (never read by the default scan)."""

    return default_corpus(max_docs=None)[SCANNED_DOCS : SCANNED_DOCS + max_docs]


def held_out_tokens(gm: GemmaModel, sae: Any, texts: Sequence[str] | None = None, *, cache: bool = True,
                    compute: bool = True, progress: bool = True, batch_size: int = 16,
                    act_budget: int = 2**24) -> HeldOutTokens | None:
    """Every non-zero activation of ``sae`` on ``texts`` (default :func:`label_texts`), each document cut to
    :data:`MAX_DOC_TOKENS` tokens; loaded from the cache when there (``cache``), else (``compute``; ``None``
    without it) one early-exit pass (tqdm bar) saved there. :class:`LabelScoreError` for empty texts."""

    texts = label_texts() if texts is None else [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise LabelScoreError("No held-out text to score labels on: pass at least one non-empty text.")
    fingerprint = corpus_fingerprint(texts)
    key = {"model": store.model_identity(gm), "sae": store.sae_identity(sae), "texts": fingerprint,
           "max_doc_tokens": MAX_DOC_TOKENS, "format": FORMAT}
    folder = _cache_folder(key) if cache else None
    if folder is not None:
        found = _read(folder, key)
        if found is not None:
            return found
    if not compute:
        return None
    held = _run(gm, sae, texts, fingerprint, progress=progress, batch_size=batch_size, act_budget=act_budget)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        store.write_tensors({"ids": held.ids, "next_ids": held.next_ids, "token": held.token,
                             "feature": held.feature, "value": held.value}, folder / "tokens.safetensors")
        store.write_json(folder / "tokens.json", {"key": key, "width": held.width})
    return held


def _cache_folder(key: Mapping[str, Any]) -> Path:
    return cache_dir("stats") / f"{name_slug(key['sae']['name'])}-labels-{key_digest(key)}"  # made only when written


def _read(folder: Path, key: Mapping[str, Any]) -> HeldOutTokens | None:
    try:
        meta = json.loads((folder / "tokens.json").read_text("utf-8"))
        if meta.get("key") != json.loads(json.dumps(dict(key))):
            return None
        t = load_file(str(folder / "tokens.safetensors"))
        return HeldOutTokens(t["ids"], t["next_ids"], t["token"], t["feature"], t["value"], int(meta["width"]),
                             str(key["texts"]))
    except (OSError, ValueError, KeyError):  # missing or damaged: computed again
        return None


@torch.inference_mode()
def _run(gm: GemmaModel, sae: Any, texts: Sequence[str], fingerprint: str, *, progress: bool, batch_size: int,
         act_budget: int) -> HeldOutTokens:

    docs = tokenize_docs(gm, texts, MAX_DOC_TOKENS)
    hidden = torch.tensor(sorted(masked_ids(gm.tokenizer)))
    ids_out, next_out, tok_out, feat_out, val_out = [], [], [], [], []
    offset = 0
    batches = plan_batches([len(d) for d in docs], batch_size, 2048)
    bar = progress_bar(total=len(docs), desc="label scores: held-out text", unit="doc", disable=not progress)
    try:
        for batch in batches:
            ids, mask = pad_batch([docs[i] for i in batch], gm.tokenizer.pad_token_id)
            nxt = torch.full_like(ids, -1)
            nxt[:, :-1] = torch.where(mask[:, 1:].bool(), ids[:, 1:], -1)
            valid = (mask.bool() & ~torch.isin(ids, hidden)).reshape(-1)
            flat = valid.nonzero(as_tuple=True)[0]
            captured = capture(gm, ids, tuple(sae.read_hook_points), stop_early=True, attention_mask=mask)
            x = sae_inputs(sae, captured)
            x = x.reshape(-1, *x.shape[2:])[flat.to(x.device)]
            tok, feat, val = encode_entries(sae, x, act_budget)
            ids_out.append(ids.reshape(-1)[flat])
            next_out.append(nxt.reshape(-1)[flat])
            tok_out.append(tok.cpu() + offset)
            feat_out.append(feat.cpu())
            val_out.append(val.float().cpu())
            offset += int(flat.numel())
            bar.update(len(batch))
    finally:
        bar.close()
    return HeldOutTokens(torch.cat(ids_out), torch.cat(next_out), torch.cat(tok_out).long(),
                         torch.cat(feat_out).long(), torch.cat(val_out), int(sae.width), fingerprint)


# ---------------------------------------------------------------------- token sets


def explanation_words(text: str) -> list[str]:
    """The words of a text explanation that name tokens: ``\\w+`` runs and quoted pieces, minus
    :data:`STOP_WORDS`, in order, without repeats (case-insensitive)."""
    pieces = [m.strip() for m in _QUOTED.findall(text)] + _WORD.findall(text)
    words = [p for p in pieces if p and p.lower() not in STOP_WORDS]
    return list(dict.fromkeys(w.lower() for w in words))


# ---------------------------------------------------------------------- scores


@dataclass(frozen=True)
class _Sums:
    n_tokens: int
    n_active: torch.Tensor
    n_predicted: torch.Tensor
    n_hit: torch.Tensor
    sum_a: torch.Tensor
    sum_a2: torch.Tensor
    sum_pa: torch.Tensor


def _sums(held: HeldOutTokens, sets: Mapping[int, Collection[int]], *, next_token: bool) -> _Sums:
    """Per-feature sums over the held-out tokens for predictors ``p_t = [token ∈ sets[f]]``; one pass."""
    width = held.width
    used = held.next_ids if next_token else held.ids
    vocab = int(max(int(held.ids.max()) if held.n_tokens else 0, max((max(s) for s in sets.values() if s),
                                                                    default=0))) + 1
    feats = [(int(f), int(i)) for f, s in sets.items() for i in s]
    pair_f = torch.tensor([p[0] for p in feats], dtype=torch.int64)
    pair_i = torch.tensor([p[1] for p in feats], dtype=torch.int64)
    counts = torch.bincount(used[used >= 0], minlength=vocab).double()
    n_predicted = torch.zeros(width, dtype=torch.float64).index_add_(0, pair_f, counts[pair_i])
    pair_keys = torch.unique(pair_f * vocab + pair_i)
    entry_ids = used[held.token]
    keys = held.feature * vocab + entry_ids.clamp(min=0)
    hit = torch.isin(keys, pair_keys) & (entry_ids >= 0)
    value = held.value.double()
    zeros = torch.zeros(width, dtype=torch.float64)
    return _Sums(
        n_tokens=held.n_tokens,
        n_active=zeros.clone().index_add_(0, held.feature, (value > 0).double()),
        n_predicted=n_predicted,
        n_hit=zeros.clone().index_add_(0, held.feature[hit], (value[hit] > 0).double()),
        sum_a=zeros.clone().index_add_(0, held.feature, value),
        sum_a2=zeros.clone().index_add_(0, held.feature, value * value),
        sum_pa=zeros.clone().index_add_(0, held.feature[hit], value[hit]),
    )


def pearson_from_sums(n: int, sum_p: float, sum_a: float, sum_a2: float, sum_pa: float) -> float:
    """Pearson r of a 0/1 predictor ``p`` and activations ``a`` from their sums (``Σp² = Σp``); 0 when either is
    constant."""
    var = (n * sum_p - sum_p * sum_p) * (n * sum_a2 - sum_a * sum_a)
    if var <= 0:
        return 0.0
    return float((n * sum_pa - sum_p * sum_a) / var**0.5)


def simulation_scores(held: HeldOutTokens, sets: Mapping[int, Collection[int]], *, next_token: bool = False
                      ) -> dict[int, tuple[float | None, float | None, float | None, int, int, str]]:
    """For every feature ``f`` of ``sets`` (``{f: vocabulary ids}``): ``(r, precision, recall, n_active,
    n_predicted, reason)`` of the lookup-table simulation on ``held`` (module docstring), all features in one
    pass; ``next_token`` predicts from the next token instead. Unscored features (fewer than :data:`MIN_ACTIVE`
    activating tokens) have ``None`` and a ``reason``."""
    if not sets:
        return {}
    s = _sums(held, sets, next_token=next_token)
    out: dict[int, tuple[float | None, float | None, float | None, int, int, str]] = {}
    for f in sets:
        f = int(f)
        n_active, n_pred, n_hit = int(s.n_active[f]), int(s.n_predicted[f]), int(s.n_hit[f])
        if n_active < MIN_ACTIVE:
            out[f] = (None, None, None, n_active, n_pred,
                      f"fires on {n_active} of {s.n_tokens} held-out tokens (fewer than {MIN_ACTIVE})")
            continue
        r = pearson_from_sums(s.n_tokens, float(n_pred), float(s.sum_a[f]), float(s.sum_a2[f]), float(s.sum_pa[f]))
        out[f] = (r, n_hit / n_pred if n_pred else None, n_hit / n_active, n_active, n_pred, "")
    return out


__all__ = [
    "HELD_OUT_DOCS", "MIN_ACTIVE", "MIN_FIT", "STOP_WORDS", "HeldOutTokens", "LabelScore", "LabelScores",
    "explanation_words", "held_out_tokens", "label_texts", "pearson_from_sums", "simulation_scores",
]
