"""The streaming corpus scan behind :class:`~gemscope_widgets.backend.stats.feature_stats.FeatureStats`.

The model runs over the corpus in padded batches of similar-length documents and stops after the SAE's layer
(:func:`~gemscope_widgets.backend.gemma.capture.capture`). Only the unmasked tokens (not ``<bos>``, ``<pad>`` or
padding, wherever they are: :func:`~gemscope_widgets.backend.gemma.prompts.masked_ids`) are encoded, in chunks of
``act_budget // width`` tokens, and each chunk is reduced at once to its non-zero entries ``(token, feature,
value)``. Everything else works on those entries with batched tensor operations on the SAE's device (the
model's device once :class:`~gemscope_widgets.scope.Scope` placed it there): no loop over features, no
per-batch copy of the state to the host.

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
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gemscope_widgets.backend.stats import store
from gemscope_widgets.errors import GemscopeError, StatsCacheError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats

_MERGE_ROWS = 16384
"""Features merged into the example tables at a time: bounds the merge's temporaries."""

ProgressCallback = Callable[[int, int], Any]
"""``on_progress(documents_done, documents_total)``, called after every batch."""


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


def encode_entries(sae: Any, x: torch.Tensor, act_budget: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-zero activations of ``sae`` on inputs ``x [N, ...]``: ``(token, feature, value)`` each ``[nnz]``,
    token-major, computed ``act_budget // width`` tokens at a time (one dense chunk alive at once)."""
    chunk = max(1, int(act_budget) // max(1, int(sae.width)))
    tok, feat, val = [], [], []
    for a in range(0, x.shape[0], chunk):
        acts = sae.encode(x[a : a + chunk])
        i, f = acts.nonzero(as_tuple=True)
        v = acts[i, f]
        pos = v > 0
        tok.append(i[pos] + a)
        feat.append(f[pos])
        val.append(v[pos].float())
    if not tok:
        dev = x.device
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty, torch.zeros(0, device=dev)
    return torch.cat(tok), torch.cat(feat), torch.cat(val)


class Scanner:
    """One scan: the documents, the state, the loop that fills it, checkpoints and the result."""

    def __init__(self, gm: GemmaModel, sae: Any, texts: Sequence[str], params: ScanParams, *,
                 batch_size: int = 16, batch_tokens: int = 2048, act_budget: int = 2**24,
                 rank: int = 0, world: int = 1) -> None:
        from gemscope_widgets.backend.dictionaries.placement import sae_device
        from gemscope_widgets.backend.gemma.prompts import masked_ids

        self.gm, self.sae, self.texts, self.p = gm, sae, texts, params
        self.batch_size, self.batch_tokens, self.act_budget = batch_size, batch_tokens, act_budget
        self.hooks = tuple(sae.read_hook_points)
        self.hidden = torch.tensor(sorted(masked_ids(gm.tokenizer)))
        self.rank, self.world = int(rank), int(world)
        self.state = ScanState(int(sae.width), params, sae_device(sae))
        self.next_doc = 0
        self.elapsed = 0.0
        self.seen_tokens = 0  # by every process together (the max_tokens limit)

    # ---- checkpoints

    def checkpoint(self, folder: Path, key: Mapping[str, Any]) -> None:
        store.write_checkpoint(folder, key, self.state.state_dict(),
                               {"next_doc": self.next_doc, "n_tokens": self.state.n_tokens})

    def try_resume(self, folder: Path, key: Mapping[str, Any]) -> None:
        """Continue from this scan's checkpoint in ``folder``; a damaged or foreign one warns and is ignored."""
        try:
            found = store.read_checkpoint(folder, key)
            if found is None:
                return
            meta, state = found
            self.state.load_state_dict(state)
            self.next_doc, self.state.n_tokens = int(meta["next_doc"]), int(meta["n_tokens"])
        except (StatsCacheError, KeyError, ValueError) as exc:  # start over rather than trust it
            warnings.warn(f"Ignoring the scan checkpoint in {folder}: {exc}", stacklevel=3)
            self.state = ScanState(self.state.W, self.p, self.state.device)
            self.next_doc = 0

    # ---- the loop

    def done(self) -> bool:
        return self.next_doc >= len(self.texts) or (
            self.p.max_tokens is not None and self.seen_tokens >= self.p.max_tokens
        )

    def _count_tokens(self) -> None:
        """Tokens scanned so far by every process of the group (this scanner's alone outside a process group)."""
        if self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            from gemscope_widgets.backend.stats.distributed import total_tokens

            self.seen_tokens = total_tokens(self.state.n_tokens, self.state.device)
        else:
            self.seen_tokens = self.state.n_tokens

    def run(self, *, progress: bool = True, on_progress: ProgressCallback | None = None,
            checkpoint: tuple[Path, Mapping[str, Any], int] | None = None) -> None:
        """Scan the remaining documents in blocks of ``checkpoint[2]`` (512 without checkpoints), writing a
        checkpoint after each block; a tqdm bar when ``progress``; ``on_progress(done, total)`` per batch.

        Each block is cut into the same batches whatever ``world`` is, and process ``rank`` runs batches
        ``rank, rank + world, ...``: every batch is computed with the same shapes as in a one-process scan, so
        merged shards equal it exactly (bit for bit on a deterministic device)."""
        from tqdm.auto import tqdm

        from gemscope_widgets.backend.stats.corpus import plan_batches, tokenize_docs

        total = len(self.texts)
        block = max(1, checkpoint[2] if checkpoint else 512)
        bar = tqdm(total=total, initial=self.next_doc, desc=f"Scanning {self.sae.config.name}", unit="doc",
                   disable=not progress)
        self._count_tokens()
        try:
            while not self.done():
                start = time.perf_counter()
                stop = min(total, self.next_doc + block)
                ids = list(range(self.next_doc, stop))
                docs = tokenize_docs(self.gm, [self.texts[i] for i in ids], self.p.max_doc_tokens)
                done = self.next_doc
                for j, batch in enumerate(plan_batches([len(d) for d in docs], self.batch_size, self.batch_tokens)):
                    if j % self.world == self.rank:
                        self.batch([ids[i] for i in batch], [docs[i] for i in batch])
                    done += len(batch)
                    bar.update(len(batch))
                    if on_progress is not None:
                        on_progress(done, total)
                self.next_doc = stop
                self._count_tokens()
                self.elapsed += time.perf_counter() - start
                bar.set_postfix(tokens=self.state.n_tokens,
                                tok_s=f"{self.state.n_tokens / max(self.elapsed, 1e-9):.0f}")
                if checkpoint and not self.done():
                    self.checkpoint(checkpoint[0], checkpoint[1])
        finally:
            bar.close()

    def batch(self, doc_ids: list[int], docs: list[list[int]]) -> None:
        """Run one padded batch of documents (corpus indices ``doc_ids``) and fold it into the state."""
        from gemscope_widgets.backend.analysis.features import sae_inputs
        from gemscope_widgets.backend.gemma.capture import capture
        from gemscope_widgets.backend.stats.corpus import pad_batch

        ids, mask = pad_batch(docs, self.gm.tokenizer.pad_token_id)
        seq = ids.shape[1]
        valid = (mask.bool() & ~torch.isin(ids, self.hidden)).reshape(-1)
        flat = valid.nonzero(as_tuple=True)[0]
        with torch.inference_mode():
            captured = capture(self.gm, ids, self.hooks, stop_early=True, attention_mask=mask)
            x = sae_inputs(self.sae, captured)
            x = x.reshape(-1, *x.shape[2:])[flat.to(x.device)]
            tok, feat, val = encode_entries(self.sae, x, self.act_budget)
            dev = self.state.device
            flat = flat.to(dev)
            tok = flat[tok.to(dev)]
            self.state.fold(tok // seq, tok % seq, feat.to(dev), val.to(dev), torch.tensor(doc_ids, device=dev))
        self.state.n_tokens += int(flat.numel())

    # ---- result

    def result(self, key: Mapping[str, Any]) -> FeatureStats:
        """The finished statistics (on the CPU), with the token strings of every document an example uses."""
        from gemscope_widgets.backend.gemma.prompts import token_strings
        from gemscope_widgets.backend.stats.corpus import tokenize_docs
        from gemscope_widgets.backend.stats.feature_stats import FeatureStats

        st = self.state
        tensors: dict[str, torch.Tensor] = {"hist_counts": st.hist.cpu(), "hist_exp": st.hist_exp.cpu(),
                                            "n_fired": st.n_fired.cpu()}
        for kind, t in st.tables.items():
            fields = {name: getattr(t, name).cpu() for name in ExampleTable.FIELDS}
            if kind == "quantile":
                # The reservoir is kept by random key; show it by value, highest first (empty slots last).
                ranked = torch.where(fields["doc"] >= 0, fields["value"].double(), -math.inf)
                order = torch.argsort(-ranked, dim=1, stable=True)
                fields = {n: v.gather(1, order if v.dim() == 2 else order.unsqueeze(-1).expand_as(v))
                          for n, v in fields.items()}
            for name in ("value", "doc", "pos", "window"):
                tensors[f"{kind}_{name}"] = fields[name]
        # Token strings only for the documents an example points at, re-tokenised now (no model run).
        seen = torch.zeros(len(self.texts), dtype=torch.bool)  # a scatter, not a sort of W·k document ids
        for kind in st.tables:
            docs_k = tensors[f"{kind}_doc"].reshape(-1)
            seen[docs_k[docs_k >= 0]] = True
        used = seen.nonzero(as_tuple=True)[0]
        docs = tokenize_docs(self.gm, [self.texts[i] for i in used.tolist()], self.p.max_doc_tokens)
        flat = torch.tensor([i for d in docs for i in d], dtype=torch.int64)
        vocab_ids, local = torch.unique(flat, return_inverse=True) if flat.numel() else (flat, flat)
        tensors["doc_ids"] = used
        tensors["doc_ptr"] = torch.tensor([0, *np.cumsum([len(d) for d in docs]).tolist()], dtype=torch.int64)
        tensors["doc_tokens"] = local.to(torch.int32)
        vocab = token_strings(self.gm.tokenizer, vocab_ids.tolist()) if vocab_ids.numel() else []
        n = max(st.n_tokens, 1)
        meta = {"key": dict(key), "params": self.p.to_json(), "vocab": vocab, "model_name": self.gm.name,
                "scan_seconds": self.elapsed, "n_docs": self.next_doc}
        return FeatureStats(
            sae_name=self.sae.config.name,
            width=st.W,
            source="scan",
            n_tokens=st.n_tokens,
            density=st.n_fired.cpu().double().div(n).float(),
            max_act=st.max_act.cpu().clone(),
            tensors=tensors,
            meta=meta,
        )


def scan(gm: GemmaModel, sae: Any, corpus: Any = None, params: ScanParams | None = None, *,
         batch_size: int = 16, batch_tokens: int = 2048, act_budget: int = 2**24, checkpoint_docs: int = 512,
         cache: bool = True, progress: bool = True, on_progress: ProgressCallback | None = None) -> FeatureStats:
    """Scan ``corpus`` through ``gm`` up to the SAE's layer; see
    :meth:`~gemscope_widgets.backend.stats.feature_stats.FeatureStats.scan` for the arguments. Inside a
    ``torch.distributed`` process group the documents are shared by the processes (:mod:`.distributed`)."""
    from gemscope_widgets.backend.stats.corpus import load_corpus

    if not isinstance(progress, bool):
        raise GemscopeError(
            f"progress must be True or False (a tqdm bar), got {type(progress).__name__}; "
            "pass a function as on_progress=fn(done, total) instead."
        )
    if on_progress is not None and not callable(on_progress):
        raise GemscopeError("on_progress must be a function fn(documents_done, documents_total).")
    from gemscope_widgets.backend.dictionaries.placement import sae_device
    from gemscope_widgets.backend.stats import distributed

    params = params or ScanParams()
    texts = load_corpus(corpus)
    device = sae_device(sae)
    rank, world = distributed.process_group(device)
    key = store.cache_key(gm, sae, texts, params)
    if world > 1:
        distributed.check_same_scan(key, device)
    folder = store.cache_folder(key) if cache else None
    ckpt = folder / f"shard-{rank}-of-{world}" if folder is not None and world > 1 else folder
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    scanner = Scanner(gm, sae, texts, params, batch_size=batch_size, batch_tokens=batch_tokens,
                      act_budget=act_budget, rank=rank, world=world)
    if ckpt is not None:
        scanner.try_resume(ckpt, key)
    if world > 1 and not distributed.agree_on_start(scanner.next_doc, device):
        warnings.warn("The processes' checkpoints are from different blocks: the scan starts over.", stacklevel=2)
        scanner = Scanner(gm, sae, texts, params, batch_size=batch_size, batch_tokens=batch_tokens,
                          act_budget=act_budget, rank=rank, world=world)
    scanner.run(progress=progress and rank == 0, on_progress=on_progress,
                checkpoint=(ckpt, key, checkpoint_docs) if ckpt is not None else None)
    if world > 1:
        distributed.merge_into_first(scanner.state)
    stats = None
    if rank == 0:
        stats = scanner.result(key)
        if folder is not None:
            stats.save(folder)
    if world > 1:
        distributed.barrier()
        if rank != 0 and folder is not None:
            from gemscope_widgets.backend.stats.feature_stats import FeatureStats

            stats = FeatureStats.load(folder, expect=key)
    if ckpt is not None:
        store.remove_checkpoint(ckpt)
        if ckpt != folder:
            ckpt.rmdir()
    return stats  # type: ignore[return-value]


__all__ = ["ExampleTable", "ScanParams", "ScanState", "Scanner", "encode_entries", "reservoir_key", "scan"]
