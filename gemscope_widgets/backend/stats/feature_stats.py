"""Per-feature statistics of an SAE over a corpus: examples, density, histograms; streamed and cached.

The scan runs the model (stopping after the SAE's layer) over the corpus in padded batches and keeps, for
every feature, only bounded state: running counts and maxima, a histogram whose bins widen by powers of two as
the maximum grows, the top-k documents by the feature's peak activation and a uniform reservoir of documents
(for examples below the peak). Memory is ``O(W · (k + n_quantile) · window)`` plus one batch, whatever the
corpus size. Results are written as safetensors + JSON under ``cache_dir("stats", ...)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gemscope_widgets.backend.dictionaries.sae import check_feature_index
from gemscope_widgets.errors import GemscopeError, StatsCacheError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

FORMAT_VERSION = 1
KINDS = ("top", "quantile")
_META_FILE = "stats.json"
_TENSOR_FILE = "stats.safetensors"
_LABEL_FILE = "labels.json"
_CKPT_META = "checkpoint.json"
_CKPT_TENSORS = "checkpoint.safetensors"
_EMPTY_HIST_EXP = -(2**30)


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


@dataclass(frozen=True)
class ScanParams:
    """Everything that changes a scan's result (part of the cache key)."""

    top_k: int = 20
    n_quantile: int = 12
    window_before: int = 16
    window_after: int = 8
    max_doc_tokens: int = 128
    n_bins: int = 32
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.n_quantile < 0:
            raise GemscopeError("top_k must be at least 1 and n_quantile at least 0.")
        if self.window_before < 0 or self.window_after < 0:
            raise GemscopeError("The example window cannot be negative: pass window=(before, after) >= 0.")
        if self.max_doc_tokens < 2:
            raise GemscopeError("max_doc_tokens must be at least 2 (the <bos> plus one token).")
        if self.n_bins < 2 or self.n_bins & (self.n_bins - 1):
            raise GemscopeError(f"n_bins must be a power of two (e.g. 32), got {self.n_bins}.")

    @property
    def window(self) -> int:
        return self.window_before + 1 + self.window_after

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


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
        if counts is None or exps is None or int(exps[f]) == _EMPTY_HIST_EXP:
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
            _write_json(self._path / _LABEL_FILE, {str(k): v for k, v in sorted(self._labels.items())})

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
        return torch.unique(docs[docs >= 0])

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
        folder.mkdir(parents=True, exist_ok=True)
        tensors = dict(self._tensors)
        if self.density is not None:
            tensors["density"] = self.density
        if self.max_act is not None:
            tensors["max_act"] = self.max_act
        meta = {
            **self.meta,
            "format": FORMAT_VERSION,
            "sae_name": self.sae_name,
            "width": self.width,
            "source": self.source,
            "n_tokens": self.n_tokens,
            "explanations": {str(k): v for k, v in sorted(self._imported_explanations.items())},
            "example_lists": {
                kind: {str(f): [vars(e) for e in exs] for f, exs in lists.items()}
                for kind, lists in self._example_lists.items()
            },
            "histograms": {str(f): [e.tolist(), c.tolist()] for f, (e, c) in self._histograms.items()},
            "logits": {str(f): [list(map(list, t)), list(map(list, b))] for f, (t, b) in self._logits.items()},
        }
        _atomic_save_tensors({k: v.contiguous() for k, v in tensors.items()}, folder / _TENSOR_FILE)
        # The JSON goes last: a folder with a JSON file always has the tensors that belong to it.
        _write_json(folder / _META_FILE, meta)
        _write_json(folder / _LABEL_FILE, {str(k): v for k, v in sorted(self._labels.items())})
        self._path = folder
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, expect: Mapping[str, Any] | None = None) -> FeatureStats:
        """Read a folder written by :meth:`save`; raise :class:`StatsCacheError` if it is damaged.

        ``expect`` (the cache key fields) must match the stored key when given.
        """
        folder = Path(path)
        meta_path = folder / _META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StatsCacheError(f"No feature statistics in {folder} ({_META_FILE} is missing).") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StatsCacheError(f"{meta_path} is not valid JSON ({exc}); delete the folder to rebuild.") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise StatsCacheError(f"{meta_path} is not a format-{FORMAT_VERSION} feature statistics file.")
        for key in ("sae_name", "width", "source"):
            if key not in meta:
                raise StatsCacheError(f"{meta_path} lacks the field {key!r}.")
        if expect is not None:
            stored = meta.get("key") or {}
            for name, value in expect.items():
                if stored.get(name) != value:
                    raise StatsCacheError(
                        f"The statistics in {folder} belong to another {name} "
                        f"({stored.get(name)!r}, expected {value!r})."
                    )
        try:
            tensors = load_file(str(folder / _TENSOR_FILE)) if (folder / _TENSOR_FILE).exists() else {}
        except Exception as exc:  # safetensors raises several types on a damaged file
            raise StatsCacheError(f"{folder / _TENSOR_FILE} cannot be read ({exc}).") from exc
        width = int(meta["width"])
        _validate_tensors(tensors, meta, width, folder)
        stored_lists = meta.get("example_lists", {})
        lists = {
            kind: {int(f): [Example(**e) for e in exs] for f, exs in stored_lists.get(kind, {}).items()}
            for kind in KINDS
        }
        stats = cls(
            sae_name=meta["sae_name"],
            width=width,
            source=meta["source"],
            n_tokens=meta.get("n_tokens"),
            density=tensors.pop("density", None),
            max_act=tensors.pop("max_act", None),
            tensors=tensors,
            meta={k: v for k, v in meta.items() if k not in ("example_lists", "histograms", "logits")},
            examples=lists,
            histograms={int(f): (e, c) for f, (e, c) in meta.get("histograms", {}).items()},
            explanations={int(f): t for f, t in meta.get("explanations", {}).items()},
            logits={
                int(f): ([(s, float(v)) for s, v in t], [(s, float(v)) for s, v in b])
                for f, (t, b) in meta.get("logits", {}).items()
            },
        )
        label_path = folder / _LABEL_FILE
        if label_path.exists():
            try:
                stats._labels = {int(k): str(v) for k, v in json.loads(label_path.read_text("utf-8")).items()}
            except (ValueError, AttributeError) as exc:
                raise StatsCacheError(f"{label_path} is not a JSON object of labels ({exc}).") from exc
        stats._path = folder
        return stats

    # ------------------------------------------------------------------ scanning

    @classmethod
    def cache_key(cls, gm: GemmaModel, sae: Any, texts: Sequence[str] | Any, params: ScanParams) -> dict[str, Any]:
        """The fields that identify a scan: model, SAE identity, corpus fingerprint, parameters."""
        from gemscope_widgets.backend.stats.corpus import corpus_fingerprint

        return {
            "model": gm.name,
            "sae": sae_identity(sae),
            "corpus": corpus_fingerprint(texts),
            "params": params.to_json(),
            "format": FORMAT_VERSION,
        }

    @classmethod
    def cache_folder(cls, key: Mapping[str, Any]) -> Path:
        """``cache_dir("stats", "<sae>-<hash of key>")``."""
        from gemscope_widgets.cache import cache_dir

        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(key["sae"]["name"]))[-48:].strip("_") or "sae"
        return cache_dir("stats", f"{slug}-{digest}")

    @classmethod
    def load_or_scan(cls, gm: GemmaModel, sae: Any, corpus: Any = None, **kwargs: Any) -> FeatureStats:
        """The cached statistics for this model + SAE + corpus + parameters, scanning only on a miss."""
        from gemscope_widgets.backend.stats.corpus import load_corpus

        params, rest = _split_params(kwargs)
        texts = load_corpus(corpus)
        key = cls.cache_key(gm, sae, texts, params)
        folder = cls.cache_folder(key)
        if (folder / _META_FILE).exists():
            try:
                return cls.load(folder, expect=key)
            except StatsCacheError as exc:
                warnings.warn(f"Rebuilding feature statistics: {exc}", stacklevel=2)
                for name in (_META_FILE, _TENSOR_FILE):
                    (folder / name).unlink(missing_ok=True)
        return cls.scan(gm, sae, texts, _params=params, **rest)

    @classmethod
    def scan(
        cls,
        gm: GemmaModel,
        sae: Any,
        corpus: Any = None,
        *,
        top_k: int = 20,
        n_quantile: int = 12,
        window: int | tuple[int, int] = (16, 8),
        max_doc_tokens: int = 128,
        n_bins: int = 32,
        max_tokens: int | None = None,
        batch_size: int = 16,
        batch_tokens: int = 2048,
        act_budget: int = 2**24,
        checkpoint_docs: int = 512,
        cache: bool = True,
        progress: bool = True,
        _params: ScanParams | None = None,
    ) -> FeatureStats:
        """Scan ``corpus`` (default: :func:`default_corpus`) through ``gm`` up to the SAE's layer.

        ``window`` is ``(tokens before, tokens after)`` the peak (an int ``n`` means ``(n, n)``);
        documents are cut to ``max_doc_tokens`` (``<bos>`` included); ``max_tokens`` stops after that many
        scanned tokens. Batches hold at most ``batch_size`` documents and ``batch_tokens`` padded tokens
        (documents of similar length are batched together); the SAE runs on row chunks so one
        ``[rows, T, W]`` activation block stays under ``act_budget`` floats. With ``cache``, the result is
        saved under :meth:`cache_folder`, and a checkpoint is written every ``checkpoint_docs`` documents so
        an interrupted scan resumes where it stopped.
        """
        from gemscope_widgets.backend.stats.corpus import load_corpus

        params = _params or _make_params(top_k, n_quantile, window, max_doc_tokens, n_bins, max_tokens)
        texts = load_corpus(corpus)
        key = cls.cache_key(gm, sae, texts, params)
        folder = cls.cache_folder(key) if cache else None
        scanner = _Scanner(gm, sae, texts, params, batch_size, batch_tokens, act_budget)
        if folder is not None:
            scanner.try_resume(folder, key)
        scanner.run(progress=progress, checkpoint=(folder, key, checkpoint_docs) if folder else None)
        stats = scanner.result(key)
        if folder is not None:
            stats.save(folder)
            for name in (_CKPT_META, _CKPT_TENSORS):
                (folder / name).unlink(missing_ok=True)
        return stats


# ---------------------------------------------------------------------- scan machinery


def _make_params(top_k, n_quantile, window, max_doc_tokens, n_bins, max_tokens) -> ScanParams:
    before, after = (window, window) if isinstance(window, int) else window
    return ScanParams(
        top_k=int(top_k),
        n_quantile=int(n_quantile),
        window_before=int(before),
        window_after=int(after),
        max_doc_tokens=int(max_doc_tokens),
        n_bins=int(n_bins),
        max_tokens=None if max_tokens is None else int(max_tokens),
    )


_PARAM_NAMES = ("top_k", "n_quantile", "window", "max_doc_tokens", "n_bins", "max_tokens")


def _split_params(kwargs: Mapping[str, Any]) -> tuple[ScanParams, dict[str, Any]]:
    defaults = {"top_k": 20, "n_quantile": 12, "window": (16, 8), "max_doc_tokens": 128, "n_bins": 32,
                "max_tokens": None}
    chosen = {k: kwargs.get(k, v) for k, v in defaults.items()}
    rest = {k: v for k, v in kwargs.items() if k not in _PARAM_NAMES}
    return _make_params(**chosen), rest


def sae_identity(sae: Any) -> dict[str, Any]:
    """Name, width and a hash of a few weight bytes and every buffer's shape: enough to tell SAEs apart."""
    h = hashlib.sha256()
    shapes = {}
    for name, buf in sorted(sae.state_dict().items()):
        if buf is None:
            continue
        shapes[name] = list(buf.shape)
        flat = buf.detach().reshape(-1)
        picks = torch.cat([flat[:64], flat[flat.numel() // 2 : flat.numel() // 2 + 64], flat[-64:]])
        h.update(name.encode())
        h.update(picks.float().cpu().numpy().tobytes())
    h.update(json.dumps(shapes, sort_keys=True).encode())
    return {"name": sae.config.name, "width": int(sae.width), "weights": h.hexdigest()[:32]}


def tokenize_docs(gm: GemmaModel, texts: Sequence[str], max_doc_tokens: int) -> list[list[int]]:
    """Token ids of each document: exactly one leading ``<bos>``, cut to ``max_doc_tokens``."""
    tok = gm.tokenizer
    bos = tok.bos_token_id
    if bos is None:
        raise GemscopeError("This tokenizer has no <bos> token; Gemma 3 needs one.")
    encoded = tok(list(texts), add_special_tokens=True)["input_ids"]
    out = []
    for ids in encoded:
        ids = list(ids)
        while len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            ids.pop(0)
        if not ids or ids[0] != bos:
            ids.insert(0, bos)
        out.append(ids[:max_doc_tokens])
    return out


def _plan_batches(lengths: Sequence[int], batch_size: int, batch_tokens: int) -> list[list[int]]:
    """Group document indices of similar length so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max([lengths[j] for j in current] + [lengths[i]])
        if current and (len(current) + 1 > batch_size or (len(current) + 1) * longest > batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _reservoir_key(doc: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """A deterministic pseudo-random key in [0, 1) per (doc, feature): the same on resume and in tests."""
    h = (doc.long() * 2654435761 + feature.long() * 40503 + 12345) & 0x7FFFFFFF
    h = ((h ^ (h >> 15)) * 1274126177) & 0x7FFFFFFF
    h = ((h ^ (h >> 13)) * 668265263) & 0x7FFFFFFF
    return (h ^ (h >> 16)).double() / 2**31


class _ExampleTable:
    """Per-feature best-``k`` entries by a key (the peak value, or a reservoir key), kept sorted."""

    def __init__(self, width: int, k: int, window: int) -> None:
        self.k = k
        self.key = torch.full((width, k), -math.inf, dtype=torch.float64)
        self.value = torch.zeros(width, k, dtype=torch.float32)
        self.doc = torch.full((width, k), -1, dtype=torch.int64)
        self.pos = torch.zeros(width, k, dtype=torch.int64)
        self.window = torch.zeros(width, k, window, dtype=torch.float16)

    def merge(self, rows, key, value, doc, pos, fetch_window) -> None:
        """Merge candidates ``[U, c]`` (one column per document; ``doc`` -1 for none) into feature ``rows``.

        ``fetch_window(rows_i, cols_i)`` returns the windows ``[n, window]`` of the candidates that got in.
        Order: key descending, then document ascending (ties go to the earlier document).
        """
        if rows.numel() == 0:
            return
        k = self.k
        all_key = torch.cat([self.key[rows], key], 1)
        all_doc = torch.cat([self.doc[rows], doc], 1)
        tie = torch.where(all_doc < 0, torch.iinfo(torch.int64).max, all_doc)
        first = torch.argsort(tie, dim=1, stable=True)
        order = first.gather(1, torch.argsort(-all_key.gather(1, first), dim=1, stable=True))[:, :k]
        self.key[rows] = all_key.gather(1, order)
        self.doc[rows] = all_doc.gather(1, order)
        self.value[rows] = torch.cat([self.value[rows], value], 1).gather(1, order)
        self.pos[rows] = torch.cat([self.pos[rows], pos], 1).gather(1, order)
        is_new = (order >= k) & (self.doc[rows] >= 0)
        if not is_new.any():
            return
        kept_old = order.clamp(max=k - 1).unsqueeze(-1).expand(-1, -1, self.window.shape[2])
        win = self.window[rows].gather(1, kept_old)
        r, c = is_new.nonzero(as_tuple=True)
        win[r, c] = fetch_window(r, order[r, c] - k)
        self.window[rows] = win


class _Scanner:
    """The streaming state of one scan and the loop that fills it."""

    def __init__(self, gm, sae, texts, params: ScanParams, batch_size, batch_tokens, act_budget) -> None:
        self.gm, self.sae, self.texts, self.p = gm, sae, texts, params
        self.batch_size, self.batch_tokens, self.act_budget = batch_size, batch_tokens, act_budget
        n_feat = int(sae.width)
        self.W = n_feat
        self.hooks = tuple(getattr(sae, "read_hook_points", None) or sae.config.hook_points_in)
        self.n_fired = torch.zeros(n_feat, dtype=torch.int64)
        self.max_act = torch.zeros(n_feat, dtype=torch.float32)
        self.hist = torch.zeros(n_feat, params.n_bins, dtype=torch.int64)
        self.hist_exp = torch.full((n_feat,), _EMPTY_HIST_EXP, dtype=torch.int64)
        self.tables = {"top": _ExampleTable(n_feat, params.top_k, params.window)}
        if params.n_quantile:
            self.tables["quantile"] = _ExampleTable(n_feat, params.n_quantile, params.window)
        self.next_doc = 0
        self.n_tokens = 0
        self.elapsed = 0.0
        self.offsets = torch.arange(-params.window_before, params.window_after + 1)

    # ---- checkpoints

    def _state(self) -> dict[str, torch.Tensor]:
        state = {"n_fired": self.n_fired, "max_act": self.max_act, "hist": self.hist, "hist_exp": self.hist_exp}
        for kind, t in self.tables.items():
            for name in ("key", "value", "doc", "pos", "window"):
                state[f"{kind}_{name}"] = getattr(t, name)
        return state

    def checkpoint(self, folder: Path, key: Mapping[str, Any]) -> None:
        _atomic_save_tensors({k: v.contiguous() for k, v in self._state().items()}, folder / _CKPT_TENSORS)
        _write_json(folder / _CKPT_META, {"key": dict(key), "next_doc": self.next_doc, "n_tokens": self.n_tokens})

    def try_resume(self, folder: Path, key: Mapping[str, Any]) -> None:
        meta_path = folder / _CKPT_META
        if not meta_path.exists():
            return
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
            if meta.get("key") != json.loads(json.dumps(dict(key))):
                raise StatsCacheError("checkpoint belongs to another scan")
            state = load_file(str(folder / _CKPT_TENSORS))
            mine = self._state()
            for name, tensor in mine.items():
                if name not in state or state[name].shape != tensor.shape or state[name].dtype != tensor.dtype:
                    raise StatsCacheError(f"checkpoint tensor {name} is missing or has the wrong shape")
            for name, tensor in mine.items():
                tensor.copy_(state[name])
            self.next_doc, self.n_tokens = int(meta["next_doc"]), int(meta["n_tokens"])
        except Exception as exc:  # any damage: start over rather than trust it
            warnings.warn(f"Ignoring the scan checkpoint in {folder}: {exc}", stacklevel=3)
            self.__init__(self.gm, self.sae, self.texts, self.p, self.batch_size, self.batch_tokens,
                          self.act_budget)

    # ---- the loop

    def _done(self) -> bool:
        return self.next_doc >= len(self.texts) or (
            self.p.max_tokens is not None and self.n_tokens >= self.p.max_tokens
        )

    def run(self, *, progress: bool, checkpoint: tuple[Path, Mapping[str, Any], int] | None) -> None:
        from tqdm.auto import tqdm

        block = max(1, checkpoint[2] if checkpoint else 512)
        bar = tqdm(total=len(self.texts), initial=self.next_doc, desc=f"Scanning {self.sae.config.name}",
                   unit="doc", disable=progress is not True)
        try:
            while not self._done():
                start = time.perf_counter()
                stop = min(len(self.texts), self.next_doc + block)
                docs = tokenize_docs(self.gm, self.texts[self.next_doc : stop], self.p.max_doc_tokens)
                for batch in _plan_batches([len(d) for d in docs], self.batch_size, self.batch_tokens):
                    self._batch([self.next_doc + i for i in batch], [docs[i] for i in batch])
                    bar.update(len(batch))
                    if callable(progress):  # widgets pass a callback (docs done, total) and draw their own bar
                        progress(len(batch), len(self.texts))
                self.next_doc = stop
                self.elapsed += time.perf_counter() - start
                bar.set_postfix(tokens=self.n_tokens, tok_s=f"{self.n_tokens / max(self.elapsed, 1e-9):.0f}")
                if checkpoint and not self._done():
                    self.checkpoint(checkpoint[0], checkpoint[1])
        finally:
            bar.close()

    def _batch(self, doc_ids: list[int], docs: list[list[int]]) -> None:
        from gemscope_widgets.backend.gemma.capture import capture

        gm, sae = self.gm, self.sae
        n_rows, seq = len(docs), max(len(d) for d in docs)
        pad = gm.tokenizer.pad_token_id if gm.tokenizer.pad_token_id is not None else 0
        ids = torch.full((n_rows, seq), pad, dtype=torch.long)
        mask = torch.zeros(n_rows, seq, dtype=torch.long)
        for i, d in enumerate(docs):
            ids[i, : len(d)] = torch.tensor(d)
            mask[i, : len(d)] = 1
        captured = capture(gm, ids, self.hooks, stop_early=True, attention_mask=mask)
        x = captured[self.hooks[0]] if len(self.hooks) == 1 else torch.stack([captured[h] for h in self.hooks], -2)
        valid = mask.bool().clone()
        valid[:, 0] = False  # <bos>
        lengths = torch.tensor([len(d) for d in docs])
        docs_t = torch.tensor(doc_ids)
        rows = max(1, self.act_budget // max(1, seq * self.W))
        # Per document and feature: the peak and where it is; candidate windows are cut while the
        # activations of their rows are alive, then each table merges once for the whole batch.
        peak = torch.zeros(n_rows, self.W)
        where = torch.zeros(n_rows, self.W, dtype=torch.int64)
        pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        keys = {"top": peak}  # filled chunk by chunk below
        if "quantile" in self.tables:
            keys["quantile"] = _reservoir_key(docs_t.unsqueeze(1), torch.arange(self.W).unsqueeze(0))
        with torch.inference_mode():
            for r0 in range(0, n_rows, rows):
                r1 = min(n_rows, r0 + rows)
                acts = sae.encode(x[r0:r1]).float().cpu()
                acts.mul_(valid[r0:r1].unsqueeze(-1))
                self._fold_tokens(acts)
                torch.max(acts, dim=1, out=(peak[r0:r1], where[r0:r1]))  # first position on ties
                b_idx, f_idx = peak[r0:r1].nonzero(as_tuple=True)
                could = torch.zeros(b_idx.shape, dtype=torch.bool)
                for kind, table in self.tables.items():
                    could |= keys[kind][r0:r1][b_idx, f_idx] >= table.key[f_idx, -1]
                b_idx, f_idx = b_idx[could], f_idx[could]
                t = where[r0:r1][b_idx, f_idx].unsqueeze(1) + self.offsets
                inside = (t >= 0) & (t < lengths[r0:r1][b_idx].unsqueeze(1))
                win = acts[b_idx.unsqueeze(1), t.clamp(0, seq - 1), f_idx.unsqueeze(1)]
                pending.append((b_idx + r0, f_idx, torch.where(inside, win, torch.zeros(())).half()))
        self.n_tokens += int(valid.sum())
        cand_b = torch.cat([p[0] for p in pending])
        cand_f = torch.cat([p[1] for p in pending])
        windows = torch.cat([p[2] for p in pending])
        lookup = torch.full((n_rows, self.W), -1, dtype=torch.int64)
        lookup[cand_b, cand_f] = torch.arange(cand_b.numel())
        fired = lookup >= 0
        for kind, table in self.tables.items():
            key = torch.where(fired, keys[kind].double(), -math.inf)
            touched = ((key >= table.key[:, -1]) & fired).any(0).nonzero(as_tuple=True)[0]
            if touched.numel() == 0:
                continue
            col_key = key[:, touched].T.contiguous()
            col_doc = torch.where(fired[:, touched], docs_t.unsqueeze(1), -1).T.contiguous()

            def fetch(r, c, touched=touched):
                return windows[lookup[c, touched[r]]]

            table.merge(touched, col_key, peak[:, touched].T.contiguous(), col_doc,
                        where[:, touched].T.contiguous(), fetch)

    def _fold_tokens(self, acts: torch.Tensor) -> None:
        """Density, max and histogram from one ``[b, T, W]`` block of (masked) activations."""
        flat = acts.view(-1, self.W)
        _, feat = flat.nonzero(as_tuple=True)
        if feat.numel() == 0:
            return
        vals = flat[flat > 0]  # same row-major order as nonzero()
        self.n_fired += torch.bincount(feat, minlength=self.W)
        self.max_act.scatter_reduce_(0, feat, vals, reduce="amax")
        self._histogram(feat, vals)

    def _histogram(self, feat: torch.Tensor, vals: torch.Tensor) -> None:
        n_bins = self.p.n_bins
        # Smallest e with v < n_bins · 2^e (exact: frexp of v / n_bins, n_bins a power of two).
        need = torch.frexp(vals / n_bins).exponent.long()
        batch_exp = torch.full((self.W,), _EMPTY_HIST_EXP, dtype=torch.int64)
        batch_exp.scatter_reduce_(0, feat, need, reduce="amax")
        new_exp = torch.maximum(self.hist_exp, batch_exp)
        grow = torch.where(self.hist_exp == _EMPTY_HIST_EXP, 0, new_exp - self.hist_exp)
        for step in torch.unique(grow[grow > 0]).tolist():
            rows = (grow == step).nonzero(as_tuple=True)[0]
            target = (torch.arange(n_bins) >> min(step, 62)).expand(rows.numel(), n_bins)
            merged = torch.zeros(rows.numel(), n_bins, dtype=torch.int64).scatter_add_(1, target, self.hist[rows])
            self.hist[rows] = merged
        self.hist_exp = new_exp
        bins = torch.floor(torch.ldexp(vals.double(), -new_exp[feat].double())).long().clamp_(0, n_bins - 1)
        self.hist.view(-1).index_add_(0, feat * n_bins + bins, torch.ones_like(bins))

    # ---- result

    def result(self, key: Mapping[str, Any]) -> FeatureStats:
        from gemscope_widgets.backend.gemma.prompts import token_strings

        tensors: dict[str, torch.Tensor] = {"hist_counts": self.hist, "hist_exp": self.hist_exp,
                                            "n_fired": self.n_fired}
        quantile = self.tables.get("quantile")
        if quantile is not None:
            # The reservoir is kept by random key; show it by value, highest first (empty slots last).
            ranked = torch.where(quantile.doc >= 0, quantile.value.double(), -math.inf)
            order = torch.argsort(-ranked, dim=1, stable=True)
            for name in ("key", "value", "doc", "pos"):
                setattr(quantile, name, getattr(quantile, name).gather(1, order))
            quantile.window = quantile.window.gather(1, order.unsqueeze(-1).expand_as(quantile.window))
        for kind, t in self.tables.items():
            tensors[f"{kind}_value"] = t.value
            tensors[f"{kind}_doc"] = t.doc
            tensors[f"{kind}_pos"] = t.pos
            tensors[f"{kind}_window"] = t.window
        # Token strings only for the documents an example points at, re-tokenised now (no model run).
        used = torch.unique(torch.cat([t.doc.reshape(-1) for t in self.tables.values()]))
        used = used[used >= 0]
        docs = tokenize_docs(self.gm, [self.texts[i] for i in used.tolist()], self.p.max_doc_tokens)
        flat = torch.tensor([i for d in docs for i in d], dtype=torch.int64)
        vocab_ids, local = torch.unique(flat, return_inverse=True) if flat.numel() else (flat, flat)
        tensors["doc_ids"] = used
        tensors["doc_ptr"] = torch.tensor([0, *np.cumsum([len(d) for d in docs]).tolist()], dtype=torch.int64)
        tensors["doc_tokens"] = local.to(torch.int32)
        vocab = token_strings(self.gm.tokenizer, vocab_ids.tolist()) if vocab_ids.numel() else []
        n = max(self.n_tokens, 1)
        meta = {"key": dict(key), "params": self.p.to_json(), "vocab": vocab, "model_name": self.gm.name,
                "scan_seconds": self.elapsed, "n_docs": self.next_doc}
        return FeatureStats(
            sae_name=self.sae.config.name,
            width=self.W,
            source="scan",
            n_tokens=self.n_tokens,
            density=self.n_fired.double().div(n).float(),
            max_act=self.max_act.clone(),
            tensors=tensors,
            meta=meta,
        )


# ---------------------------------------------------------------------- helpers


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise GemscopeError(f"Example kind must be one of {KINDS}, got {kind!r}.")
    return kind


def _validate_tensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], width: int, folder: Path) -> None:
    for name in ("density", "max_act", "n_fired", "hist_exp"):
        if name in tensors and tuple(tensors[name].shape) != (width,):
            raise StatsCacheError(
                f"{folder}: tensor {name} has shape {tuple(tensors[name].shape)}, expected ({width},)."
            )
    if meta.get("source") != "scan":
        return
    params = meta.get("params") or {}
    required = ["density", "max_act", "hist_counts", "hist_exp", "doc_ids", "doc_ptr", "doc_tokens"]
    kinds = ["top"] + (["quantile"] if params.get("n_quantile") else [])
    required += [f"{k}_{n}" for k in kinds for n in ("value", "doc", "pos", "window")]
    missing = [n for n in required if n not in tensors]
    if missing:
        raise StatsCacheError(f"{folder}: the scan result lacks tensors {missing}.")
    if "vocab" not in meta or not isinstance(meta["vocab"], list):
        raise StatsCacheError(f"{folder}: the scan result lacks its token vocabulary.")
    for kind in kinds:
        k = params.get("top_k") if kind == "top" else params.get("n_quantile")
        if tuple(tensors[f"{kind}_doc"].shape) != (width, k):
            raise StatsCacheError(f"{folder}: {kind} examples have shape {tuple(tensors[f'{kind}_doc'].shape)}, "
                                  f"expected ({width}, {k}).")
    if tensors["hist_counts"].shape[0] != width:
        raise StatsCacheError(f"{folder}: the histograms are for {tensors['hist_counts'].shape[0]} features.")
    if int(tensors["doc_ptr"][-1]) != tensors["doc_tokens"].numel():
        raise StatsCacheError(f"{folder}: the document token store is truncated.")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


__all__ = ["Example", "FeatureStats", "ScanParams", "sae_identity", "tokenize_docs"]
