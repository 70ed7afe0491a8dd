"""One observable source of feature statistics per (model, SAE): every view of that SAE reads and follows it.

A :class:`StatsHolder` holds the current :class:`~gemscope_widgets.backend.stats.feature_stats.FeatureStats` of
one SAE (or ``None``) and calls its subscribers whenever they change: a scan that finishes, statistics found on
disk, an import set by hand. Subscribers are held weakly when they are bound methods, so a closed view does not
stay alive because of it. :meth:`StatsHolder.scan_in_background` runs the scan as a job of the backend's runner
(:mod:`gemscope_widgets.backend.jobs`), so a view only listens to it.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gemscope_widgets.backend.jobs import Job, JobListener, JobRunner
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from gemscope_widgets.backend.stats.store import find_cached

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats

Subscriber = Callable[["FeatureStats | None"], Any]


class StatsHolder:
    """The statistics of ``sae`` on ``gm``, observable.

    ``stats`` is the current value; :meth:`set` replaces it and notifies; :meth:`subscribe` registers
    ``fn(stats)`` and returns a function that unsubscribes; :meth:`load_or_scan` and :meth:`find_cached` fill it.
    A subscriber that raises is reported as a warning and does not stop the others.
    """

    def __init__(self, gm: GemmaModel, sae: Any, stats: FeatureStats | None = None) -> None:
        self.gm, self.sae = gm, sae
        self.jobs = JobRunner(f"gemscope-scan-{sae.config.name}")
        """Where :meth:`scan_in_background` runs."""
        self._stats = stats
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[], Subscriber | None]] = []

    @property
    def stats(self) -> FeatureStats | None:
        return self._stats

    def set(self, stats: FeatureStats | None) -> None:
        """Use ``stats`` from now on and tell every subscriber."""
        with self._lock:
            self._stats = stats
            live = [(ref, ref()) for ref in self._subscribers]
            self._subscribers = [ref for ref, fn in live if fn is not None]
        for _, fn in live:
            if fn is None:
                continue
            try:
                fn(stats)
            except Exception as exc:  # one broken view must not keep the others stale
                warnings.warn(f"A statistics subscriber failed: {type(exc).__name__}: {exc}", stacklevel=2)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(stats)`` on every change (bound methods are held weakly); returns the unsubscribe function."""
        ref = _reference(fn)
        with self._lock:
            self._subscribers.append(ref)

        def unsubscribe() -> None:
            with self._lock:
                if ref in self._subscribers:
                    self._subscribers.remove(ref)

        return unsubscribe

    def find_cached(self, corpus: Any = None) -> FeatureStats | None:
        """The current statistics, else those on disk for ``corpus`` with the default parameters (set and
        announced when found), else ``None``. Never scans."""
        if self._stats is None:
            found = find_cached(self.gm, self.sae, corpus)
            if found is not None:
                self.set(found)
        return self._stats

    def load_or_scan(self, corpus: Any = None, **kwargs: Any) -> FeatureStats:
        """:meth:`FeatureStats.load_or_scan` for this model and SAE; the result is set and announced."""
        stats = FeatureStats.load_or_scan(self.gm, self.sae, corpus, **kwargs)
        self.set(stats)
        return stats

    def scan_in_background(self, corpus: Any = None, *, listener: JobListener | None = None,
                           **kwargs: Any) -> Job:
        """:meth:`load_or_scan` as a background job (no tqdm bar): ``listener`` hears its progress in documents
        (``done`` of ``total``, after every batch) and its end; ``job.wait()`` returns the statistics.

        A scan of this holder that is still running is joined (``listener`` added), not started twice, whatever
        ``corpus`` and ``kwargs`` say. ``job.cancel()`` stops the scan after its current batch (a cached scan
        resumes from its last checkpoint next time).
        """
        def work(job: Job) -> FeatureStats:
            return self.load_or_scan(corpus, progress=False, on_progress=job.progress, **kwargs)

        return self.jobs.submit(work, key="scan", listener=listener, join=True, name=f"scan {self.sae.config.name}")


_SHARED: weakref.WeakValueDictionary[tuple[int, int], StatsHolder] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def shared_holder(gm: GemmaModel, sae: Any) -> StatsHolder:
    """The one :class:`StatsHolder` of dictionary ``sae`` on model ``gm`` while any view holds it: every view
    that asks gets the same holder, so a scan started from one of them (a transcoder layer's pane in one circuit
    view) is seen by all (the same layer's pane in the next circuit view). The holder lives as long as a view
    (or a Scope) keeps it; a later call makes a new one, which :meth:`StatsHolder.find_cached` fills from disk.
    Keyed by the identities of ``sae`` and ``gm`` (a live holder keeps both alive, so neither id is reused)."""
    with _SHARED_LOCK:
        holder = _SHARED.get((id(sae), id(gm)))
        if holder is None:
            holder = StatsHolder(gm, sae)
            _SHARED[(id(sae), id(gm))] = holder
        return holder


def _reference(fn: Subscriber) -> Callable[[], Subscriber | None]:
    """A weak reference to a bound method, a strong one to any other callable."""
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
        return weakref.WeakMethod(fn)
    return lambda: fn


__all__ = ["StatsHolder", "shared_holder"]
