"""FeaturePane: what one SAE feature means: explanation, logits, density, examples, and a live test box.

The pane shows whatever exists. Logits and decoder neighbours need only the SAE weights; examples, density
and the histogram come from a :class:`~gemscope_widgets.backend.stats.feature_stats.FeatureStats` (a corpus scan or an
import). Without one, the pane offers to run the scan in a background thread and shows its progress.
Activation arrays travel as float32 binary buffers; token text travels as JSON strings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar

import anywidget
import numpy as np
import traitlets

from gemscope_widgets.backend.dictionaries.sae import check_feature_index
from gemscope_widgets.errors import GemscopeError

from .bundle import bundle_path
from .messages import PING, PONG, MessageTable, parse_message
from .static_view import StaticFallback

_BUNDLE = bundle_path("feature_pane")

_MAX_TEST_TOKENS = 512


def _f32(values: Any) -> bytes:
    """float32 little-endian bytes of a tensor / array / list."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(values, dtype="<f4")).tobytes()


def _example_payload(example: Any) -> dict[str, Any]:
    values = example.values
    return {
        "tokens": [str(t) for t in example.tokens],
        "values": _f32(values),
        "peak": int(example.peak),
        "value": float(example.value),
    }


class FeaturePane(StaticFallback, anywidget.AnyWidget):
    """Detail pane for one feature of one SAE; ``scope.feature(f)`` builds it.

    Clicking a related feature switches the pane to it (:meth:`show`); ``on_steer(fn)`` is called with the
    feature index when the "steer" button is pressed.
    """

    _esm = _BUNDLE

    MESSAGES: ClassVar[MessageTable] = {
        "open": {"feature": (int,)},
        "page": {"kind": frozenset({"top", "quantile"}), "start": (int,)},
        "test": {"text": (str,)},
        "scan": {},
        "steer": {},
        "ping": PING,
    }
    """What the view sends (``FeaturePaneMessage`` in ``js/lib/protocol.ts``)."""

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

    def static_html(self) -> str:
        """The script-free rendering carried in the mime bundle (see :mod:`.static_view`)."""
        from .static_view import feature_pane_html

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
        holder: Any = None,
        labels: Any = None,
        **kwargs: Any,
    ) -> None:
        from gemscope_widgets.backend.analysis.labels import FeatureLabels
        from gemscope_widgets.backend.stats.holder import StatsHolder

        super().__init__(**kwargs)
        self.model = model
        self.sae = sae
        self.holder = holder if holder is not None else StatsHolder(model, sae, stats)
        if stats is not None and self.holder.stats is not stats:
            self.holder.set(stats)
        self.stats = self.holder.stats
        if labels is None:
            labels = FeatureLabels(model, sae, self.stats)
            self.holder.subscribe(labels.set_stats)  # held weakly, alive as long as this pane
        self.labels = labels
        self.corpus = corpus
        self.related_k = related_k
        self.logits_k = logits_k
        self._steer_callbacks: list[Callable[[int], Any]] = []
        self._logit_cache: dict[int, dict[str, Any]] = {}
        self._related_cache: dict[int, list[dict[str, Any]]] = {}
        self._scan_thread: threading.Thread | None = None
        self.on_msg(self._on_custom_msg)
        self._unsubscribe = self.holder.subscribe(self._stats_changed)
        self.show(feature)

    @classmethod
    def build(
        cls, scope: Any, feature: int, *, sae: str | None = None, stats: Any = None, **kwargs: Any
    ) -> FeaturePane:
        """The pane for ``feature`` of a Scope's SAE, following the Scope's statistics of that SAE (those on disk
        for ``corpus`` are found without scanning)."""
        holder = scope.stats_holder(sae)
        if stats is None:
            holder.find_cached(kwargs.get("corpus"))
        labels = scope.labels(sae)
        return cls(scope.model, holder.sae, stats, feature=feature, holder=holder, labels=labels, **kwargs)

    # --- python API ----------------------------------------------------------------------------------

    @property
    def width(self) -> int:
        return int(self.sae.config.width)

    def show(self, feature: int) -> None:
        """Switches the pane to ``feature``; logits and neighbours are computed once per feature and kept."""
        feature = self._check(feature)
        with self.hold_sync():
            self.feature = feature
            self.error = ""
            self.test = {}
            self.info = self._info(feature)
            self.logits = self._logits(feature)
            self.histogram = self._histogram(feature)
            self.related = self._related(feature)
            self.examples = self._page(feature, "top", 0)
            self.quantiles = self._page(feature, "quantile", 0)

    def page(self, kind: str, start: int) -> None:
        """Shows the page of ``kind`` ("top" or "quantile") examples that starts at ``start``."""
        if kind not in ("top", "quantile"):
            raise GemscopeError(f"Example kind must be 'top' or 'quantile', got {kind!r}.")
        payload = self._page(self.feature, kind, max(0, int(start)))
        if kind == "top":
            self.examples = payload
        else:
            self.quantiles = payload

    def test_text(self, text: str) -> None:
        """Runs ``text`` through model + SAE and shows this feature's activation on every token."""
        from gemscope_widgets.backend.analysis.features import prompt_features

        try:
            prompt = self.model.prompt(text, max_tokens=_MAX_TEST_TOKENS)
            acts = prompt_features(self.model, [self.sae], prompt)[0]
            values = acts.feature(self.feature)
            self.test = {
                "text": text,
                "tokens": [str(t) for t in prompt.tokens],
                "special": [bool(s) for s in prompt.special],
                "values": _f32(values),
                "error": "",
            }
        except GemscopeError as exc:
            self.test = {"text": text, "tokens": [], "special": [], "values": b"", "error": str(exc)}

    def on_steer(self, fn: Callable[[int], Any]) -> None:
        """Calls ``fn(feature)`` when the user presses "steer"."""
        self._steer_callbacks.append(fn)
        self.can_steer = True

    def run_scan(self, corpus: Any = None, *, wait: bool = False, **kwargs: Any) -> None:
        """Scans ``corpus`` (the default corpus when None) in a background thread, showing progress.

        ``wait=True`` blocks until the scan ends (for scripts and tests).
        """
        if self._scan_thread is not None and self._scan_thread.is_alive():
            return
        corpus = corpus if corpus is not None else self.corpus
        self.scan = {"state": "running", "done": 0, "total": 0, "message": "starting the scan"}
        self._scan_thread = threading.Thread(target=self._scan_worker, args=(corpus, kwargs), daemon=True)
        self._scan_thread.start()
        if wait:
            self._scan_thread.join()

    def set_stats(self, stats: Any) -> None:
        """Uses ``stats`` from now on, in this pane and every other view of the same statistics holder."""
        self.holder.set(stats)

    def close(self) -> None:
        self._unsubscribe()
        super().close()

    # --- internals -----------------------------------------------------------------------------------

    def _check(self, feature: Any) -> int:
        return check_feature_index(feature, self.width, self.sae.config.name)

    def _info(self, f: int) -> dict[str, Any]:
        from gemscope_widgets.backend.dictionaries.registry import dictionary_noun
        from gemscope_widgets.backend.stats.importers.neuronpedia import feature_url

        stats = self.stats
        info: dict[str, Any] = {
            "sae": str(self.sae.config.name),
            "dictionary": dictionary_noun(str(getattr(self.sae.config, "kind", "sae"))),
            "width": self.width,
            "url": feature_url(self.sae, f, getattr(self.model, "name", None)) or "",
            "explanation": "",
            "label": self.labels.auto(f),
            "density": None,
            "max_act": None,
            "n_tokens": 0,
            "source": "",
        }
        if stats is None:
            return info
        info["source"] = str(getattr(stats, "source", "") or "statistics")
        info["n_tokens"] = int(getattr(stats, "n_tokens", 0) or 0)
        info["explanation"] = stats.explanation(f) or ""
        for key, attr in (("density", "density"), ("max_act", "max_act")):
            arr = getattr(stats, attr, None)
            if arr is not None:
                value = float(arr[f])
                info[key] = value if np.isfinite(value) else None
        return info

    def _logits(self, f: int) -> dict[str, Any]:
        if f not in self._logit_cache:
            pair = self.stats.stored_logits(f) if self.stats is not None else None
            if pair is None:
                from gemscope_widgets.backend.analysis.logit_lens import logit_lens

                pair = logit_lens(self.model, self.sae, f, self.logits_k)
            top, bottom = pair
            self._logit_cache[f] = {
                "top": [[str(t), float(v)] for t, v in top],
                "bottom": [[str(t), float(v)] for t, v in bottom],
            }
        return self._logit_cache[f]

    def _histogram(self, f: int) -> dict[str, Any]:
        hist = self.stats.histogram(f) if self.stats is not None else None
        if hist is None:
            return {}
        edges, counts = hist
        if len(counts) == 0:
            return {}
        return {"edges": _f32(edges), "counts": _f32(counts)}

    def _related(self, f: int) -> list[dict[str, Any]]:
        if f not in self._related_cache:
            from gemscope_widgets.backend.analysis.related import related_by_decoder

            rows = [("decoder", int(i), float(s)) for i, s in related_by_decoder(self.sae, f, self.related_k)]
            co = self.stats.related_by_coactivation(f, self.related_k) if self.stats is not None else None
            rows += [("coactivation", int(i), float(s)) for i, s in (co or [])]
            self._related_cache[f] = [
                {"feature": i, "score": s, "kind": kind, "explanation": ""} for kind, i, s in rows if i != f
            ]
        related = self._related_cache[f]
        # Explanations can change (user labels, a scan's examples), so they are read fresh; automatic labels
        # stand in where there is none.
        texts = self.labels.labels([r["feature"] for r in related])
        density = getattr(self.stats, "density", None) if self.stats is not None else None
        out = []
        for r in related:
            f = r["feature"]
            out.append({**r, "explanation": texts[f], "density": None if density is None else float(density[f])})
        return out

    def _page(self, f: int, kind: str, start: int) -> dict[str, Any]:
        if self.stats is None:
            return {"kind": kind, "start": 0, "total": 0, "items": []}
        total = int(self.stats.n_examples(f, kind))
        start = min(start, max(0, total - 1))
        items = self.stats.examples(f, kind=kind, start=start, count=self.page_size) if total else []
        return {"kind": kind, "start": start, "total": total, "items": [_example_payload(e) for e in items]}

    def _stats_changed(self, stats: Any) -> None:
        self.stats = stats
        self._related_cache.clear()
        self._logit_cache.clear()
        self.show(self.feature)

    def _scan_worker(self, corpus: Any, kwargs: dict[str, Any]) -> None:
        done = 0

        def progress(now: int, total: int) -> None:  # called by the scan after every batch
            nonlocal done
            done = int(now)
            message = f"{done:,} / {total:,} documents"
            self.scan = {"state": "running", "done": done, "total": int(total), "message": message}

        try:
            stats = self.holder.load_or_scan(corpus, progress=False, on_progress=progress, **kwargs)
        except Exception as exc:  # the thread must report every failure in the widget, not die silently
            message = str(exc) if isinstance(exc, GemscopeError) else f"{type(exc).__name__}: {exc}"
            self.scan = {"state": "error", "done": 0, "total": 0, "message": message}
            return
        n_tokens = int(getattr(stats, "n_tokens", 0) or 0)
        self.scan = {"state": "done", "done": done, "total": done, "message": f"scanned {n_tokens:,} tokens"}

    def _on_custom_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        try:
            kind, fields = parse_message(content, self.MESSAGES)
            if kind == "ping":
                self.send(PONG)
            elif kind == "open":
                self.show(fields["feature"])
            elif kind == "page":
                self.page(fields["kind"], fields["start"])
            elif kind == "test":
                self.test_text(fields["text"])
            elif kind == "scan":
                self.run_scan()
            elif kind == "steer":
                for fn in list(self._steer_callbacks):
                    fn(self.feature)
        except GemscopeError as exc:
            self.error = str(exc)

