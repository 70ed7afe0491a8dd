"""The family tree across widths: how a narrow dictionary's latents split in a wider one of the same site.

Gemma Scope 2 trains each site at several widths (16k and 262k at every layer). Feature splitting (Bricken et
al., 2023, "Towards Monosemanticity"; Bussmann et al., 2025, for Matryoshka SAEs) shows up as several wide
latents whose decoder directions sit near one narrow latent. For each wide latent this module finds its ``n``
nearest narrow latents by decoder cosine (a chunked comparison keeping the top ``n`` per row:
:func:`~gemscope_widgets.backend.analysis.related.nearest_decoder_rows`, so 16k × 262k holds one
``chunk × chunk`` block at a time), and, given a model and a corpus, how often each of those narrow latents
fires where the wide one fires (:func:`~gemscope_widgets.backend.stats.cofiring.count_cofiring` on exactly
those pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.analysis.related import nearest_decoder_rows
from gemscope_widgets.backend.dictionaries.base import check_feature_index
from gemscope_widgets.backend.stats.cofiring import MAX_DOCS, count_cofiring, same_site
from gemscope_widgets.errors import MatryoshkaError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel


@dataclass(frozen=True)
class Branch:
    """One edge of the tree: a ``wide`` latent, a ``narrow`` latent, the cosine of their decoder directions,
    ``rank`` (0: the narrow latent nearest to the wide one) and ``p_narrow_given_wide`` (P(narrow fires | wide
    fires); None without a corpus, NaN when the wide latent never fired)."""

    wide: int
    narrow: int
    cosine: float
    rank: int
    p_narrow_given_wide: float | None


@dataclass(frozen=True)
class FamilyTree:
    """Nearest narrow latents of every wide latent.

    ``nearest [W_wide, n]`` (int64) and ``cosine [W_wide, n]`` (float32), best first; with a corpus,
    ``coactivation [W_wide, n]`` (P(narrow fires | wide fires), NaN where the wide latent never fired),
    ``wide_fired [W_wide]`` and ``n_tokens``.
    """

    narrow_name: str
    wide_name: str
    nearest: torch.Tensor
    cosine: torch.Tensor
    coactivation: torch.Tensor | None = None
    wide_fired: torch.Tensor | None = None
    n_tokens: int = 0

    def _branch(self, w: int, r: int) -> Branch:
        co = None if self.coactivation is None else float(self.coactivation[w, r])
        return Branch(wide=w, narrow=int(self.nearest[w, r]), cosine=float(self.cosine[w, r]), rank=r,
                      p_narrow_given_wide=co)

    def parents(self, wide_latent: int) -> list[Branch]:
        """The ``n`` nearest narrow latents of one wide latent, best first."""
        w = check_feature_index(wide_latent, self.nearest.shape[0], self.wide_name)
        return [self._branch(w, r) for r in range(self.nearest.shape[1])]

    def children(self, narrow_latent: int, *, min_cosine: float = 0.0) -> list[Branch]:
        """The wide latents whose nearest narrow latent is ``narrow_latent`` (how it split), highest cosine
        first, those with cosine at least ``min_cosine``. The narrow width is not stored: an index beyond the
        narrow dictionary simply has no children."""
        if int(narrow_latent) < 0:
            raise MatryoshkaError(f"Latent indices are 0 or more, got {narrow_latent}.")
        rows = ((self.nearest[:, 0] == int(narrow_latent)) & (self.cosine[:, 0] >= min_cosine)).nonzero(
            as_tuple=True)[0]
        order = torch.argsort(-self.cosine[rows, 0], stable=True)
        return [self._branch(int(w), 0) for w in rows[order]]


def family_tree(
    narrow: Any,
    wide: Any,
    n: int = 3,
    *,
    model: GemmaModel | None = None,
    corpus: Any = None,
    max_docs: int | None = MAX_DOCS,
    chunk: int = 4096,
    progress: bool = True,
) -> FamilyTree:
    """Each latent of ``wide``'s ``n`` nearest latents of ``narrow`` by decoder cosine, and with ``model``
    their co-activation on ``corpus`` (default: the offline default corpus, ``max_docs`` documents).

    Raises :class:`~gemscope_widgets.errors.MatryoshkaError` when the two dictionaries are of different sites,
    layers or models, when ``narrow`` is the wider of the two, or when ``n`` is below 1.
    """
    same_site(narrow, wide)
    if int(narrow.width) > int(wide.width):
        raise MatryoshkaError(
            f"{narrow.config.name} ({narrow.width} latents) is wider than {wide.config.name} ({wide.width}): "
            "pass the narrow dictionary first."
        )
    if int(n) < 1:
        raise MatryoshkaError(f"Ask for at least one nearest latent per wide latent (n >= 1), got {n}.")
    n = min(int(n), int(narrow.width))
    nearest, cosine = nearest_decoder_rows(wide, narrow, n, chunk=chunk, progress=progress)
    if model is None:
        return FamilyTree(narrow.config.name, wide.config.name, nearest, cosine)
    rows = torch.arange(nearest.shape[0]).unsqueeze(1).expand_as(nearest)
    keys = rows * int(narrow.width) + nearest
    uniq, inv = torch.unique(keys.reshape(-1), return_inverse=True)
    pairs = (uniq // int(narrow.width), uniq % int(narrow.width), torch.zeros(uniq.numel()))
    co = count_cofiring(model, wide, narrow, corpus, pairs=pairs, max_docs=max_docs, progress=progress)
    both = co.count[inv].reshape(nearest.shape).double()
    fired = co.fired_a.double().unsqueeze(1)
    coact = torch.where(fired > 0, both / fired.clamp_min(1), torch.full_like(both, float("nan"))).float()
    return FamilyTree(narrow.config.name, wide.config.name, nearest, cosine, coact, co.fired_a, co.n_tokens)


__all__ = ["Branch", "FamilyTree", "family_tree"]
