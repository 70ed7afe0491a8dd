"""The bounded, mergeable state of a corpus scan: per-feature counts, maxima, histograms and example tables.

State (:class:`ScanState`, on the device; ``W`` features, ``k = top_k + n_quantile`` example slots, ``w`` the
example window, ``b = n_bins``)::

    n_fired int64 [W], max_act float32 [W], hist int64 [W, b], hist_exp int64 [W]       (20 + 8·b) B/feature
    per example slot: key float64, value float32, doc int64, pos int64, window float16 [w]  (28 + 2·w) B/slot

With the defaults (``top_k=20``, ``n_quantile=12``, ``window=(16, 8)``, ``n_bins=32``) that is
276 + 32 · 78 = 2,772 bytes per feature: **45 MB at 16k, 727 MB at 262k, 2.9 GB at 1M features**. On top of
it a scan holds one batch's residuals, one ``[act_budget / W, W]`` float32 activation chunk (64 MB by default),
the batch's non-zero entries (about ``L0 × tokens`` of them) and merge temporaries bounded by
``_MERGE_ROWS`` features at a time (about 150 MB with the defaults), whatever the corpus size.

Per feature the scan keeps (exactly, whatever the batching, resuming or sharding): the number of tokens where it
fired, its maximum, a histogram of its non-zero values whose ``b`` equal bins cover ``[0, b · 2^e)`` for the
smallest ``e`` that holds the maximum (bins merge pairwise as the maximum grows), the ``top_k`` documents with
the highest peak (ties: the earlier document) and a uniform reservoir of ``n_quantile`` documents where it
fired, chosen by a fixed hash of (document, feature), so that every merge order gives the same sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from gemscope_widgets.backend.stats import store
from gemscope_widgets.errors import GemscopeError, StatsCacheError

_MERGE_ROWS = 16384
"""Features merged into the example tables at a time: bounds the merge's temporaries."""


@dataclass(frozen=True)
class ScanParams:
    """Everything that changes a scan's result (part of the cache key). The defaults are the scan defaults."""

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

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> tuple[ScanParams, dict[str, Any]]:
        """Split keyword arguments into the parameters (``window`` as ``n`` or ``(before, after)``) and the rest."""
        names = {"top_k", "n_quantile", "window", "max_doc_tokens", "n_bins", "max_tokens"}
        chosen = {k: v for k, v in kwargs.items() if k in names}
        rest = {k: v for k, v in kwargs.items() if k not in names}
        window = chosen.pop("window", None)
        if window is not None:
            before, after = (window, window) if isinstance(window, int) else window
            chosen["window_before"], chosen["window_after"] = int(before), int(after)
        for k in ("top_k", "n_quantile", "max_doc_tokens", "n_bins"):
            if k in chosen:
                chosen[k] = int(chosen[k])
        if chosen.get("max_tokens") is not None:
            chosen["max_tokens"] = int(chosen["max_tokens"])
        return cls(**chosen), rest


def reservoir_key(doc: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """A deterministic pseudo-random key in [0, 1) per (doc, feature): the same on resume, across processes
    and in tests."""
    h = (doc.long() * 2654435761 + feature.long() * 40503 + 12345) & 0x7FFFFFFF
    h = ((h ^ (h >> 15)) * 1274126177) & 0x7FFFFFFF
    h = ((h ^ (h >> 13)) * 668265263) & 0x7FFFFFFF
    return (h ^ (h >> 16)).double() / 2**31


class ExampleTable:
    """Per feature, the best ``k`` (document, peak) entries by a key, sorted: key descending, document ascending.

    ``key/value/doc/pos [W, k]`` and ``window [W, k, w]`` (float16); empty slots have ``doc == -1``.
    """

    FIELDS = ("key", "value", "doc", "pos", "window")

    def __init__(self, width: int, k: int, window: int, device: torch.device) -> None:
        self.k = k
        self.key = torch.full((width, k), -math.inf, dtype=torch.float64, device=device)
        self.value = torch.zeros(width, k, dtype=torch.float32, device=device)
        self.doc = torch.full((width, k), -1, dtype=torch.int64, device=device)
        self.pos = torch.zeros(width, k, dtype=torch.int64, device=device)
        self.window = torch.zeros(width, k, window, dtype=torch.float16, device=device)

    def merge(self, rows: torch.Tensor, key: torch.Tensor, value: torch.Tensor, doc: torch.Tensor,
              pos: torch.Tensor, window: torch.Tensor) -> None:
        """Merge candidates ``[R, c]`` (``window [R, c, w]``; ``doc`` -1 where there is none) into the rows
        ``rows [R]`` (distinct features), ``_MERGE_ROWS`` rows at a time."""
        for a in range(0, rows.numel(), _MERGE_ROWS):
            s = slice(a, a + _MERGE_ROWS)
            self._merge(rows[s], key[s], value[s], doc[s], pos[s], window[s])

    def _merge(self, rows: torch.Tensor, key: torch.Tensor, value: torch.Tensor, doc: torch.Tensor,
               pos: torch.Tensor, window: torch.Tensor) -> None:
        all_key = torch.cat([self.key[rows], key], 1)
        all_doc = torch.cat([self.doc[rows], doc], 1)
        tie = torch.where(all_doc < 0, torch.iinfo(torch.int64).max, all_doc)
        first = torch.argsort(tie, dim=1, stable=True)
        order = first.gather(1, torch.argsort(-all_key.gather(1, first), dim=1, stable=True))[:, : self.k]
        new_doc = all_doc.gather(1, order)
        self.key[rows] = all_key.gather(1, order)
        self.doc[rows] = new_doc
        self.value[rows] = torch.cat([self.value[rows], value], 1).gather(1, order)
        self.pos[rows] = torch.cat([self.pos[rows], pos], 1).gather(1, order)
        w = window.shape[2]
        all_win = torch.cat([self.window[rows], window], 1)
        win = all_win.gather(1, order.unsqueeze(-1).expand(-1, -1, w))
        self.window[rows] = win.masked_fill_((new_doc < 0).unsqueeze(-1), 0.0)


class ScanState:
    """The bounded per-feature state of a scan (see the module docstring), on ``device``; mergeable exactly."""

    def __init__(self, width: int, params: ScanParams, device: torch.device | str = "cpu") -> None:
        self.W, self.p, self.device = int(width), params, torch.device(device)
        dev = self.device
        self.n_fired = torch.zeros(self.W, dtype=torch.int64, device=dev)
        self.max_act = torch.zeros(self.W, dtype=torch.float32, device=dev)
        self.hist = torch.zeros(self.W, params.n_bins, dtype=torch.int64, device=dev)
        self.hist_exp = torch.full((self.W,), store.EMPTY_HIST_EXP, dtype=torch.int64, device=dev)
        self.tables = {"top": ExampleTable(self.W, params.top_k, params.window, dev)}
        if params.n_quantile:
            self.tables["quantile"] = ExampleTable(self.W, params.n_quantile, params.window, dev)
        self.n_tokens = 0

    # ---- serialisation

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"n_fired": self.n_fired, "max_act": self.max_act, "hist": self.hist, "hist_exp": self.hist_exp}
        for kind, t in self.tables.items():
            for name in ExampleTable.FIELDS:
                state[f"{kind}_{name}"] = getattr(t, name)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        mine = self.state_dict()
        for name, tensor in mine.items():
            if name not in state or state[name].shape != tensor.shape or state[name].dtype != tensor.dtype:
                raise StatsCacheError(f"checkpoint tensor {name} is missing or has the wrong shape")
        for name, tensor in mine.items():
            tensor.copy_(state[name])

    # ---- folding one batch of non-zero entries

    def fold(self, row: torch.Tensor, pos: torch.Tensor, feat: torch.Tensor, val: torch.Tensor,
             docs: torch.Tensor) -> None:
        """Add one batch: non-zero activations ``val`` of feature ``feat`` at position ``pos`` of batch row
        ``row`` (all ``[n]``, on the device), where row ``i`` is corpus document ``docs[i]``."""
        if feat.numel() == 0:
            return
        width = self.W
        self.n_fired.index_add_(0, feat, torch.ones_like(feat))
        self.max_act.scatter_reduce_(0, feat, val, reduce="amax")
        self._histogram(feat, val)
        # One candidate per (document, feature): its peak and the first position of the peak.
        pair, inv = torch.unique(row * width + feat, return_inverse=True)
        peak = torch.zeros(pair.numel(), dtype=torch.float32, device=val.device)
        peak.scatter_reduce_(0, inv, val, reduce="amax", include_self=False)
        at_peak = val == peak[inv]
        where = torch.full_like(pair, torch.iinfo(torch.int64).max)
        where.scatter_reduce_(0, inv[at_peak], pos[at_peak], reduce="amin")
        p_row, p_feat = pair // width, pair % width
        p_doc = docs[p_row]
        keys = {"top": peak.double()}
        if "quantile" in self.tables:
            keys["quantile"] = reservoir_key(p_doc, p_feat)
        # Candidates that can enter some table; their windows are cut from the entries of their pair.
        chosen = {kind: keys[kind] >= t.key[p_feat, -1] for kind, t in self.tables.items()}
        any_chosen = torch.stack(list(chosen.values())).any(0)
        slot = torch.cumsum(any_chosen, 0) - 1
        n_cand = int(slot[-1]) + 1 if slot.numel() else 0
        if n_cand == 0:
            return
        before, w = self.p.window_before, self.p.window
        off = pos - where[inv] + before
        keep = any_chosen[inv] & (off >= 0) & (off < w)
        windows = torch.zeros(n_cand, w, dtype=torch.float16, device=val.device)
        windows[slot[inv[keep]], off[keep]] = val[keep].half()
        n_rows = docs.numel()
        for kind, table in self.tables.items():
            c = chosen[kind].nonzero(as_tuple=True)[0]
            if c.numel() == 0:
                continue
            rows, t_inv = torch.unique(p_feat[c], return_inverse=True)
            col = p_row[c]
            shape = (rows.numel(), n_rows)
            key = torch.full(shape, -math.inf, dtype=torch.float64, device=val.device)
            key[t_inv, col] = keys[kind][c]
            value = torch.zeros(shape, dtype=torch.float32, device=val.device)
            value[t_inv, col] = peak[c]
            doc = torch.full(shape, -1, dtype=torch.int64, device=val.device)
            doc[t_inv, col] = p_doc[c]
            at = torch.zeros(shape, dtype=torch.int64, device=val.device)
            at[t_inv, col] = where[c]
            win = torch.zeros((*shape, w), dtype=torch.float16, device=val.device)
            win[t_inv, col] = windows[slot[c]]
            table.merge(rows, key, value, doc, at, win)

    def _histogram(self, feat: torch.Tensor, vals: torch.Tensor) -> None:
        n_bins = self.p.n_bins
        # Smallest e with v < n_bins · 2^e (exact: frexp of v / n_bins, n_bins a power of two).
        need = torch.frexp(vals / n_bins).exponent.long()
        batch_exp = torch.full_like(self.hist_exp, store.EMPTY_HIST_EXP)
        batch_exp.scatter_reduce_(0, feat, need, reduce="amax")
        self._rescale(torch.maximum(self.hist_exp, batch_exp))
        bins = torch.floor(torch.ldexp(vals.double(), -self.hist_exp[feat].double())).long().clamp_(0, n_bins - 1)
        self.hist.view(-1).index_add_(0, feat * n_bins + bins, torch.ones_like(bins))

    def _rescale(self, new_exp: torch.Tensor) -> None:
        """Widen every histogram whose exponent grows to ``new_exp``: bin ``j`` moves to ``j >> growth``."""
        grow = torch.where(self.hist_exp == store.EMPTY_HIST_EXP, 0, new_exp - self.hist_exp)
        rows = (grow > 0).nonzero(as_tuple=True)[0]
        if rows.numel():
            n_bins = self.p.n_bins
            shift = grow[rows].clamp(max=62).unsqueeze(1)
            target = torch.arange(n_bins, device=rows.device).unsqueeze(0) >> shift
            merged = torch.zeros(rows.numel(), n_bins, dtype=torch.int64, device=rows.device)
            self.hist[rows] = merged.scatter_add_(1, target, self.hist[rows])
        self.hist_exp = new_exp

    # ---- exact merge of another state (another shard of the corpus)

    def merge_from(self, other: ScanState) -> None:
        """Add ``other`` (a scan of other documents with the same parameters): counts add, maxima take the max,
        histograms are brought to the common scale and add, example tables merge by (key, document)."""
        self.n_fired += other.n_fired.to(self.device)
        torch.maximum(self.max_act, other.max_act.to(self.device), out=self.max_act)
        o_hist, o_exp = other.hist.to(self.device).clone(), other.hist_exp.to(self.device)
        new_exp = torch.maximum(self.hist_exp, o_exp)
        self._rescale(new_exp)
        grow = torch.where(o_exp == store.EMPTY_HIST_EXP, 0, new_exp - o_exp)
        rows = (grow > 0).nonzero(as_tuple=True)[0]
        if rows.numel():
            n_bins = self.p.n_bins
            target = torch.arange(n_bins, device=rows.device).unsqueeze(0) >> grow[rows].clamp(max=62).unsqueeze(1)
            o_hist[rows] = torch.zeros_like(o_hist[rows]).scatter_add_(1, target, o_hist[rows])
        self.hist += o_hist
        for kind, table in self.tables.items():
            theirs = other.tables[kind]
            rows = torch.arange(self.W, device=self.device)
            table.merge(rows, *(getattr(theirs, name).to(self.device) for name in ExampleTable.FIELDS))
        self.n_tokens += other.n_tokens


__all__ = ["ExampleTable", "ScanParams", "ScanState", "reservoir_key"]
