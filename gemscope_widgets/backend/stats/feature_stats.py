"""Per-feature statistics of an SAE over a corpus, and how to read them: examples, density, histograms, labels.

:class:`FeatureStats` is the read API. Where the numbers come from lives beside it: :mod:`.scan` (the streaming
corpus scan), :mod:`.store` (the folder format, the cache identity and the cache lookup), :mod:`.corpus`
(texts and their tokenisation) and :mod:`.importers` (Neuronpedia exports, Gemma Scope 2 example files).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gemscope_widgets.backend.dictionaries.sae import check_feature_index
from gemscope_widgets.backend.stats import store
from gemscope_widgets.backend.stats.corpus import tokenize_docs  # re-exported: its home is corpus.py
from gemscope_widgets.backend.stats.scan import ProgressCallback
from gemscope_widgets.backend.stats.scan_state import ScanParams
from gemscope_widgets.errors import GemscopeError, StatsCacheError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

KINDS = store.KINDS


@dataclass
class Example:
    """One context where a feature fired: a window of tokens around the peak and the feature's value on each.

    ``peak`` indexes ``tokens``/``values``; ``value`` is the activation there; ``doc`` is the corpus document
    (``-1`` when unknown) and ``position`` the peak's token position in that document (``<bos>`` is 0).
    """

    tokens: list[str]
    values: list[float]
    peak: int
    value: float
    doc: int = -1
    position: int = -1


class FeatureStats:
    """Statistics for every feature of one SAE: examples, density, max, histogram, explanations.

    Built by :meth:`scan` (``source="scan"``) or by an importer (``"neuronpedia"``,
    ``"gemma-scope-examples"``) through :meth:`from_parts`. Any field may be missing (``None``) when the
    source lacks it; every accessor then returns ``None`` or an empty list rather than raising.

    Attributes
    ----------
    sae_name, width, source : str, int, str
    n_tokens : int | None
        Tokens scanned (``<bos>``/padding excluded).
    density : Tensor[W] float32 | None
        Fraction of scanned tokens where the feature fires (activation > 0).
    max_act : Tensor[W] float32 | None
        Largest activation seen.

    Methods (``f`` is a feature index; a bad one raises :class:`FeatureIndexError`)
    -------
    histogram(f) -> (edges np.float64[n_bins+1], counts np.int64[n_bins]) | None
        Non-zero activations of ``f``. Scans use ``n_bins`` equal bins on ``[0, n_bins · 2^e]`` with the
        smallest ``e`` that holds the max (the bins double while streaming, so the max lies in the top half).
    hist_edges(f) -> edges | None
    examples(f, *, kind="top" | "quantile", start=0, count=10) -> list[Example]
        ``top``: one example per document, documents ranked by the feature's peak (ties: earlier document).
        ``quantile``: a uniform sample of the documents where ``f`` fired, sorted by peak descending: the
        spread below the max. Each example is a window (``window_before`` tokens before the peak,
        ``window_after`` after, clipped to the document) with the feature's activation on every token.
    n_examples(f, kind="top") -> int
    explanation(f) -> str | None ; label(f, text)
        User labels are saved beside the cache at once (``labels.json``) and win over imported ones.
    related_by_coactivation(f, k=10) -> list[(feature, score)] | None
        Features whose stored example documents overlap ``f``'s (Jaccard over the documents of the top and
        quantile examples), computed lazily from the stored examples; ``None`` without examples.
    stored_logits(f) -> (top, bottom) | None
        Logit-lens tokens shipped by an import (Neuronpedia ``pos_str``/``neg_str``); scans compute none,
        use :func:`gemscope_widgets.backend.analysis.logit_lens.logit_lens`.
    save(path) / load(path)
        A folder with ``stats.json`` + ``stats.safetensors`` (+ ``labels.json``); never pickle.
    scan(gm, sae, corpus=None, **params) / load_or_scan(gm, sae, corpus=None, **params)
        A cache hit never runs the model; a corrupted or mismatched cache warns and is rebuilt.
    """

    def __init__(
        self,
        *,
        sae_name: str,
        width: int,
        source: str,
        n_tokens: int | None = None,
        density: torch.Tensor | None = None,
        max_act: torch.Tensor | None = None,
        tensors: Mapping[str, torch.Tensor] | None = None,
        meta: Mapping[str, Any] | None = None,
        examples: Mapping[str, Mapping[int, Sequence[Example]]] | None = None,
        histograms: Mapping[int, tuple[Any, Any]] | None = None,
        explanations: Mapping[int, str] | None = None,
        logits: Mapping[int, tuple[list[tuple[str, float]], list[tuple[str, float]]]] | None = None,
        explanation_scores: Mapping[int, Mapping[str, float]] | None = None,
    ) -> None:
        self.sae_name = sae_name
        self.width = int(width)
        self.source = source
        self.n_tokens = n_tokens
        self.density = density
        self.max_act = max_act
        self._tensors: dict[str, torch.Tensor] = dict(tensors or {})
        self.meta: dict[str, Any] = dict(meta or {})
        self._example_lists: dict[str, dict[int, list[Example]]] = {
            kind: {int(f): list(v) for f, v in (examples or {}).get(kind, {}).items()} for kind in KINDS
        }
        self._histograms = {int(f): (np.asarray(e, np.float64), np.asarray(c, np.int64))
                            for f, (e, c) in (histograms or {}).items()}
        self._imported_explanations = {int(f): str(t) for f, t in (explanations or {}).items()}
        self._explanation_scores = {int(f): {str(k): float(v) for k, v in d.items()}
                                    for f, d in (explanation_scores or {}).items()}
        self._labels: dict[int, str] = {}
        self._logits = dict(logits or {})
        self._path: Path | None = None
        self._doc_tokens_cache: dict[int, list[str]] = {}
        self._inverted: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_parts(cls, **kwargs: Any) -> FeatureStats:
        """Build stats from whatever an importer has (same keywords as the constructor).

        ``examples={"top": {f: [Example, ...]}, "quantile": {...}}``, ``histograms={f: (edges, counts)}``,
        ``explanations={f: text}``, ``logits={f: (top, bottom)}``, ``density``/``max_act`` tensors ``[W]``.
        """
        return cls(**kwargs)

    # ------------------------------------------------------------------ accessors

    def _check(self, f: Any) -> int:
        return check_feature_index(f, self.width, self.sae_name)

    @property
    def params(self) -> ScanParams | None:
        raw = self.meta.get("params")
        return ScanParams(**raw) if raw else None

    def histogram(self, f: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(edges [n_bins+1], counts [n_bins])`` of the feature's non-zero activations, or None."""
        f = self._check(f)
        if f in self._histograms:
            return self._histograms[f]
        counts = self._tensors.get("hist_counts")
        exps = self._tensors.get("hist_exp")
        if counts is None or exps is None or int(exps[f]) == store.EMPTY_HIST_EXP:
            return None
        n_bins = counts.shape[1]
        edges = np.arange(n_bins + 1, dtype=np.float64) * math.ldexp(1.0, int(exps[f]))
        return edges, counts[f].numpy().astype(np.int64)

    def hist_edges(self, f: int) -> np.ndarray | None:
        """The bin edges of :meth:`histogram`."""
        h = self.histogram(f)
        return None if h is None else h[0]

    def n_examples(self, f: int, kind: str = "top") -> int:
        """How many examples :meth:`examples` can page through."""
        f = self._check(f)
        kind = _check_kind(kind)
        if f in self._example_lists[kind]:
            return len(self._example_lists[kind][f])
        doc = self._tensors.get(f"{kind}_doc")
        return 0 if doc is None else int((doc[f] >= 0).sum())

    def examples(self, f: int, *, kind: str = "top", start: int = 0, count: int = 10) -> list[Example]:
        """Examples ``start .. start+count`` of feature ``f`` (``kind`` "top" or "quantile")."""
        f = self._check(f)
        kind = _check_kind(kind)
        if start < 0 or count < 0:
            raise GemscopeError("examples(): start and count must be >= 0.")
        if f in self._example_lists[kind]:
            return self._example_lists[kind][f][start : start + count]
        doc = self._tensors.get(f"{kind}_doc")
        if doc is None:
            return []
        n = self.n_examples(f, kind)
        out = []
        before = int(self.meta["params"]["window_before"])
        for slot in range(start, min(start + count, n)):
            d = int(doc[f, slot])
            p = int(self._tensors[f"{kind}_pos"][f, slot])
            tokens = self._doc_tokens(d)
            lo, hi = max(0, p - before), min(len(tokens), p + int(self.meta["params"]["window_after"]) + 1)
            window = self._tensors[f"{kind}_window"][f, slot]
            values = [float(v) for v in window[lo - (p - before) : hi - (p - before)].float()]
            out.append(
                Example(
                    tokens=tokens[lo:hi],
                    values=values,
                    peak=p - lo,
                    value=float(self._tensors[f"{kind}_value"][f, slot]),
                    doc=d,
                    position=p,
                )
            )
        return out

    def _doc_tokens(self, doc: int) -> list[str]:
        if doc not in self._doc_tokens_cache:
            docs = self._tensors["doc_ids"]
            row = int(torch.searchsorted(docs, torch.tensor(doc)))
            if row >= len(docs) or int(docs[row]) != doc:
                raise StatsCacheError(f"Document {doc} is referenced by an example but its tokens are missing.")
            ptr = self._tensors["doc_ptr"]
            ids = self._tensors["doc_tokens"][int(ptr[row]) : int(ptr[row + 1])]
            vocab = self.meta["vocab"]
            self._doc_tokens_cache[doc] = [vocab[i] for i in ids.tolist()]
        return self._doc_tokens_cache[doc]

    def explanation(self, f: int) -> str | None:
        """The user's label for ``f`` if any, else an imported explanation, else None."""
        f = self._check(f)
        return self._labels.get(f, self._imported_explanations.get(f))

    def explanation_source(self, f: int) -> str:
        """Who wrote :meth:`explanation`: "user", the import's source name (e.g. "neuronpedia"), or ""."""
        f = self._check(f)
        if f in self._labels:
            return "user"
        return self.source.split()[0] if f in self._imported_explanations else ""

    def explanation_scores(self, f: int) -> dict[str, float]:
        """Scores that came with the imported explanation of ``f`` (``{"type (model)": value}``, e.g. Neuronpedia's
        ``eleuther_fuzz``); empty when there are none or the user's own label replaces it."""
        f = self._check(f)
        return {} if f in self._labels else dict(self._explanation_scores.get(f, {}))

    @property
    def explanations(self) -> dict[int, str]:
        """All explanations (imported, overridden by user labels)."""
        return {**self._imported_explanations, **self._labels}

    def label(self, f: int, text: str | None) -> None:
        """Set (or with ``None``/"" clear) your own explanation of ``f``; saved with the cache at once."""
        f = self._check(f)
        if text:
            self._labels[f] = str(text)
        else:
            self._labels.pop(f, None)
        if self._path is not None:
            store.write_labels(self._path, self._labels)

    def stored_logits(self, f: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]] | None:
        """Top/bottom logit tokens that came with an import, or None."""
        return self._logits.get(self._check(f))

    def related_by_coactivation(self, f: int, k: int = 10) -> list[tuple[int, float]] | None:
        """Features sharing the most example documents with ``f`` (Jaccard score), or None without examples."""
        f = self._check(f)
        if self._tensors.get("top_doc") is None:
            return None
        if self._inverted is None:
            self._inverted = self._build_inverted()
        by_doc_docs, by_doc_feats, per_feature = self._inverted
        mine = self._feature_docs(f)
        if mine.numel() == 0:
            return []
        lo = torch.searchsorted(by_doc_docs, mine)
        hi = torch.searchsorted(by_doc_docs, mine, right=True)
        feats = torch.cat([by_doc_feats[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=True)])
        feats = feats[feats != f]
        if feats.numel() == 0:
            return []
        others, shared = torch.unique(feats, return_counts=True)
        union = mine.numel() + per_feature[others] - shared
        score = shared.double() / union.double()
        order = torch.argsort(-score, stable=True)[:k]
        return [(int(others[i]), float(score[i])) for i in order]

    def _feature_docs(self, f: int) -> torch.Tensor:
        docs = torch.cat([self._tensors[f"{kind}_doc"][f] for kind in KINDS if f"{kind}_doc" in self._tensors])
        unique: torch.Tensor = torch.unique(docs[docs >= 0])
        return unique

    def _build_inverted(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        docs = torch.cat([self._tensors[f"{k}_doc"] for k in KINDS if f"{k}_doc" in self._tensors], dim=1)
        feats = torch.arange(self.width).unsqueeze(1).expand_as(docs)
        # One (doc, feature) pair per distinct pair: a document in both lists counts once.
        keep = docs >= 0
        pairs = torch.unique(docs[keep].long() * self.width + feats[keep])
        pair_docs, pair_feats = pairs // self.width, pairs % self.width
        per_feature = torch.bincount(pair_feats, minlength=self.width)
        return pair_docs, pair_feats, per_feature

    def __repr__(self) -> str:
        return (
            f"FeatureStats({self.sae_name!r}, width={self.width}, source={self.source!r}, "
            f"n_tokens={self.n_tokens})"
        )

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``stats.json`` + ``stats.safetensors`` (+ ``labels.json``) into folder ``path``."""
        folder = Path(path)
        tensors = dict(self._tensors)
        if self.density is not None:
            tensors["density"] = self.density
        if self.max_act is not None:
            tensors["max_act"] = self.max_act
        meta = {
            **self.meta,
            "sae_name": self.sae_name,
            "width": self.width,
            "source": self.source,
            "n_tokens": self.n_tokens,
            "explanations": {str(k): v for k, v in sorted(self._imported_explanations.items())},
            "explanation_scores": {str(k): v for k, v in sorted(self._explanation_scores.items())},
            "example_lists": {
                kind: {str(f): [vars(e) for e in exs] for f, exs in lists.items()}
                for kind, lists in self._example_lists.items()
            },
            "histograms": {str(f): [e.tolist(), c.tolist()] for f, (e, c) in self._histograms.items()},
            "logits": {str(f): [list(map(list, t)), list(map(list, b))] for f, (t, b) in self._logits.items()},
        }
        store.write_folder(folder, meta, tensors, self._labels)
        self._path = folder
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, expect: Mapping[str, Any] | None = None) -> FeatureStats:
        """Read a folder written by :meth:`save`; raise :class:`StatsCacheError` if it is damaged, of another
        format version, or (``expect``: the cache key) of another scan."""
        folder = Path(path)
        meta, tensors, labels = store.read_folder(folder, expect)
        stored_lists = meta.get("example_lists", {})
        lists = {
            kind: {int(f): [Example(**e) for e in exs] for f, exs in stored_lists.get(kind, {}).items()}
            for kind in KINDS
        }
        stats = cls(
            sae_name=meta["sae_name"],
            width=int(meta["width"]),
            source=meta["source"],
            n_tokens=meta.get("n_tokens"),
            density=tensors.pop("density", None),
            max_act=tensors.pop("max_act", None),
            tensors=tensors,
            meta={k: v for k, v in meta.items() if k not in ("example_lists", "histograms", "logits")},
            examples=lists,
            histograms={int(f): (e, c) for f, (e, c) in meta.get("histograms", {}).items()},
            explanations={int(f): t for f, t in meta.get("explanations", {}).items()},
            explanation_scores={int(f): d for f, d in meta.get("explanation_scores", {}).items()},
            logits={
                int(f): ([(s, float(v)) for s, v in t], [(s, float(v)) for s, v in b])
                for f, (t, b) in meta.get("logits", {}).items()
            },
        )
        stats._labels = labels
        stats._path = folder
        return stats

    # ------------------------------------------------------------------ scanning

    @classmethod
    def cache_key(cls, gm: GemmaModel, sae: Any, texts: Sequence[str] | Any, params: ScanParams) -> dict[str, Any]:
        """The fields that identify a scan (:func:`.store.cache_key`)."""
        return store.cache_key(gm, sae, texts, params)

    @classmethod
    def cache_folder(cls, key: Mapping[str, Any]) -> Path:
        """Where the scan with this key is cached (:func:`.store.cache_folder`)."""
        return store.cache_folder(key)

    @classmethod
    def cached(cls, gm: GemmaModel, sae: Any, corpus: Any = None, **params: Any) -> FeatureStats | None:
        """The statistics already on disk for this model + SAE + corpus + parameters, or ``None``; never scans."""
        chosen, rest = ScanParams.from_kwargs(params)
        if rest:
            raise GemscopeError(f"cached() takes only scan parameters, not {sorted(rest)}.")
        return store.find_cached(gm, sae, corpus, chosen)

    @classmethod
    def load_or_scan(cls, gm: GemmaModel, sae: Any, corpus: Any = None, **kwargs: Any) -> FeatureStats:
        """The cached statistics for this model + SAE + corpus + parameters, scanning only on a miss.

        A cached folder that is damaged, of another format version or of another key warns and is rebuilt.
        Takes the keywords of :meth:`scan`.
        """
        from gemscope_widgets.backend.stats.corpus import load_corpus
        from gemscope_widgets.backend.stats.scan import scan

        params, rest = ScanParams.from_kwargs(kwargs)
        texts = load_corpus(corpus)
        key = store.cache_key(gm, sae, texts, params)
        folder = store.cache_folder(key)
        if (folder / store.META_FILE).exists():
            try:
                return cls.load(folder, expect=key)
            except StatsCacheError as exc:
                warnings.warn(f"Rebuilding feature statistics: {exc}", stacklevel=2)
                store.remove_result(folder)
        return scan(gm, sae, texts, params, **rest)

    @classmethod
    def scan(
        cls,
        gm: GemmaModel,
        sae: Any,
        corpus: Any = None,
        *,
        top_k: int = ScanParams.top_k,
        n_quantile: int = ScanParams.n_quantile,
        window: int | tuple[int, int] = (ScanParams.window_before, ScanParams.window_after),
        max_doc_tokens: int = ScanParams.max_doc_tokens,
        n_bins: int = ScanParams.n_bins,
        max_tokens: int | None = None,
        batch_size: int = 16,
        batch_tokens: int = 2048,
        act_budget: int = 2**24,
        checkpoint_docs: int = 512,
        cache: bool = True,
        progress: bool = True,
        on_progress: ProgressCallback | None = None,
    ) -> FeatureStats:
        """Scan ``corpus`` (default: :func:`default_corpus`) through ``gm`` up to the SAE's layer.

        ``window`` is ``(tokens before, tokens after)`` the peak (an int ``n`` means ``(n, n)``);
        documents are cut to ``max_doc_tokens`` (``<bos>`` included); ``max_tokens`` stops after that many
        scanned tokens. Batches hold at most ``batch_size`` documents and ``batch_tokens`` padded tokens
        (documents of similar length are batched together); the SAE encodes ``act_budget // width`` tokens
        at a time. The state lives on the SAE's device (see :mod:`.scan_state` for its size: 0.73 GB at 262k
        features). Documents are batched within blocks of ``checkpoint_docs``; with ``cache``, the result is
        saved under :meth:`cache_folder`, and a checkpoint is written after every block so an interrupted scan
        (one process or several) resumes where it stopped. ``progress``
        shows a tqdm bar; ``on_progress(documents_done, documents_total)`` is called after every batch.
        """
        from gemscope_widgets.backend.stats.scan import scan

        params, _ = ScanParams.from_kwargs(dict(top_k=top_k, n_quantile=n_quantile, window=window,
                                                max_doc_tokens=max_doc_tokens, n_bins=n_bins,
                                                max_tokens=max_tokens))
        return scan(gm, sae, corpus, params, batch_size=batch_size, batch_tokens=batch_tokens,
                    act_budget=act_budget, checkpoint_docs=checkpoint_docs, cache=cache, progress=progress,
                    on_progress=on_progress)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise GemscopeError(f"Example kind must be one of {KINDS}, got {kind!r}.")
    return kind


__all__ = ["Example", "FeatureStats", "ScanParams", "tokenize_docs"]
