"""The streaming corpus scan behind :class:`~gemscope_widgets.backend.stats.feature_stats.FeatureStats`.

The model runs over the corpus in padded batches of similar-length documents and stops after the SAE's layer
(:func:`~gemscope_widgets.backend.gemma.capture.capture`). Only the unmasked tokens (not ``<bos>``, ``<pad>`` or
padding, wherever they are: :func:`~gemscope_widgets.backend.gemma.prompts.masked_ids`) are encoded, in chunks of
``act_budget // width`` tokens, and each chunk is reduced at once to its non-zero entries ``(token, feature,
value)``. Everything else works on those entries with batched tensor operations on the SAE's device (the
model's device once ``Scope`` placed it there): no loop over features, no
per-batch copy of the state to the host.

The state it fills, its memory and its exact merge are in :mod:`.scan_state`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.stats import store
from gemscope_widgets.backend.stats.scan_state import ExampleTable, ScanParams, ScanState
from gemscope_widgets.errors import GemscopeError, StatsCacheError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats

ProgressCallback = Callable[[int, int], Any]
"""``on_progress(documents_done, documents_total)``, called after every batch."""


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

    def run(self, *, progress: bool = True, on_progress: ProgressCallback | None = None, block: int = 512,
            checkpoint: tuple[Path, Mapping[str, Any]] | None = None) -> None:
        """Scan the remaining documents in blocks of ``block`` documents, writing a checkpoint after each block
        when ``checkpoint`` is given; a tqdm bar when ``progress``; ``on_progress(done, total)`` per batch.

        Batches are planned within a block, so the block size (not whether checkpoints are written) decides
        the batches, and a cached scan equals an uncached one bit for bit.

        Each block is cut into the same batches whatever ``world`` is, and process ``rank`` runs batches
        ``rank, rank + world, ...``: every batch is computed with the same shapes as in a one-process scan, so
        merged shards equal it exactly (bit for bit on a deterministic device)."""

        from gemscope_widgets.backend.stats.corpus import plan_batches, tokenize_docs

        total = len(self.texts)
        block = max(1, int(block))
        bar = progress_bar(total=total, initial=self.next_doc, desc=f"Scanning {self.sae.config.name}", unit="doc",
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
    try:
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
        scanner.run(progress=progress and rank == 0, on_progress=on_progress, block=checkpoint_docs,
                    checkpoint=(ckpt, key) if ckpt is not None else None)
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
    finally:
        distributed.release_group()
    return stats  # type: ignore[return-value]


__all__ = ["ProgressCallback", "Scanner", "encode_entries", "scan"]
