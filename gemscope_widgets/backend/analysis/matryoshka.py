"""A dictionary as nested prefixes: how well its first ``k`` latents reconstruct, and whether its latents are
ordered coarse-to-fine.

A Matryoshka dictionary (Bussmann, Nabeshima, Karvonen, Nanda, 2025, "Learning Multi-Level Features with
Matryoshka SAEs"; SAELens ``matryoshka_batchtopk_sae.py``, ``matryoshka_widths``) is trained so that every
nested prefix of its latents (the first 128, the first 512, ...) reconstructs the activation on its own: early
latents are general, later ones refine them. Gemma Scope 2 names Matryoshka training but records no group
sizes, so whether a dictionary's latent order means anything is measured here, not assumed:

- :func:`prefix_curve` encodes held-out text once, keeps only the latents ``< k`` for each size ``k``
  (``encode``, zero every latent ``>= k``, ``decode``) and reports the FVU (the one
  :func:`~gemscope_widgets.backend.analysis.evaluation.fvu_from_sums`), the L0 of the prefix and, for
  one-layer dictionaries, the next-token loss with the prefix reconstruction spliced in
  (:func:`~gemscope_widgets.backend.analysis.evaluation.spliced_loss`, as the SAE card measures it) and the
  loss recovered. For scale, the FVU of ``k`` latents drawn at random (one fixed random order, also nested)
  is reported beside each prefix: a flat dictionary's prefix is no better than a random subset.
- :class:`LatentOrder` relates each latent's firing frequency and its share of the reconstruction
  (``Σ_tokens a_i² ‖d_i‖²``) to its index by Spearman's rank correlation; :attr:`LatentOrder.finding`
  states the result with its numbers. The order counts as coarse-to-fine when the frequency falls with the
  index with ``ρ <= -ORDER_RHO`` at ``p < ORDER_P``.

``<bos>``, padding and every masked token are left out of every number, as in the SAE card.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gemscope_widgets.backend.analysis.evaluation import (
    forward_logits,
    fvu_from_sums,
    next_token_loss,
    spliced_loss,
    store_into,
)
from gemscope_widgets.backend.analysis.features import SparseActivations
from gemscope_widgets.backend.dictionaries.base import stack_slots
from gemscope_widgets.backend.dictionaries.jumprelu import JumpReLUSAE
from gemscope_widgets.backend.gemma.prompts import masked_ids
from gemscope_widgets.backend.gemma.sites import resolve_site
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.stats.corpus import load_corpus, pad_batch, tokenize_docs
from gemscope_widgets.backend.training.activations import held_out_texts
from gemscope_widgets.errors import MatryoshkaError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

MATRYOSHKA_KEY = "matryoshka_groups"
"""The extra ``config.json`` key recording a Matryoshka SAE's nested prefix sizes (``[128, 512, ..., width]``),
written by ``train_sae(..., matryoshka_groups=...)``. Gemma Scope 2 publishes no such key; loaders that read the
published keys by name (SAELens, circuit-tracer, this package) ignore it. :func:`prefix_curve` uses it as its
default sizes."""
ORDER_RHO = 0.1
"""|Spearman ρ| at or above which the latent index is said to order firing frequency (or contribution)."""
ORDER_P = 0.01
"""Two-sided p-value below which that correlation is said to be real."""


def default_sizes(width: int) -> list[int]:
    """``width / 32, / 8, / 4, / 2`` and ``width`` (as the 128 / 512 / 1,024 / 2,048 / 4,096 of a 4,096-wide
    dictionary), the ones of at least one latent."""
    return sorted({s for s in (width // 32, width // 8, width // 4, width // 2, width) if s >= 1})


def prefix_levels(sae: Any) -> list[int]:
    """The nested levels a view offers for ``sae``: the groups its ``config.json`` records under
    :data:`MATRYOSHKA_KEY` (a Matryoshka SAE), else :func:`default_sizes` of its width; the last is the width."""
    width = int(sae.config.width)
    groups = sae.config.raw.get(MATRYOSHKA_KEY)
    sizes = check_sizes(groups, width, str(sae.config.name)) if groups else default_sizes(width)
    return sizes if sizes[-1] == width else [*sizes, width]


def check_level(level: Any, width: int, name: str) -> int:
    """``level`` as an int latent count in ``1..width``; :class:`MatryoshkaError` otherwise."""
    try:
        k = int(level)
    except (TypeError, ValueError):
        k = None
    if k is None or k != level or isinstance(level, bool):
        raise MatryoshkaError(f"A level is a whole number of latents, got {level!r}.")
    if not 1 <= k <= width:
        raise MatryoshkaError(f"Level {level!r} is outside {name}'s 1..{width} latents; pick one in that range.")
    return k


def first_latents(acts: SparseActivations, k: int) -> SparseActivations:
    """``acts`` with only the latents ``< k`` kept (each token's row keeps its order, largest first): what the
    first ``k`` latents of a nested dictionary show of a prompt. :class:`MatryoshkaError` unless ``1 <= k <=
    acts.width``."""
    k = check_level(k, acts.width, acts.sae_name)
    keep = acts.indices < k
    rows = np.repeat(np.arange(acts.n_tokens), np.diff(acts.indptr))
    counts = np.bincount(rows[keep], minlength=acts.n_tokens)
    indptr = np.zeros_like(acts.indptr)
    np.cumsum(counts, out=indptr[1:])
    return SparseActivations(prompt=acts.prompt, sae_name=acts.sae_name, width=acts.width, indptr=indptr,
                             indices=acts.indices[keep], values=acts.values[keep])


def check_sizes(sizes: Sequence[int], width: int, name: str) -> list[int]:
    """``sizes`` as ints, or :class:`MatryoshkaError` when they do not increase strictly within ``1..width``."""
    try:
        out = [int(s) for s in sizes]
    except (TypeError, ValueError):
        raise MatryoshkaError(f"Prefix sizes must be whole numbers of latents, got {sizes!r}.") from None
    if not out:
        raise MatryoshkaError("Pass at least one prefix size, e.g. sizes=(128, 512, 4096).")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise MatryoshkaError(f"Prefix sizes must increase strictly (e.g. 128, 512, 4096), got {out}.")
    if out[0] < 1 or out[-1] > width:
        raise MatryoshkaError(f"Prefix sizes must lie in 1..{width} (the width of {name}), got {out}.")
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rank correlation of two ``[n]`` arrays (ties get their average rank) and its two-sided
    p-value from the t statistic ``ρ √((n−2)/(1−ρ²))`` in the normal approximation (n ≥ 100 is meant;
    ``scipy.stats.spearmanr`` uses the t distribution). NaN when either array is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    rx -= rx.mean()
    ry -= ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if den == 0 or len(rx) < 3:
        return float("nan"), float("nan")
    rho = float(rx @ ry) / den
    if abs(rho) >= 1.0:
        return rho, 0.0
    t = rho * math.sqrt((len(rx) - 2) / (1.0 - rho * rho))
    return rho, math.erfc(abs(t) / math.sqrt(2.0))


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0, counts)
    return ranks


@dataclass(frozen=True)
class LatentOrder:
    """Whether a dictionary's latents are ordered coarse-to-fine, measured on a corpus.

    ``frequency [W]``: fraction of tokens each latent fires on; ``contribution [W]``: its share of
    ``Σ_i Σ_tokens a_i² ‖d_i‖²`` (the reconstruction energy it carries); ``rho_*`` / ``p_*``: Spearman
    correlation of each against the latent index; ``sizes`` and ``group_frequency``: the mean frequency of
    the latents in each group ``[previous size, size)``.
    """

    frequency: np.ndarray
    contribution: np.ndarray
    rho_frequency: float
    p_frequency: float
    rho_contribution: float
    p_contribution: float
    sizes: list[int]
    group_frequency: list[float]

    @property
    def coarse_to_fine(self) -> bool:
        """Frequency falls with the index: ``ρ <= -ORDER_RHO`` at ``p < ORDER_P``."""
        return self.rho_frequency <= -ORDER_RHO and self.p_frequency < ORDER_P

    @property
    def finding(self) -> str:
        """One sentence with the numbers: ordered coarse-to-fine or not."""
        lead = ("Latents are ordered coarse-to-fine" if self.coarse_to_fine
                else "Latents are not ordered coarse-to-fine")
        groups, lo = [], 0
        for size, freq in zip(self.sizes, self.group_frequency):
            groups.append(f"{lo}–{size - 1}: {100 * freq:.2f}%")
            lo = size
        return (
            f"{lead}: firing frequency against latent index has Spearman ρ = {self.rho_frequency:+.3f} "
            f"(p = {self.p_frequency:.1e}), reconstruction share ρ = {self.rho_contribution:+.3f} "
            f"(p = {self.p_contribution:.1e}); mean firing frequency by latent group: {'; '.join(groups)}. "
            f"(Coarse-to-fine means ρ <= -{ORDER_RHO} at p < {ORDER_P}.)"
        )


@dataclass(frozen=True)
class PrefixCurve:
    """Quality of each prefix of a dictionary on held-out text (one entry per size).

    ``fvu``: fraction of variance unexplained with latents ``< k`` only; ``random_fvu``: the same for ``k``
    latents drawn at random (a fixed nested random order); ``l0``: mean number of latents ``< k`` firing per
    token; ``loss``: next-token loss (nats) with the prefix reconstruction spliced in (None for dictionaries
    that span several layers); ``loss_recovered``: ``(zero − loss) / (zero − clean)``.
    """

    sae: str
    sizes: list[int]
    fvu: list[float]
    random_fvu: list[float]
    l0: list[float]
    loss: list[float] | None
    loss_recovered: list[float] | None
    loss_clean: float | None
    loss_zero_ablation: float | None
    n_tokens: int
    n_docs: int
    order: LatentOrder
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def monotone(self) -> bool:
        """Every larger prefix has an FVU no higher than the smaller one's."""
        return all(b <= a for a, b in zip(self.fvu, self.fvu[1:]))


def prefix_curve(
    gm: GemmaModel,
    sae: Any,
    corpus: Any = None,
    sizes: Sequence[int] | None = None,
    *,
    max_docs: int | None = 32,
    max_doc_tokens: int = 128,
    batch_size: int = 8,
    loss: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> PrefixCurve:
    """Reconstruction with only the first ``k`` latents of ``sae``, for each ``k`` in ``sizes``.

    ``corpus``: anything :func:`~gemscope_widgets.backend.stats.corpus.load_corpus` takes; default the
    held-out tenth of the offline corpus (text the demo SAE never trained on), cut to ``max_docs`` documents of
    at most ``max_doc_tokens`` tokens. ``sizes``: strictly increasing latent counts in ``1..width`` (default:
    the groups a Matryoshka SAE's ``config.json`` records under :data:`MATRYOSHKA_KEY`, else
    :func:`default_sizes`). ``loss``: also splice each prefix reconstruction into the model (one forward pass
    per size and batch) for the next-token loss and loss recovered. Method: Bussmann et al. (2025); see the
    module docstring.

    Raises :class:`~gemscope_widgets.errors.MatryoshkaError` for sizes that do not increase or exceed the width,
    or a dictionary that is not a one-layer SAE or transcoder (a CLT's or crosscoder's latent index runs over
    layers, so its prefixes are not nested levels).
    """

    if not isinstance(sae, JumpReLUSAE):
        raise MatryoshkaError(
            f"Prefix curves need a one-layer SAE or transcoder; {sae.config.name} is a {sae.config.kind}, whose "
            "latent index runs over layers."
        )
    width = int(sae.width)
    if sizes is None:
        sizes = sae.config.raw.get(MATRYOSHKA_KEY) or default_sizes(width)
    sizes = check_sizes(sizes, width, sae.config.name)
    texts = held_out_texts(max_docs) if corpus is None else load_corpus(corpus, max_docs=max_docs)
    docs = tokenize_docs(gm, list(texts[: len(texts)]), max_doc_tokens)
    hook_in, hook_out = sae.config.hook_points_in[0], sae.config.hook_points_out[0]
    site_in, site_out = resolve_site(gm, hook_in), resolve_site(gm, hook_out)
    hidden = torch.tensor(sorted(masked_ids(gm.tokenizer)))
    perm = torch.randperm(width, generator=torch.Generator().manual_seed(seed))
    w_dec = sae.w_dec.float()
    dec_sq = (w_dec**2).sum(1).double().cpu()
    n_sizes = len(sizes)
    sq_err = np.zeros(n_sizes)
    sq_err_random = np.zeros(n_sizes)
    fired_prefix = np.zeros(n_sizes)
    sum_sq, target_sum, n_tok = 0.0, None, 0
    n_fired = torch.zeros(width, dtype=torch.float64)
    energy = torch.zeros(width, dtype=torch.float64)
    losses = np.zeros((n_sizes + 2, 2))  # rows: clean, zero, then one per size; columns: sum, count
    starts = [0, *sizes[:-1]]
    batches = range(0, len(docs), batch_size)
    for a in progress_bar(batches, desc=f"Prefix curve {sae.config.name}", disable=not progress):
        ids, mask = pad_batch(docs[a : a + batch_size], gm.tokenizer.pad_token_id)
        valid = mask.bool() & ~torch.isin(ids, hidden)
        captured: dict[str, torch.Tensor] = {}
        pairs = [(site_in, store_into(captured, hook_in)), (site_out, store_into(captured, hook_out))]
        logits = forward_logits(gm, ids, mask, pairs)
        if loss:
            losses[0] += next_token_loss(logits, ids, mask)
        del logits
        x_in = stack_slots(captured, (hook_in,))
        target = stack_slots(captured, (hook_out,)).float().cpu()
        with torch.inference_mode():
            acts = sae.encode(x_in)
            base = sae.decode(torch.zeros_like(acts[..., :1]).expand_as(acts), x_in)  # b_dec (+ skip)
            recon, recon_random = base.clone(), base.clone()
            v = valid.to(acts.device)
            t_v = target[valid].double()
            sum_sq += float((t_v**2).sum())
            target_sum = t_v.sum(0) if target_sum is None else target_sum + t_v.sum(0)
            n_tok += int(valid.sum())
            a_v = acts[v]
            n_fired += (a_v > 0).sum(0).double().cpu()
            energy += (a_v.double() ** 2).sum(0).cpu() * dec_sq
            for j, (lo, hi) in enumerate(zip(starts, sizes)):
                recon += acts[..., lo:hi] @ w_dec[lo:hi]
                chosen = perm[lo:hi].to(acts.device)
                recon_random += acts[..., chosen] @ w_dec[chosen]
                fired_prefix[j] += float((a_v[:, :hi] > 0).sum())
                sq_err[j] += float(((recon.cpu()[valid].double() - t_v) ** 2).sum())
                sq_err_random[j] += float(((recon_random.cpu()[valid].double() - t_v) ** 2).sum())
                if loss:
                    losses[2 + j] += spliced_loss(gm, ids, mask, [site_out], recon, valid)
        if loss:
            losses[1] += spliced_loss(gm, ids, mask, [site_out], torch.zeros_like(base), valid)
    if n_tok == 0:
        raise MatryoshkaError("The corpus has no tokens to measure on (only <bos> or special tokens): pass text.")
    fvu = [fvu_from_sums(float(e), sum_sq, target_sum, n_tok) for e in sq_err]
    random_fvu = [fvu_from_sums(float(e), sum_sq, target_sum, n_tok) for e in sq_err_random]
    l0 = [float(f) / n_tok for f in fired_prefix]
    mean = losses[:, 0] / np.maximum(losses[:, 1], 1)
    clean, zero = float(mean[0]), float(mean[1])
    spliced = [float(m) for m in mean[2:]]
    recovered = [(zero - s) / (zero - clean) if zero != clean else float("nan") for s in spliced]
    order = latent_order(n_fired.numpy() / n_tok, energy.numpy(), sizes)
    rows = [
        {"size": k, "fvu": f, "random_fvu": r, "l0": z,
         **({"loss": s, "loss_recovered": lr} if loss else {})}
        for k, f, r, z, s, lr in zip(sizes, fvu, random_fvu, l0, spliced, recovered)
    ]
    return PrefixCurve(
        sae=sae.config.name, sizes=sizes, fvu=fvu, random_fvu=random_fvu, l0=l0,
        loss=spliced if loss else None, loss_recovered=recovered if loss else None,
        loss_clean=clean if loss else None, loss_zero_ablation=zero if loss else None,
        n_tokens=n_tok, n_docs=len(docs), order=order, rows=rows,
    )


def latent_order(frequency: np.ndarray, energy: np.ndarray, sizes: Sequence[int]) -> LatentOrder:
    """:class:`LatentOrder` from per-latent firing frequencies ``[W]`` and reconstruction energies ``[W]``
    (any scale: normalised to shares here); ``sizes`` (ending at ``W``) delimit the groups it summarises."""
    frequency = np.asarray(frequency, dtype=np.float64)
    total = float(np.sum(energy))
    share = np.asarray(energy, dtype=np.float64) / total if total > 0 else np.zeros_like(frequency)
    index = np.arange(len(frequency), dtype=np.float64)
    rho_f, p_f = spearman(index, frequency)
    rho_c, p_c = spearman(index, share)
    bounds = [0, *sizes] if sizes[-1] == len(frequency) else [0, *sizes, len(frequency)]
    groups = [float(frequency[lo:hi].mean()) for lo, hi in itertools.pairwise(bounds) if hi > lo]
    return LatentOrder(frequency=frequency, contribution=share, rho_frequency=rho_f, p_frequency=p_f,
                       rho_contribution=rho_c, p_contribution=p_c, sizes=bounds[1:], group_frequency=groups)


__all__ = ["MATRYOSHKA_KEY", "ORDER_P", "ORDER_RHO", "LatentOrder", "PrefixCurve", "check_level", "check_sizes",
           "default_sizes", "first_latents", "latent_order", "prefix_curve", "prefix_levels", "spearman"]
