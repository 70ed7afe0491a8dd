"""Parents and children of a latent: the coarser latents it implies and the finer latents that imply it.

In a Matryoshka dictionary (Bussmann, Nabeshima, Karvonen, Nanda, 2025) an early latent is general and later
ones refine it: a refinement fires only where its parent fires, and writes in a direction close to the
parent's. From the exact co-firing counts of :mod:`~gemscope_widgets.backend.stats.cofiring`:

- a **parent** of latent ``f`` is an earlier latent ``p < f`` with ``P(p fires | f fires) >= min_cofiring``
  and decoder cosine ``cos(d_p, d_f) >= min_cosine``;
- a **child** of ``f`` is a later latent ``c > f`` with ``P(f fires | c fires) >= min_cofiring`` and
  ``cos(d_f, d_c) >= min_cosine``.

A conditional is only stated for a latent that fired on at least ``min_firings`` tokens. The defaults
(:data:`MIN_COFIRING` 0.8, :data:`MIN_COSINE` 0.3, :data:`MIN_FIRINGS` 5) ask for "fires whenever, up to one
token in five" and a direction well outside chance (random directions in 640 dimensions have cosines of about
±0.04); the candidate pairs counted are those with cosine at least
:data:`~gemscope_widgets.backend.stats.cofiring.MIN_COSINE` (0.2), so ``min_cosine`` below that finds nothing
more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemscope_widgets.backend.dictionaries.base import check_feature_index
from gemscope_widgets.backend.stats.cofiring import CoFiring
from gemscope_widgets.errors import MatryoshkaError

MIN_COFIRING = 0.8
"""P(parent fires | latent fires) at or above which a close earlier latent is a parent."""
MIN_COSINE = 0.3
"""Decoder cosine at or above which two latents are close enough to be parent and child."""
MIN_FIRINGS = 5
"""Tokens a latent must fire on before a conditional probability given it is stated."""


@dataclass(frozen=True)
class Relative:
    """A parent or child: ``latent``; ``p_implied``: P(the coarser fires | the finer fires); ``cosine``: of the
    two decoder directions; ``count``: tokens both fired on; ``n_fired``: tokens the relative fired on."""

    latent: int
    p_implied: float
    cosine: float
    count: int
    n_fired: int


@dataclass(frozen=True)
class LatentFamily:
    """``latent``'s parents and children (best first: highest ``p_implied``, then cosine), and how many tokens
    it fired on out of ``n_tokens``."""

    latent: int
    n_fired: int
    n_tokens: int
    parents: list[Relative]
    children: list[Relative]


def latent_family(
    cofiring: CoFiring,
    latent: int,
    *,
    min_cofiring: float = MIN_COFIRING,
    min_cosine: float = MIN_COSINE,
    min_firings: int = MIN_FIRINGS,
) -> LatentFamily:
    """Parents and children of ``latent`` from one dictionary's co-firing counts (see the module docstring).

    Raises :class:`~gemscope_widgets.errors.FeatureIndexError` for a latent outside the width and
    :class:`~gemscope_widgets.errors.MatryoshkaError` for counts across two dictionaries.
    """
    if not cofiring.one_dictionary:
        raise MatryoshkaError(
            f"These co-firing counts pair {cofiring.saes[0]} with {cofiring.saes[1]}; parents and children need "
            "the counts of one dictionary (cofiring(model, sae))."
        )
    f = check_feature_index(latent, cofiring.widths[0], cofiring.saes[0])
    fired = cofiring.fired_a
    close = cofiring.cosine >= min_cosine
    # Parents: pairs (p, f) with p < f, conditioned on f. Children: pairs (f, c) with c > f, conditioned on c.
    parents = _relatives(cofiring, close & (cofiring.pair_b == f), cofiring.pair_a, fired[f], fired,
                         min_cofiring, min_firings, given_other=False)
    children = _relatives(cofiring, close & (cofiring.pair_a == f), cofiring.pair_b, fired[f], fired,
                          min_cofiring, min_firings, given_other=True)
    return LatentFamily(latent=f, n_fired=int(fired[f]), n_tokens=cofiring.n_tokens, parents=parents,
                        children=children)


def _relatives(co: CoFiring, rows: torch.Tensor, other: torch.Tensor, own_fired: torch.Tensor,
               fired: torch.Tensor, min_cofiring: float, min_firings: int, *, given_other: bool) -> list[Relative]:
    out = []
    for i in rows.nonzero(as_tuple=True)[0].tolist():
        o = int(other[i])
        given = int(fired[o]) if given_other else int(own_fired)
        if given < min_firings:
            continue
        p = int(co.count[i]) / given
        if p >= min_cofiring:
            out.append(Relative(latent=o, p_implied=p, cosine=float(co.cosine[i]), count=int(co.count[i]),
                                n_fired=int(fired[o])))
    return sorted(out, key=lambda r: (-r.p_implied, -r.cosine, r.latent))


__all__ = ["MIN_COFIRING", "MIN_COSINE", "MIN_FIRINGS", "LatentFamily", "Relative", "latent_family"]
