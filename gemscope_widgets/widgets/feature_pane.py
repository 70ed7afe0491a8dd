"""FeaturePane: what one SAE feature means: explanation, logits, density, examples, and a live test box.

A relay of the backend's :class:`~gemscope_widgets.backend.analysis.card.FeatureCard`: the pane turns the card
into traits (activation arrays as float32 binary buffers, token text as JSON strings) and calls the card from its
message handlers. Without statistics, the pane offers the statistics holder's background scan
(:meth:`~gemscope_widgets.backend.stats.holder.StatsHolder.scan_in_background`) and shows its progress.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import traitlets

from gemscope_widgets.backend.analysis.card import ExamplePage, FeatureCard, FeatureCards
from gemscope_widgets.backend.analysis.search import search_labels
from gemscope_widgets.backend.jobs import Job, JobListener
from gemscope_widgets.backend.stats.holder import StatsHolder
from gemscope_widgets.backend.workspace import Workspace
from gemscope_widgets.errors import GemscopeError

from .base import ViewWidget, error_text
from .bundle import bundle_path
from .messages import PING, MessageTable
from .static_view import feature_pane_html

_BUNDLE = bundle_path("feature_pane")


def _f32(values: Any) -> bytes:
    """float32 little-endian bytes of an array / list."""
    return np.ascontiguousarray(np.asarray(values, dtype="<f4")).tobytes()


def page_payload(page: ExamplePage) -> dict[str, Any]:
    """The ``examples`` / ``quantiles`` trait of one page of examples."""
    items = [{"tokens": [str(t) for t in e.tokens], "values": _f32(e.values), "peak": int(e.peak),
              "value": float(e.value)} for e in page.items]
    return {"kind": page.kind, "start": page.start, "total": page.total, "items": items}


def card_traits(card: FeatureCard) -> dict[str, Any]:
    """The pane's traits of ``card``: ``info``, ``logits``, ``histogram``, ``related``, ``family``, ``examples``,
    ``quantiles`` (one entry per section of the card)."""
    hist = card.histogram
    score = card.label_score
    return {
        "info": {**asdict(card.info), "score": None if score is None else {
            "label": score.label, "source": score.source, "simulation": score.simulation,
            "precision": score.precision, "recall": score.recall, "n_active": score.n_active,
            "n_tokens": score.n_tokens, "imported": [[k, v] for k, v in score.imported.items()],
            "reason": score.reason}},
        "logits": {"top": [[t, v] for t, v in card.logits.top], "bottom": [[t, v] for t, v in card.logits.bottom]},
        "histogram": {} if hist is None else {"edges": _f32(hist.edges), "counts": _f32(hist.counts)},
        "related": [{"feature": r.feature, "score": r.score, "kind": r.kind, "explanation": r.label,
                     "density": r.density} for r in card.related],
        "family": {} if (fam := card.across_widths) is None else {
            "sae": fam.sae, "width": fam.width, "relation": fam.relation, "total": fam.total,
            "rows": [{"feature": r.feature, "cosine": r.cosine, "coactivation": r.coactivation,
                      "explanation": r.label} for r in fam.rows]},
        "examples": page_payload(card.top),
        "quantiles": page_payload(card.quantile),
    }


class _ScanProgress(JobListener):
    """Writes the holder's scan job into the pane's ``scan`` trait."""

    def __init__(self, pane: FeaturePane) -> None:
        self.pane = pane

    def job_progress(self, job: Job, done: int, total: int, message: str) -> None:
        self.pane.scan = {"state": "running", "done": done, "total": total,
                          "message": message or f"{done:,} / {total:,} documents"}

    def job_done(self, job: Job, result: Any) -> None:
        n_tokens = int(getattr(result, "n_tokens", 0) or 0)
        self.pane.scan = {"state": "done", "done": job.done, "total": job.done,
                          "message": f"scanned {n_tokens:,} tokens"}

    def job_failed(self, job: Job, error: BaseException) -> None:
        self.pane.scan = {"state": "error", "done": 0, "total": 0, "message": error_text(error)}

    def job_cancelled(self, job: Job) -> None:
        self.pane.scan = {"state": "idle", "done": 0, "total": 0,
                          "message": "scan cancelled; run it again to resume"}


class FeaturePane(ViewWidget):
    """Detail pane for one feature of one SAE; ``scope.feature(f)`` builds it.

    Clicking a related feature switches the pane to it (:meth:`show`); ``on_steer(fn)`` is called with the
    feature index when the "steer" button is pressed. ``cofiring`` (the dictionary's
    :func:`~gemscope_widgets.backend.stats.cofiring.cofiring` counts) adds its parents and children to the
    related features. ``companion`` (a dictionary of the same site and another width) adds the family tree across
    widths under the pane: the feature's nearest latents in the companion, a click opens one (:meth:`open_across`).
    """

    _esm = _BUNDLE

    MESSAGES: ClassVar[MessageTable] = {
        "open": {"feature": (int,)},
        "page": {"kind": frozenset({"top", "quantile"}), "start": (int,)},
        "test": {"text": (str,)},
        "scan": {},
        "steer": {},
        "search": {"query": (str,)},
        "open_across": {"feature": (int,)},
        "ping": PING,
    }
    """What the view sends (``FeaturePaneMessage`` in ``js/lib/protocol.ts``)."""
    HANDLERS: ClassVar[dict[str, str]] = {
        "open": "show", "page": "page", "test": "test_text", "scan": "run_scan", "steer": "_steer_pressed",
        "search": "search", "open_across": "open_across",
    }
    """Message type -> the method it calls (see :mod:`.base`)."""

    feature = traitlets.Int(0).tag(sync=True)
    """The feature shown."""
    info = traitlets.Dict().tag(sync=True)
    """Header facts: ``sae``, ``width``, ``explanation``, ``url`` (Neuronpedia or ""), ``density``, ``max_act``,
    ``n_tokens``, ``source`` (where the statistics come from, "" when there are none)."""
    logits = traitlets.Dict().tag(sync=True)
    """``{"top": [[token, value], ...], "bottom": [...]}``: the feature's direct effect on the next token."""
    histogram = traitlets.Dict().tag(sync=True)
    """``{"edges": f32 bytes [n+1], "counts": f32 bytes [n]}`` of the non-zero activations; {} when unknown."""
    related: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    """``[{"feature", "score", "kind", "explanation"}]``: decoder-cosine neighbours, then co-activating ones."""
    family = traitlets.Dict().tag(sync=True)
    """The family tree across widths (:class:`~gemscope_widgets.backend.analysis.card.AcrossWidths`): ``{"sae",
    "width", "relation" ("narrower" | "wider"), "total", "rows": [{"feature", "cosine", "coactivation",
    "explanation"}]}``; {} without a companion dictionary."""
    examples = traitlets.Dict().tag(sync=True)
    """One page of max-activating examples: ``{"kind", "start", "total", "items": [{tokens, values, peak, value}]}``
    with ``values`` as float32 bytes."""
    quantiles = traitlets.Dict().tag(sync=True)
    """One page of quantile examples (below the max), same layout as ``examples``."""
    test = traitlets.Dict().tag(sync=True)
    """The "test your own text" result: ``{"text", "tokens", "special", "values" (f32 bytes), "error"}``."""
    scan: traitlets.Dict[str, Any] = traitlets.Dict({"state": "idle"}).tag(sync=True)
    """Scan progress: ``{"state": "idle"|"running"|"done"|"error", "done", "total", "message"}``."""
    page_size = traitlets.Int(5).tag(sync=True)
    """Examples per page."""
    can_steer = traitlets.Bool(False).tag(sync=True)
    """Whether a steer callback is registered (shows the "steer" button)."""
    error = traitlets.Unicode("").tag(sync=True)
    """A user-facing message about the last failed action, "" when none."""
    found: traitlets.Dict[str, Any] = traitlets.Dict({}).tag(sync=True)
    """The search box's result: ``{"query", "hits": [{"feature", "score", "label", "source", "simulation",
    "imported"}], "error", "search"}`` (:func:`~gemscope_widgets.backend.analysis.search.search_labels`); ``search``
    counts the searches, so a repeated query is a new value and the view's "searching…" ends."""

    def static_html(self) -> str:
        """The script-free rendering carried in the mime bundle (see :mod:`.static_view`)."""
        return feature_pane_html(self)

    def __init__(
        self,
        model: Any,
        sae: Any,
        stats: Any = None,
        *,
        feature: int = 0,
        corpus: Any = None,
        related_k: int = 8,
        logits_k: int = 10,
        holder: StatsHolder | None = None,
        labels: Any = None,
        cofiring: Any = None,
        companion: Any = None,
        companion_labels: Any = None,
        companion_holder: StatsHolder | None = None,
        family: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.sae = sae
        self.holder = holder if holder is not None else StatsHolder(model, sae, stats)
        if stats is not None and self.holder.stats is not stats:
            self.holder.set(stats)
        self.cards = FeatureCards(model, sae, self.holder, labels=labels, logits_k=logits_k, related_k=related_k,
                                  cofiring=cofiring, companion=companion, companion_labels=companion_labels,
                                  family=family)
        self._across: tuple[Any, StatsHolder | None, FeatureCards | None] | None = (
            None if companion is None else (companion, companion_holder, None))
        self._home = sae
        self.labels = self.cards.labels
        self.corpus = corpus
        self.card: FeatureCard | None = None
        """The card shown (the backend result every trait is made from)."""
        self._steer_callbacks: list[Callable[[int], Any]] = []
        self._scan_listener = _ScanProgress(self)
        self._scan_job: Job | None = None
        self._unsubscribe = self.holder.subscribe(self._stats_changed)
        self.show(feature)

    @classmethod
    def build(
        cls, workspace: Workspace, feature: int, *, sae: str | None = None, stats: Any = None, **kwargs: Any
    ) -> FeaturePane:
        """The pane for ``feature`` of a workspace's SAE, following the workspace's statistics and labels of that
        SAE (those on disk for ``corpus`` are found without scanning)."""
        holder = workspace.stats_holder(sae)
        if stats is None:
            holder.find_cached(kwargs.get("corpus"))
        labels = workspace.labels(sae)
        if isinstance(kwargs.get("companion"), str):  # another SAE of the workspace, by name
            name = kwargs["companion"]
            kwargs["companion_holder"] = workspace.stats_holder(name)
            kwargs["companion_holder"].find_cached(kwargs.get("corpus"))
            kwargs["companion_labels"] = workspace.labels(name)
            kwargs["companion"] = kwargs["companion_holder"].sae
        return cls(workspace.model, holder.sae, stats, feature=feature, holder=holder, labels=labels, **kwargs)

    # --- python API ----------------------------------------------------------------------------------

    @property
    def width(self) -> int:
        return self.cards.width

    @property
    def stats(self) -> Any:
        """The statistics shown (the holder's)."""
        return self.holder.stats

    @property
    def logits_k(self) -> int:
        return self.cards.logits_k

    @property
    def related_k(self) -> int:
        return self.cards.related_k

    def show(self, feature: int) -> None:
        """Switches the pane to ``feature`` (its :class:`FeatureCard`; logits and neighbours are kept per
        feature by the cards)."""
        card = self.cards.card(feature, page_size=self.page_size)
        with self.hold_sync():
            self.card = card
            self.feature = card.feature
            self.error = ""
            self.test = {}
            for name, value in card_traits(card).items():
                setattr(self, name, value)

    def page(self, kind: str, start: int) -> None:
        """Shows the page of ``kind`` ("top" or "quantile") examples that starts at ``start``."""
        payload = page_payload(self._card().page(kind, start, self.page_size))
        if kind == "top":
            self.examples = payload
        else:
            self.quantiles = payload

    def test_text(self, text: str) -> None:
        """Runs ``text`` through model + SAE and shows this feature's activation on every token."""
        try:
            acts = self._card().test(text)
        except GemscopeError as exc:
            self.test = {"text": text, "tokens": [], "special": [], "values": b"", "error": str(exc)}
            return
        self.test = {"text": text, "tokens": acts.tokens, "special": acts.special, "values": _f32(acts.values),
                     "error": ""}

    def search(self, query: str, k: int = 10) -> None:
        """Shows the ``k`` features whose labels and explanations best match ``query`` (the search box; a hit
        opens with :meth:`show`). A blank ``query`` (the box emptied) clears the result: no query, no hits."""
        serial = int(self.found.get("search", 0)) + 1
        if not query.strip():
            self.found = {"hits": [], "error": "", "search": serial}
            return
        pending = self.labels.unlabelled()
        if pending:  # the first search labels every feature: say so while the kernel works (it answers nothing else)
            self.found = {"query": query, "hits": [], "error": "", "search": serial - 1, "progress":
                          f"labelling {pending:,} features for the first search of this dictionary (done once)…"}
        try:
            hits = search_labels(self.labels, query, k=k)
        except GemscopeError as exc:
            self.found = {"query": query, "hits": [], "error": str(exc), "search": serial}
            return
        self.found = {"query": query, "error": "", "search": serial, "hits": [
            {"feature": h.feature, "score": h.score, "label": h.label, "source": h.source,
             "simulation": h.simulation, "imported": [[k, v] for k, v in h.imported.items()]} for h in hits]}

    def open_across(self, feature: int) -> None:
        """Opens latent ``feature`` of the companion dictionary (a row of the family tree): the pane then shows the
        companion's card, whose family tree leads back. GemscopeError without a companion."""
        if self._across is None:
            raise GemscopeError("This pane has no companion dictionary: build it with companion=<an SAE of the same "
                                "site and another width>.")
        sae, holder, cards = self._across
        if cards is None:
            holder = holder if holder is not None else StatsHolder(self.model, sae, None)
            cards = FeatureCards(self.model, sae, holder, labels=self.cards.companion_labels,
                                 logits_k=self.logits_k, related_k=self.related_k, companion=self.sae,
                                 companion_labels=self.labels, family=self.cards.family_tree())
        f = cards.check(feature)
        self._across = (self.sae, self.holder, self.cards)
        self._unsubscribe()
        self.sae, self.holder, self.cards, self.labels = sae, cards.holder, cards, cards.labels
        self._unsubscribe = self.holder.subscribe(self._stats_changed)
        self.can_steer = bool(self._steer_callbacks) and self.sae is self._home  # steering is of the home SAE
        self.show(f)

    def on_steer(self, fn: Callable[[int], Any]) -> None:
        """Calls ``fn(feature)`` when the user presses "steer"."""
        self._steer_callbacks.append(fn)
        self.can_steer = True

    def run_scan(self, corpus: Any = None, *, wait: bool = False, **kwargs: Any) -> Job:
        """Scans ``corpus`` (the pane's corpus, else the default corpus, when None) in the background, showing
        progress; returns the job (``job.cancel()`` stops it after the current batch).

        A scan of the same statistics already running is followed, not started again. ``wait=True`` blocks until
        the scan ends (for scripts and tests; a failure is shown in the pane, not raised).
        """
        corpus = corpus if corpus is not None else self.corpus
        self.scan = {"state": "running", "done": 0, "total": 0, "message": "starting the scan"}
        self._scan_job = self.holder.scan_in_background(corpus, listener=self._scan_listener, **kwargs)
        if wait:
            self._scan_job.join()
        return self._scan_job

    def set_stats(self, stats: Any) -> None:
        """Uses ``stats`` from now on, in this pane and every other view of the same statistics holder."""
        self.holder.set(stats)

    def close(self) -> None:
        self._unsubscribe()
        if self._scan_job is not None:
            self._scan_job.remove_listener(self._scan_listener)
        super().close()

    # --- internals -----------------------------------------------------------------------------------

    def _card(self) -> FeatureCard:
        if self.card is None:  # only while the constructor has not shown a feature yet
            raise GemscopeError("The pane shows no feature yet: call show(feature).")
        return self.card

    def _stats_changed(self, stats: Any) -> None:
        self.show(self.feature)

    def _steer_pressed(self) -> None:
        for fn in list(self._steer_callbacks):
            fn(self.feature)
