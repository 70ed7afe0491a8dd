"""An SAE card: how well an SAE fits this model on this corpus (as Gemma Scope 2's tutorial reports).

- ``l0``: mean number of active features per token;
- ``fvu``: fraction of variance unexplained, ``Σ‖target − recon‖² / Σ‖target − mean(target)‖²`` over tokens;
- ``dead_features``: features that never fired on the corpus;
- next-token loss of the clean model, with the reconstruction spliced in at the SAE's output site, and with
  that site zero-ablated (for scale), plus ``loss_recovered = (zero − spliced) / (zero − clean)``.

``<bos>`` and padding are left out of every number and are never replaced: the ``<bos>`` residual is huge and
no Gemma Scope SAE is meant to reconstruct it. The reconstruction spliced in is computed from the clean
inputs; for one-layer SAEs and transcoders that is exact (the input is upstream of the output), for CLTs and
crosscoders it is the open-loop reconstruction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from gemscope_widgets.backend.dictionaries.base import stack_slots
from gemscope_widgets.backend.gemma.hooks import HookFn, hooked
from gemscope_widgets.backend.gemma.prompts import masked_ids
from gemscope_widgets.backend.gemma.sites import Site, resolve_site
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.stats.corpus import load_corpus, pad_batch, tokenize_docs

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel


def fvu_from_sums(sq_err: float, sum_sq: float, total: torch.Tensor | None, n: int) -> float:
    """FVU from running sums over ``n`` token rows, for streaming evaluation.

    ``sq_err = Σ‖t − r‖²``, ``sum_sq = Σ‖t‖²``, ``total = Σ t`` (a ``[d]`` vector); uses
    ``Σ‖t − mean‖² = Σ‖t‖² − ‖Σt‖² / n``. NaN when the targets have no variance.
    """
    variance = sum_sq - (float((total.double() ** 2).sum()) / n if total is not None and n > 0 else 0.0)
    return sq_err / variance if variance > 0 else float("nan")


def fvu(target: torch.Tensor, recon: torch.Tensor) -> float:
    """Fraction of variance unexplained, ``Σ‖t − r‖² / Σ‖t − mean(t)‖²`` over the rows of ``[N, d]`` tensors.

    The reconstruction metric of Gemma Scope 2 and SAELens (``1 − explained variance``); summed in float64.
    """
    t, r = target.double(), recon.double().to(target.device)
    return fvu_from_sums(float(((t - r) ** 2).sum()), float((t**2).sum()), t.sum(0), len(t))


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed cross-entropy of predicting each real token after the first, and how many there were.

    ``logits [B, T, V]``, ``ids [B, T]``, ``mask [B, T]`` (1 on real tokens); the sum is in nats.
    """
    targets = ids[:, 1:]
    valid = mask[:, 1:].bool()
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets.to(logits.device), reduction="none")
    return float(ce[valid.to(ce.device)].sum()), int(valid.sum())


def store_into(store: dict[str, torch.Tensor], name: str) -> HookFn:
    """A capture hook that keeps the tensor it sees, detached, as ``store[name]``."""

    def fn(t: torch.Tensor) -> None:
        store[name] = t.detach()

    return fn


def forward_logits(
    gm: GemmaModel, ids: torch.Tensor, mask: torch.Tensor, pairs: list[tuple[Site, HookFn]]
) -> torch.Tensor:
    """Logits ``[B, T, V]`` of a padded batch with ``pairs`` of (site, hook) attached (removed on every exit)."""
    with torch.inference_mode(), hooked(*pairs):
        out = gm.model(input_ids=ids.to(gm.device), attention_mask=mask.to(gm.device), use_cache=False)
    logits: torch.Tensor = out.logits
    return logits


def spliced_loss(
    gm: GemmaModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    sites_out: list[Site],
    replacement: torch.Tensor,
    where: torch.Tensor,
) -> tuple[float, int]:
    """Summed next-token loss (nats) and token count with ``replacement`` spliced in at ``sites_out``.

    ``replacement [B, T, d]`` (one site) or ``[B, T, n, d]`` (slot ``j`` at ``sites_out[j]``) replaces the
    activation where ``where [B, T]`` is true; elsewhere (``<bos>``, padding) the model's own value stays.
    """

    def splice(slot: int) -> HookFn:
        def fn(t: torch.Tensor) -> torch.Tensor:
            part = replacement if replacement.dim() == t.dim() else replacement[..., slot, :]
            keep_mask = where.to(t.device).unsqueeze(-1)
            return torch.where(keep_mask, part.to(t.device, t.dtype), t)

        return fn

    pairs = [(site, splice(j)) for j, site in enumerate(sites_out)]
    return next_token_loss(forward_logits(gm, ids, mask, pairs), ids, mask)


def sae_card(
    gm: GemmaModel,
    sae: Any,
    corpus: Any = None,
    *,
    max_docs: int | None = 64,
    max_doc_tokens: int = 128,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """L0, FVU, dead features and clean / spliced / zero-ablated next-token loss of ``sae`` on ``corpus``.

    ``corpus`` is anything :func:`load_corpus` takes (default: the offline default corpus), cut to
    ``max_docs`` documents of at most ``max_doc_tokens`` tokens.
    """

    texts = load_corpus(corpus, max_docs=max_docs)
    docs = tokenize_docs(gm, list(texts[: len(texts)]), max_doc_tokens)
    hooks_in, hooks_out = tuple(sae.config.hook_points_in), tuple(sae.config.hook_points_out)
    sites_in = [resolve_site(gm, h) for h in hooks_in]
    sites_out = [resolve_site(gm, h) for h in hooks_out]
    pad = gm.tokenizer.pad_token_id
    hidden = torch.tensor(sorted(masked_ids(gm.tokenizer)))
    fired = torch.zeros(sae.width, dtype=torch.bool)
    totals = {"l0": 0.0, "sq_err": 0.0, "sum": 0.0, "sum_sq": 0.0, "tokens": 0}
    target_sum: torch.Tensor | None = None
    losses = {"clean": [0.0, 0], "spliced": [0.0, 0], "zero": [0.0, 0]}
    for a in progress_bar(range(0, len(docs), batch_size), desc=f"SAE card {sae.config.name}", disable=not progress):
        batch = docs[a : a + batch_size]
        ids, mask = pad_batch(batch, pad)
        valid = mask.bool() & ~torch.isin(ids, hidden)
        captured: dict[str, torch.Tensor] = {}
        pairs = [(s, store_into(captured, s.hook_point)) for s in [*sites_in, *sites_out]]
        s, n = next_token_loss(forward_logits(gm, ids, mask, pairs), ids, mask)
        losses["clean"][0] += s
        losses["clean"][1] += n
        x_in = stack_slots(captured, hooks_in)
        target = stack_slots(captured, hooks_out).float().cpu()
        with torch.inference_mode():
            acts = sae.encode(x_in)
            recon = sae.decode(acts, x_in).float().cpu()
        acts = acts.cpu()
        v = valid
        fired |= (acts[v] > 0).any(0)
        totals["l0"] += float((acts[v] > 0).sum())
        totals["sq_err"] += float(((recon[v] - target[v]) ** 2).sum())
        totals["sum_sq"] += float((target[v].double() ** 2).sum())
        batch_sum = target[v].double().sum(0)
        target_sum = batch_sum if target_sum is None else target_sum + batch_sum
        totals["tokens"] += int(v.sum())

        for label, replacement in (("spliced", recon), ("zero", torch.zeros_like(recon))):
            s, n = spliced_loss(gm, ids, mask, sites_out, replacement, valid)
            losses[label][0] += s
            losses[label][1] += n
    n_tok = max(totals["tokens"], 1)
    clean, spliced, zero = (losses[k][0] / max(losses[k][1], 1) for k in ("clean", "spliced", "zero"))
    dead = int((~fired).sum())
    return {
        "sae": sae.config.name,
        "model": gm.name,
        "n_docs": len(docs),
        "n_tokens": totals["tokens"],
        "l0": totals["l0"] / n_tok,
        "fvu": fvu_from_sums(totals["sq_err"], totals["sum_sq"], target_sum, int(totals["tokens"])),
        "dead_features": dead,
        "dead_fraction": dead / sae.width,
        "loss_clean": clean,
        "loss_spliced": spliced,
        "loss_zero_ablation": zero,
        "delta_loss": spliced - clean,
        "loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else float("nan"),
    }
