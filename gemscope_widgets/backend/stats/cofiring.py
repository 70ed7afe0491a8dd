"""Exact co-firing counts of latent pairs on a corpus: how often two latents fire on the same token.

Counting every pair of a W-wide dictionary needs ``W²`` counters (68 billion at 262k), so only **candidate
pairs** are counted, and those exactly: the pairs whose decoder directions are close
(:func:`decoder_pairs`: for each latent its ``max_partners`` nearest latents by decoder cosine, kept when the
cosine is at least ``min_cosine``), which is what parent/child relations and the family tree across widths ask
about. Memory is ``O(W · max_partners)`` whatever the corpus; every count is an exact integer sum over tokens,
so two passes over two halves of a corpus merge exactly (:meth:`CoFiring.merge_from`).

This is a pass of its own, cached on its own (``cache_dir("cofiring", ...)``, keyed by model, dictionaries,
corpus and parameters), rather than a part of the statistics scan: the scan's format and cache identity stay
as they are (so the demo statistics are not rebuilt), and the scan's state stays ``O(W)`` per feature.

Tokens: the corpus is tokenised as a prompt (one ``<bos>``), ``<bos>``, padding and every masked token are left
out, as in the scan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from gemscope_widgets.backend.analysis.features import sae_inputs
from gemscope_widgets.backend.analysis.related import nearest_decoder_rows
from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.gemma.prompts import masked_ids
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.stats import store
from gemscope_widgets.backend.stats.corpus import (
    corpus_fingerprint,
    load_corpus,
    pad_batch,
    plan_batches,
    tokenize_docs,
)
from gemscope_widgets.backend.stats.scan import encode_entries
from gemscope_widgets.cache import cache_dir, key_digest, name_slug
from gemscope_widgets.errors import MatryoshkaError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

FORMAT_VERSION = 1
"""Bumped whenever the stored counts change meaning; other versions are recounted."""
MAX_PARTNERS = 32
"""Candidate partners per latent (its nearest latents by decoder cosine)."""
MIN_COSINE = 0.2
"""Decoder cosine below which a pair is not a candidate (random directions in 640 dimensions: σ ≈ 0.04)."""
MAX_DOCS = 1000
"""Documents of the default corpus counted over (the demo SAE: 200 documents took 109 s on 2 busy CPU cores)."""
_MAX_PAIRS = 1 << 22
"""Token-level pairs enumerated at a time: bounds the counting temporaries (about 100 MB)."""


def same_site(a: Any, b: Any) -> None:
    """:class:`MatryoshkaError` unless ``a`` and ``b`` read and write the same hook points of the same model."""
    ca, cb = a.config, b.config
    if ca.model_name and cb.model_name and ca.model_name != cb.model_name:
        raise MatryoshkaError(
            f"{ca.name} is for {ca.model_name} but {cb.name} is for {cb.model_name}: compare dictionaries of one model."
        )
    if (tuple(ca.hook_points_in), tuple(ca.hook_points_out)) != (tuple(cb.hook_points_in), tuple(cb.hook_points_out)):
        raise MatryoshkaError(
            f"{ca.name} reads {ca.hook_in} and writes {ca.hook_out}, but {cb.name} reads {cb.hook_in} and writes "
            f"{cb.hook_out}: compare dictionaries of the same site and layer."
        )


def decoder_pairs(
    a: Any, b: Any = None, *, max_partners: int = MAX_PARTNERS, min_cosine: float = MIN_COSINE,
    chunk: int = 4096, progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidate pairs ``(pair_a [P], pair_b [P], cosine [P])`` by decoder cosine, sorted by ``(a, b)``.

    One dictionary (``b`` None): unordered pairs ``a < b`` of latents where either is among the other's
    ``max_partners`` nearest (cosine ``>= min_cosine``). Two dictionaries: for each latent of ``a``, its
    ``max_partners`` nearest latents of ``b`` (cosine ``>= min_cosine``).
    """
    other = a if b is None else b
    idx, cos = nearest_decoder_rows(a, other, max_partners, exclude_self=b is None, chunk=chunk, progress=progress)
    rows = torch.arange(idx.shape[0]).unsqueeze(1).expand_as(idx)
    keep = cos >= min_cosine
    pa, pb, pc = rows[keep], idx[keep], cos[keep]
    if b is None:
        pa, pb = torch.minimum(pa, pb), torch.maximum(pa, pb)
    keys = pa * int(other.width) + pb
    keys, first = _unique_first(keys)
    return keys // int(other.width), keys % int(other.width), pc[first].float()


def _unique_first(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique ``keys`` and the position of each one's first occurrence."""
    uniq, inv = torch.unique(keys, return_inverse=True)
    first = torch.full((uniq.numel(),), keys.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inv, torch.arange(keys.numel()), reduce="amin")
    return uniq, first


def count_token_pairs(
    tok_a: torch.Tensor, feat_a: torch.Tensor, tok_b: torch.Tensor, feat_b: torch.Tensor,
    pair_keys: torch.Tensor, width_b: int, n_tokens: int, *, ordered: bool,
) -> torch.Tensor:
    """How many tokens each candidate pair fires on together: ``[P]`` int64 for ``pair_keys`` (sorted
    ``a · width_b + b``).

    ``(tok_*, feat_*)``: the non-zero entries of each dictionary on ``n_tokens`` tokens, sorted by token.
    ``ordered=False`` (one dictionary, ``a`` and ``b`` the same entries) counts each unordered pair once
    (``a < b``). Token-level pairs are enumerated ``_MAX_PAIRS`` at a time.
    """
    counts = torch.zeros(pair_keys.numel(), dtype=torch.int64, device=pair_keys.device)
    if tok_a.numel() == 0 or tok_b.numel() == 0 or pair_keys.numel() == 0:
        return counts
    per_b = torch.bincount(tok_b, minlength=n_tokens)
    start_b = torch.cumsum(per_b, 0) - per_b
    rep = per_b[tok_a]  # partners of each a-entry
    ends = torch.cumsum(rep, 0)
    lo = 0
    while lo < tok_a.numel():
        base = int(ends[lo - 1]) if lo else 0
        hi = int(torch.searchsorted(ends, base + _MAX_PAIRS, right=True))
        hi = max(hi, lo + 1)
        r = rep[lo:hi]
        src = torch.repeat_interleave(torch.arange(lo, hi, device=r.device), r)
        offset = torch.arange(src.numel(), device=r.device) - torch.repeat_interleave(torch.cumsum(r, 0) - r, r)
        partner = start_b[tok_a[src]] + offset
        fa, fb = feat_a[src], feat_b[partner]
        if not ordered:
            keep = fa < fb
            fa, fb = fa[keep], fb[keep]
        keys = fa * width_b + fb
        at = torch.searchsorted(pair_keys, keys).clamp_(max=pair_keys.numel() - 1)
        hit = pair_keys[at] == keys
        counts += torch.bincount(at[hit], minlength=pair_keys.numel())
        lo = hi
    return counts


@dataclass
class CoFiring:
    """Exact co-firing counts of candidate latent pairs (see the module docstring).

    ``saes``: the names of dictionary ``a`` and ``b`` (the same name twice for one dictionary);
    ``fired_a [W_a]``, ``fired_b [W_b]``: tokens each latent fired on; ``pair_a``, ``pair_b``, ``cosine``,
    ``count`` (all ``[P]``): the candidate pairs, their decoder cosine and the tokens both fired on;
    ``n_tokens``: tokens counted; ``one_dictionary``: ``a`` and ``b`` are one dictionary (unordered pairs
    ``a < b``, ``fired_b`` is ``fired_a``); ``key``: what identifies the pass (model, dictionaries, corpus,
    parameters).
    """

    saes: tuple[str, str]
    widths: tuple[int, int]
    n_tokens: int
    fired_a: torch.Tensor
    fired_b: torch.Tensor
    pair_a: torch.Tensor
    pair_b: torch.Tensor
    cosine: torch.Tensor
    count: torch.Tensor
    one_dictionary: bool
    key: dict[str, Any]

    def merge_from(self, other: CoFiring) -> None:
        """Add the counts of the same pass over other documents (same dictionaries and candidate pairs)."""
        if not (torch.equal(self.pair_a, other.pair_a) and torch.equal(self.pair_b, other.pair_b)):
            raise MatryoshkaError("These co-firing counts are for other latent pairs; count both with the same "
                                  "dictionaries and parameters.")
        self.fired_a = self.fired_a + other.fired_a
        self.fired_b = self.fired_a if self.one_dictionary else self.fired_b + other.fired_b
        self.count = self.count + other.count
        self.n_tokens += other.n_tokens

    def tensors(self) -> dict[str, torch.Tensor]:
        """The arrays to store (``fired_b`` only when it is another dictionary's)."""
        out = {"fired_a": self.fired_a, "pair_a": self.pair_a, "pair_b": self.pair_b, "cosine": self.cosine,
               "count": self.count}
        if not self.one_dictionary:
            out["fired_b"] = self.fired_b
        return out


def count_cofiring(
    gm: GemmaModel, a: Any, b: Any = None, corpus: Any = None, *,
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    max_partners: int = MAX_PARTNERS, min_cosine: float = MIN_COSINE, max_docs: int | None = MAX_DOCS,
    max_doc_tokens: int = 128, batch_size: int = 16, batch_tokens: int = 2048, act_budget: int = 2**24,
    progress: bool = True,
) -> CoFiring:
    """Count, on ``corpus`` (default: the offline default corpus, its first ``max_docs`` documents cut to
    ``max_doc_tokens`` tokens), how often each candidate pair fires on one token, and how often each latent
    fires. ``b``: a second dictionary of the same site (its latents are the pairs' second members); ``pairs``:
    ``(pair_a, pair_b, cosine)`` to count instead of :func:`decoder_pairs` (``pair_a · W_b + pair_b`` sorted
    and unique). Not cached: :func:`cofiring` is the cached front end.
    """

    two = b is not None and b is not a
    other = b if two else a
    if two:
        same_site(a, other)
    pa, pb, pc = pairs if pairs is not None else decoder_pairs(a, other if two else None, max_partners=max_partners,
                                                              min_cosine=min_cosine, progress=progress)
    w_b = int(other.width)
    pair_keys = pa.long() * w_b + pb.long()
    if pair_keys.numel() > 1 and not bool((pair_keys[1:] > pair_keys[:-1]).all()):
        raise MatryoshkaError("pairs must be sorted by (a, b) and unique, as decoder_pairs returns them.")
    texts = load_corpus(corpus, max_docs=max_docs)
    hidden = torch.tensor(sorted(masked_ids(gm.tokenizer)))
    fired_a = torch.zeros(int(a.width), dtype=torch.int64)
    fired_b = torch.zeros(w_b, dtype=torch.int64) if two else fired_a
    count = torch.zeros(pair_keys.numel(), dtype=torch.int64)
    hooks = tuple(dict.fromkeys([*a.read_hook_points, *other.read_hook_points]))
    n_tokens = 0
    docs = tokenize_docs(gm, list(texts[: len(texts)]), max_doc_tokens)
    bar = progress_bar(total=len(docs), desc=f"Co-firing {a.config.name}", unit="doc", disable=not progress)
    for batch in plan_batches([len(d) for d in docs], batch_size, batch_tokens):
        ids, mask = pad_batch([docs[i] for i in batch], gm.tokenizer.pad_token_id)
        flat = (mask.bool() & ~torch.isin(ids, hidden)).reshape(-1).nonzero(as_tuple=True)[0]
        with torch.inference_mode():
            captured = capture(gm, ids, hooks, stop_early=True, attention_mask=mask)
            entries = []
            for sae in (a, other) if two else (a,):
                x = sae_inputs(sae, captured)
                x = x.reshape(-1, *x.shape[2:])[flat.to(x.device)]
                tok, feat, _ = encode_entries(sae, x, act_budget)
                entries.append((tok.cpu(), feat.cpu()))
        (tok_a, feat_a), (tok_b, feat_b) = entries[0], entries[-1]
        fired_a += torch.bincount(feat_a, minlength=int(a.width))
        if two:
            fired_b += torch.bincount(feat_b, minlength=w_b)
        count += count_token_pairs(tok_a, feat_a, tok_b, feat_b, pair_keys, w_b, int(flat.numel()), ordered=two)
        n_tokens += int(flat.numel())
        bar.update(len(batch))
    bar.close()
    return CoFiring(
        saes=(a.config.name, other.config.name), widths=(int(a.width), w_b), n_tokens=n_tokens,
        fired_a=fired_a, fired_b=fired_b, pair_a=pa.long(), pair_b=pb.long(), cosine=pc.float(), count=count,
        one_dictionary=not two, key={"saes": [a.config.name, other.config.name], "corpus": corpus_fingerprint(texts)},
    )


def cofiring(
    gm: GemmaModel, sae: Any, corpus: Any = None, *, max_partners: int = MAX_PARTNERS,
    min_cosine: float = MIN_COSINE, max_docs: int | None = MAX_DOCS, max_doc_tokens: int = 128,
    cache: bool = True, progress: bool = True,
) -> CoFiring:
    """Co-firing counts of ``sae``'s latent pairs with close decoder directions (:func:`count_cofiring`),
    cached in ``cache_dir("cofiring", ...)`` under the model's and SAE's weights, the corpus and the
    parameters: counted once (minutes on a CPU: :data:`MAX_DOCS`), read back afterwards."""
    texts = load_corpus(corpus, max_docs=max_docs)
    params = {"max_partners": int(max_partners), "min_cosine": float(min_cosine), "max_doc_tokens": int(max_doc_tokens)}
    key = {"model": store.model_identity(gm), "sae": store.sae_identity(sae), "corpus": corpus_fingerprint(texts),
           "params": params, "format": FORMAT_VERSION}
    folder = None
    if cache:
        folder = cache_dir("cofiring", f"{name_slug(sae.config.name)}-{key_digest(key)}")
        found = _read(folder, key)
        if found is not None:
            return found
    result = count_cofiring(gm, sae, None, list(texts[: len(texts)]), max_partners=max_partners,
                            min_cosine=min_cosine, max_docs=None, max_doc_tokens=max_doc_tokens, progress=progress)
    result.key = key
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        store.write_tensors(result.tensors(), folder / "cofiring.safetensors")
        store.write_json(folder / "cofiring.json", {"key": key, "saes": list(result.saes),
                                                   "widths": list(result.widths), "n_tokens": result.n_tokens})
    return result


def _read(folder: Any, key: dict[str, Any]) -> CoFiring | None:
    """The cached pass in ``folder`` when its key matches; None when absent, foreign or damaged."""
    meta_path = folder / "cofiring.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
        if meta.get("key") != json.loads(json.dumps(key)):
            return None
        t = load_file(str(folder / "cofiring.safetensors"))
        names, widths = meta["saes"], meta["widths"]
        return CoFiring(saes=(str(names[0]), str(names[1])), widths=(int(widths[0]), int(widths[1])),
                        n_tokens=int(meta["n_tokens"]), fired_a=t["fired_a"], fired_b=t.get("fired_b", t["fired_a"]),
                        pair_a=t["pair_a"], pair_b=t["pair_b"], cosine=t["cosine"], count=t["count"],
                        one_dictionary="fired_b" not in t, key=key)
    except Exception:  # safetensors and json raise several types: recount rather than trust it
        return None


__all__ = ["CoFiring", "cofiring", "count_cofiring", "count_token_pairs", "decoder_pairs", "same_site"]
