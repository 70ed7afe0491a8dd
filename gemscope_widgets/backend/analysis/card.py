"""The feature card: everything known about one feature of one dictionary, as data a script or a view reads.

A :class:`FeatureCard` puts together what a feature dashboard shows first (Neuronpedia's feature page, Anthropic's
"Towards Monosemanticity" feature browser): the header facts (explanation or automatic label, density, maximum
activation, Neuronpedia link), the logit lens (:func:`~gemscope_widgets.backend.analysis.logit_lens.logit_lens`),
the activation histogram, related features (decoder cosine,
:func:`~gemscope_widgets.backend.analysis.related.related_by_decoder`, then co-activation from the statistics, then
parents and children from co-firing counts when given,
:func:`~gemscope_widgets.backend.analysis.hierarchy.latent_family`),
the first page of max-activating and quantile examples, and "test your own text" (:meth:`FeatureCard.test`).

:class:`FeatureCards` builds cards for one model + dictionary and follows its statistics
(a :class:`~gemscope_widgets.backend.stats.holder.StatsHolder`): the logit lens and the neighbours are computed
once per feature and kept until the statistics change; labels and explanations are read fresh on every card.
The feature pane shows a card as it is; a new section is one more field of :class:`FeatureCard`, filled in
:meth:`FeatureCards.card`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.analysis.hierarchy import latent_family
from gemscope_widgets.backend.analysis.label_scores import LabelScore
from gemscope_widgets.backend.analysis.labels import FeatureLabels
from gemscope_widgets.backend.analysis.logit_lens import logit_lens
from gemscope_widgets.backend.analysis.related import related_by_decoder
from gemscope_widgets.backend.analysis.width_family import FamilyTree, family_tree
from gemscope_widgets.backend.dictionaries.base import check_feature_index
from gemscope_widgets.backend.dictionaries.registry import dictionary_noun
from gemscope_widgets.backend.stats.cofiring import same_site
from gemscope_widgets.backend.stats.holder import StatsHolder
from gemscope_widgets.backend.stats.importers.neuronpedia import feature_url
from gemscope_widgets.errors import GemscopeError, MatryoshkaError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel
    from gemscope_widgets.backend.stats.cofiring import CoFiring
    from gemscope_widgets.backend.stats.feature_stats import Example, FeatureStats

ExampleKind = Literal["top", "quantile"]
RelatedKind = Literal["decoder", "coactivation", "parent", "child"]
MAX_TEST_TOKENS = 512
"""Longest text :meth:`FeatureCard.test` runs (tokens, ``<bos>`` included); longer text is cut."""


@dataclass(frozen=True)
class FeatureInfo:
    """The card's header. ``sae``: the dictionary's name; ``dictionary``: its noun ("SAE", "transcoder", ...);
    ``width``: its number of features; ``url``: the feature's Neuronpedia page or ""; ``explanation``: a user or
    imported one, "" when none; ``label``: the automatic label (:mod:`.labels`); ``density``: the fraction of
    scanned tokens it fires on and ``max_act``: its largest activation (None without statistics, or not finite);
    ``n_tokens``: tokens the statistics saw; ``source``: where they come from ("" when there are none)."""

    sae: str
    dictionary: str
    width: int
    url: str
    explanation: str
    label: str
    density: float | None
    max_act: float | None
    n_tokens: int
    source: str


@dataclass(frozen=True)
class LogitEffect:
    """The feature's direct effect on the next token: the ``k`` tokens it promotes (``top``, highest first) and
    suppresses (``bottom``, lowest first), each ``(token, logit)``."""

    top: list[tuple[str, float]]
    bottom: list[tuple[str, float]]


@dataclass(frozen=True, eq=False)
class Histogram:
    """The feature's non-zero activations: ``counts [n]`` in bins ``edges [n+1]`` (activation units)."""

    edges: np.ndarray
    counts: np.ndarray

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Histogram) and np.array_equal(self.edges, other.edges)
                and np.array_equal(self.counts, other.counts))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class RelatedFeature:
    """A neighbour: ``kind`` "decoder" (``score`` = decoder cosine), "coactivation" (``score`` = Jaccard of
    example documents), "parent" (an earlier, coarser feature: ``score`` = P(it fires | this fires)) or "child"
    (a later, finer one: ``score`` = P(this fires | it fires)); ``label``: its explanation, else its automatic
    label; ``density`` (None without statistics)."""

    feature: int
    score: float
    kind: RelatedKind
    label: str
    density: float | None


@dataclass(frozen=True)
class WidthRelative:
    """A latent of the companion dictionary near this one (:mod:`.width_family`): ``feature`` (an index of the
    companion), ``cosine`` of the two decoder directions, ``coactivation`` (P(narrow fires | wide fires) when the
    tree was counted on a corpus, else None), and ``label`` (the companion's explanation, else its automatic
    label)."""

    feature: int
    cosine: float
    coactivation: float | None
    label: str


@dataclass(frozen=True)
class AcrossWidths:
    """The feature's family across widths: ``sae`` / ``width``, the companion dictionary (same site, another
    width); ``relation`` "narrower" (the companion is narrower: ``rows`` are this wide latent's nearest narrow
    latents, best first, :meth:`FamilyTree.parents`) or "wider" (``rows`` are the wide latents whose nearest narrow
    latent is this one, how it split, highest cosine first, :meth:`FamilyTree.children`); ``total``: how many such
    latents there are (``rows`` keeps at most the cards' ``related_k``)."""

    sae: str
    width: int
    relation: Literal["narrower", "wider"]
    rows: list[WidthRelative]
    total: int


@dataclass(frozen=True)
class ExamplePage:
    """Examples ``start .. start+len(items)`` of ``total`` of one ``kind`` ("top": max-activating, "quantile":
    sampled below the max)."""

    kind: ExampleKind
    start: int
    total: int
    items: list[Example]


@dataclass(frozen=True)
class TextActivations:
    """The feature on every token of ``text``: ``tokens`` ([T] strings, ``<bos>`` included), ``special`` ([T],
    True where activations are masked), ``values`` (float32 [T], 0 on special tokens)."""

    text: str
    tokens: list[str]
    special: list[bool]
    values: np.ndarray


@dataclass(frozen=True)
class FeatureCard:
    """Everything known about feature ``feature`` of one dictionary (see the module docstring).

    ``top`` / ``quantile``: the first page of examples; :meth:`page` gives any other; :meth:`test` runs a text.
    The card reads the statistics it was built from, even after the holder gets new ones.
    """

    feature: int
    info: FeatureInfo
    logits: LogitEffect
    histogram: Histogram | None
    related: list[RelatedFeature]
    top: ExamplePage
    quantile: ExamplePage
    source: FeatureCards = field(repr=False, compare=False)
    stats: FeatureStats | None = field(repr=False, compare=False)
    label_score: LabelScore | None = None
    """How well the shown label (explanation, else automatic label) fits (:mod:`.label_scores`), with any imported
    explanation scores; its ``reason`` says when it is not scored (e.g. the held-out pass has not run)."""
    across_widths: AcrossWidths | None = None
    """Its nearest latents in a companion dictionary of another width (None without one)."""

    def page(self, kind: str, start: int = 0, count: int | None = None) -> ExamplePage:
        """``count`` (default: the cards' ``page_size``) examples of ``kind`` from ``start`` (clamped to the last
        example); GemscopeError for another kind."""
        return self.source.page(self.stats, self.feature, kind, start, count)

    def test(self, text: str) -> TextActivations:
        """This feature's activation on every token of ``text`` (model + dictionary run now; cut to
        :data:`MAX_TEST_TOKENS` tokens). GemscopeError for text that is not a prompt (e.g. empty)."""
        gm, sae = self.source.gm, self.source.sae
        prompt = gm.prompt(text, max_tokens=MAX_TEST_TOKENS)
        acts = prompt_features(gm, [sae], prompt)[0]
        values = np.asarray(acts.feature(self.feature), dtype=np.float32)
        return TextActivations(text, [str(t) for t in prompt.tokens], [bool(s) for s in prompt.special], values)


class FeatureCards:
    """Cards for the features of ``sae`` on ``gm``; :meth:`card` builds one.

    ``stats``: a :class:`StatsHolder` to follow, fixed statistics, or None (a card without examples, density or
    histogram). ``labels``: the dictionary's :class:`FeatureLabels` (made and kept following the statistics when
    None). ``logits_k`` tokens each way, ``related_k`` neighbours of each kind, ``page_size`` examples a page.
    ``cofiring``: the dictionary's co-firing counts (:func:`~gemscope_widgets.backend.stats.cofiring.cofiring`),
    which add its parents and children (at most ``related_k`` of each) to the related features.
    ``companion``: a dictionary of the same site and another width (16k beside 262k in Gemma Scope 2) whose nearest
    latents each card lists (:class:`AcrossWidths`, from :func:`~.width_family.family_tree` with ``family_n``
    nearest narrow latents per wide latent, computed once in chunks); ``companion_labels`` its labels (made when
    None); ``family`` a tree already computed for the pair (e.g. with co-activations counted on a corpus).
    MatryoshkaError for a companion of another site or model, or of the same width.
    """

    def __init__(self, gm: GemmaModel, sae: Any, stats: StatsHolder | FeatureStats | None = None, *,
                 labels: FeatureLabels | None = None, logits_k: int = 10, related_k: int = 8,
                 page_size: int = 5, cofiring: CoFiring | None = None, companion: Any = None,
                 companion_labels: FeatureLabels | None = None, family: FamilyTree | None = None,
                 family_n: int = 3) -> None:
        self.gm, self.sae = gm, sae
        if companion is not None:
            same_site(sae, companion)
            if int(companion.width) == int(sae.width):
                raise MatryoshkaError(
                    f"{companion.config.name} has the same width as {sae.config.name} ({sae.width}): a family tree "
                    "relates two widths; pass a narrower or wider dictionary of the same site.")
            narrow, wide = (companion, sae) if int(companion.width) < int(sae.width) else (sae, companion)
            if family is not None and (family.narrow_name, family.wide_name) != (narrow.config.name,
                                                                                 wide.config.name):
                raise MatryoshkaError(
                    f"This family tree relates {family.narrow_name} and {family.wide_name}, not "
                    f"{narrow.config.name} and {wide.config.name}: compute it with family_tree(narrow, wide).")
            if companion_labels is None:
                companion_labels = FeatureLabels(gm, companion, None)
        self.companion, self.companion_labels = companion, companion_labels
        self.family_n = int(family_n)
        self._family = family
        if cofiring is not None and (cofiring.saes[0] != str(sae.config.name) or cofiring.widths[0] != sae.width):
            raise MatryoshkaError(
                f"These co-firing counts are for {cofiring.saes[0]} ({cofiring.widths[0]} features), not "
                f"{sae.config.name}: count them with cofiring(model, sae)."
            )
        self.cofiring = cofiring
        self.holder = stats if isinstance(stats, StatsHolder) else StatsHolder(gm, sae, stats)
        if labels is None:
            labels = FeatureLabels(gm, sae, self.holder.stats)
            self.holder.subscribe(labels.set_stats)  # held weakly: alive as long as these cards
        self.labels = labels
        self.logits_k, self.related_k, self.page_size = int(logits_k), int(related_k), int(page_size)
        self._cached_for: FeatureStats | None = None
        self._logits: dict[int, LogitEffect] = {}
        self._neighbours: dict[int, list[tuple[RelatedKind, int, float]]] = {}

    @property
    def width(self) -> int:
        return int(self.sae.config.width)

    @property
    def stats(self) -> FeatureStats | None:
        """The statistics the next card reads (the holder's current ones)."""
        return self.holder.stats

    def check(self, feature: Any) -> int:
        """``feature`` as an index of this dictionary; FeatureIndexError naming the valid range otherwise."""
        return check_feature_index(feature, self.width, str(self.sae.config.name))

    def card(self, feature: Any, *, page_size: int | None = None) -> FeatureCard:
        """The card of ``feature`` under the current statistics (``page_size`` examples on each first page)."""
        f = self.check(feature)
        stats = self.holder.stats
        if stats is not self._cached_for:  # new statistics: imported logits, co-activations may differ
            self._logits.clear()
            self._neighbours.clear()
            self._cached_for = stats
        return FeatureCard(
            feature=f,
            info=self.info(stats, f),
            logits=self.logit_effect(stats, f),
            histogram=self.histogram(stats, f),
            related=self.related(stats, f),
            top=self.page(stats, f, "top", 0, page_size),
            quantile=self.page(stats, f, "quantile", 0, page_size),
            source=self,
            stats=stats,
            label_score=self.labels.scores([f], compute=False, progress=False)[f],
            across_widths=self.across_widths(f),
        )

    def family_tree(self) -> FamilyTree | None:
        """The tree relating this dictionary and its companion (None without one), computed on first use."""
        if self.companion is None:
            return None
        if self._family is None:
            narrow, wide = ((self.companion, self.sae) if int(self.companion.width) < self.width
                            else (self.sae, self.companion))
            self._family = family_tree(narrow, wide, self.family_n, progress=False)
        return self._family

    def across_widths(self, f: int) -> AcrossWidths | None:
        """Feature ``f``'s nearest latents in the companion dictionary (None without one), labelled now."""
        tree = self.family_tree()
        if tree is None or self.companion_labels is None:
            return None
        narrower = int(self.companion.width) < self.width
        branches = tree.parents(f) if narrower else tree.children(f)
        shown = branches[: self.related_k]
        other = [b.narrow if narrower else b.wide for b in shown]
        labels = self.companion_labels.labels(other)
        rows = [WidthRelative(i, b.cosine, b.p_narrow_given_wide, labels[i]) for i, b in zip(other, shown)]
        return AcrossWidths(str(self.companion.config.name), int(self.companion.width),
                            "narrower" if narrower else "wider", rows, len(branches))

    # --- sections -----------------------------------------------------------------------------------------

    def info(self, stats: FeatureStats | None, f: int) -> FeatureInfo:
        config = self.sae.config
        density = max_act = None
        if stats is not None:
            density = _finite(getattr(stats, "density", None), f)
            max_act = _finite(getattr(stats, "max_act", None), f)
        return FeatureInfo(
            sae=str(config.name),
            dictionary=dictionary_noun(str(getattr(config, "kind", "sae"))),
            width=self.width,
            url=feature_url(self.sae, f, getattr(self.gm, "name", None)) or "",
            explanation=(self.labels.explanation(f) or ("",))[0],
            label=self.labels.auto(f),
            density=density,
            max_act=max_act,
            n_tokens=int(getattr(stats, "n_tokens", 0) or 0) if stats is not None else 0,
            source=str(getattr(stats, "source", "") or "statistics") if stats is not None else "",
        )

    def logit_effect(self, stats: FeatureStats | None, f: int) -> LogitEffect:
        """Imported logits when the statistics carry them, else the logit lens of the decoder row; kept."""
        if f not in self._logits:
            pair = stats.stored_logits(f) if stats is not None else None
            top, bottom = pair if pair is not None else logit_lens(self.gm, self.sae, f, self.logits_k)
            self._logits[f] = LogitEffect([(str(t), float(v)) for t, v in top],
                                          [(str(t), float(v)) for t, v in bottom])
        return self._logits[f]

    def histogram(self, stats: FeatureStats | None, f: int) -> Histogram | None:
        hist = stats.histogram(f) if stats is not None else None
        if hist is None or len(hist[1]) == 0:
            return None
        return Histogram(np.asarray(hist[0]), np.asarray(hist[1]))

    def related(self, stats: FeatureStats | None, f: int) -> list[RelatedFeature]:
        """Decoder neighbours, co-activating ones, then parents and children (kept per feature), with labels and
        densities read now."""
        if f not in self._neighbours:
            rows: list[tuple[RelatedKind, int, float]] = [
                ("decoder", int(i), float(s)) for i, s in related_by_decoder(self.sae, f, self.related_k)]
            co = stats.related_by_coactivation(f, self.related_k) if stats is not None else None
            rows += [("coactivation", int(i), float(s)) for i, s in (co or [])]
            if self.cofiring is not None:
                family = latent_family(self.cofiring, f)
                rows += [("parent", r.latent, r.p_implied) for r in family.parents[: self.related_k]]
                rows += [("child", r.latent, r.p_implied) for r in family.children[: self.related_k]]
            self._neighbours[f] = [r for r in rows if r[1] != f]
        rows = self._neighbours[f]
        labels = self.labels.labels([i for _, i, _ in rows])
        density = getattr(stats, "density", None) if stats is not None else None
        return [RelatedFeature(i, s, kind, labels[i], None if density is None else float(density[i]))
                for kind, i, s in rows]

    def page(self, stats: FeatureStats | None, f: int, kind: str, start: int = 0,
             count: int | None = None) -> ExamplePage:
        if kind not in ("top", "quantile"):
            raise GemscopeError(f"Example kind must be 'top' or 'quantile', got {kind!r}.")
        checked: ExampleKind = "top" if kind == "top" else "quantile"
        if stats is None:
            return ExamplePage(checked, 0, 0, [])
        count = self.page_size if count is None else max(0, int(count))
        total = int(stats.n_examples(f, checked))
        start = min(max(0, int(start)), max(0, total - 1))
        items = stats.examples(f, kind=checked, start=start, count=count) if total else []
        return ExamplePage(checked, start, total, list(items))


def _finite(values: Any, f: int) -> float | None:
    if values is None:
        return None
    value = float(values[f])
    return value if math.isfinite(value) else None


__all__ = [
    "MAX_TEST_TOKENS",
    "AcrossWidths",
    "ExamplePage",
    "FeatureCard",
    "FeatureCards",
    "FeatureInfo",
    "Histogram",
    "LogitEffect",
    "RelatedFeature",
    "TextActivations",
    "WidthRelative",
]
