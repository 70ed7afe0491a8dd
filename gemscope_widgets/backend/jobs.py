"""Background jobs: the one runner for work that runs off the caller's thread (a corpus scan, a generation).

A job is a callable ``fn(job)`` that the :class:`JobRunner` runs on a worker thread. Inside, ``job.progress(done,
total, message)`` reports progress and ``job.check()`` looks for cancellation; both raise
:class:`~gemscope_widgets.errors.JobCancelled` once the job is cancelled, so work that reports progress after
every step (a scan's ``on_progress``) stops at its next step. ``job.cancel_event`` serves APIs that take a
``threading.Event`` (``generate(cancel=...)``).

Latest wins per key: submitting a job under a key cancels the job running under it (cooperatively, at its next
check) and every job of that key still waiting. Jobs of one key run one after another, so two jobs for the same
thing never run at once; jobs of different keys run side by side. ``join=True`` instead joins the unfinished job
of that key (a second "scan" press follows the scan already running).

Each job tells its listeners (:class:`JobListener`), on its worker thread: ``job_started``, any number of
``job_progress``, then exactly one of ``job_done`` / ``job_failed`` / ``job_cancelled`` (a job cancelled before it
started hears only that). Every failure is reported: to the listeners, by :meth:`Job.wait`, and as a warning when
nobody listens. A listener that raises is reported as a warning and does not stop the others or the job.
Scripts and tests block with :meth:`Job.wait` (the result, or the job's error raised) or :meth:`JobRunner.wait`::

    runner = JobRunner()
    job = runner.submit(lambda job: holder.load_or_scan(on_progress=job.progress), key="scan")
    stats = job.wait()
"""

from __future__ import annotations

import itertools
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Literal

from gemscope_widgets.errors import GemscopeError, JobCancelled

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
"""Where a job is: waiting for its key's worker, running, or ended one of three ways."""

_ENDED: frozenset[str] = frozenset({"done", "failed", "cancelled"})
_ids = itertools.count(1)


class JobListener:
    """What one job tells (all no-ops here; override what you need). Called on the job's worker thread."""

    def job_started(self, job: Job) -> None:
        """The job's callable started."""

    def job_progress(self, job: Job, done: int, total: int, message: str) -> None:
        """``done`` of ``total`` steps (``total`` 0 when unknown), with a short ``message`` (may be "")."""

    def job_done(self, job: Job, result: Any) -> None:
        """The callable returned ``result``."""

    def job_failed(self, job: Job, error: BaseException) -> None:
        """The callable raised ``error`` (anything but :class:`~gemscope_widgets.errors.JobCancelled`)."""

    def job_cancelled(self, job: Job) -> None:
        """The job stopped at a cancellation check, or was cancelled before it started."""


class Job:
    """One submitted callable, its state and its listeners; made by :meth:`JobRunner.submit`.

    ``state``: :data:`JobState`. ``result`` / ``error``: what the callable returned / raised. ``done``, ``total``,
    ``message``: the last progress report. ``id``: increasing over every job of the process.
    """

    def __init__(self, fn: Callable[[Job], Any], key: Hashable, name: str,
                 listeners: list[JobListener]) -> None:
        self.id = next(_ids)
        self.key, self.name = key, name
        self.state: JobState = "queued"
        self.result: Any = None
        self.error: BaseException | None = None
        self.done, self.total, self.message = 0, 0, ""
        self.cancel_event = threading.Event()
        self._fn = fn
        self._listeners = list(listeners)
        self._lock = threading.Lock()
        self._ended = threading.Event()

    def __repr__(self) -> str:
        return f"Job({self.name or self.key!r}, id={self.id}, state={self.state!r})"

    # --- for the caller -----------------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """Whether cancellation was asked for (the job may still be running until its next check)."""
        return self.cancel_event.is_set()

    @property
    def finished(self) -> bool:
        """Whether the job has ended and told its listeners."""
        return self._ended.is_set()

    def cancel(self) -> None:
        """Asks the job to stop at its next :meth:`check` / :meth:`progress`; a queued job never starts."""
        self.cancel_event.set()

    def add_listener(self, listener: JobListener) -> None:
        """Also tells ``listener`` from now on (a job that has ended tells nothing more)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: JobListener) -> None:
        """Stops telling ``listener`` (a closed view)."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def join(self, timeout: float | None = None) -> bool:
        """Blocks until the job has ended (or ``timeout`` seconds); whether it has. Raises nothing."""
        return self._ended.wait(timeout)

    def wait(self, timeout: float | None = None) -> Any:
        """Blocks until the job ends; its result, or its error raised (:class:`JobCancelled` when cancelled).

        GemscopeError when ``timeout`` seconds pass first (the job goes on)."""
        if not self._ended.wait(timeout):
            raise GemscopeError(f"{self!r} did not finish within {timeout} s; wait longer or cancel() it.")
        if self.state == "cancelled":
            raise JobCancelled(f"{self!r} was cancelled (a newer job replaced it, or cancel() was called).")
        if self.error is not None:
            raise self.error
        return self.result

    # --- for the callable ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Raises :class:`JobCancelled` if the job was cancelled: call it between steps."""
        if self.cancel_event.is_set():
            raise JobCancelled(f"{self!r} was cancelled.")

    def progress(self, done: int, total: int = 0, message: str = "") -> None:
        """Reports ``done`` of ``total`` steps to the listeners, then :meth:`check` (so a cancelled job stops here).

        Fits a scan's ``on_progress(done, total)`` as it is."""
        self.check()
        self.done, self.total, self.message = int(done), int(total), str(message)
        self._tell("job_progress", self.done, self.total, self.message)

    # --- for the runner -----------------------------------------------------------------------------------

    def _run(self) -> None:
        if self.cancel_event.is_set():
            self._end("cancelled")
            return
        self.state = "running"
        self._tell("job_started")
        try:
            result = self._fn(self)
        except JobCancelled:
            self._end("cancelled")
        except BaseException as exc:  # every failure is reported, none ends a worker thread silently
            self._end("failed", error=exc)
        else:
            self._end("done", result=result)

    def _end(self, state: JobState, *, result: Any = None, error: BaseException | None = None) -> None:
        self.state, self.result, self.error = state, result, error
        if state == "done":
            told = self._tell("job_done", result)
        elif state == "failed":
            told = self._tell("job_failed", error)
        else:
            told = self._tell("job_cancelled")
        if state == "failed" and not told:
            warnings.warn(f"{self!r} failed and nobody was listening: {type(error).__name__}: {error}",
                          RuntimeWarning, stacklevel=2)
        self._ended.set()  # after the listeners: wait() returns once they have heard the end

    def _tell(self, event: str, *args: Any) -> int:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                getattr(listener, event)(self, *args)
            except Exception as exc:  # one broken view must not stop the job or the other listeners
                warnings.warn(f"A listener of {self!r} failed in {event}: {type(exc).__name__}: {exc}",
                              RuntimeWarning, stacklevel=2)
        return len(listeners)


class JobRunner:
    """Runs :class:`Job` s on worker threads, latest wins per key (see the module docstring).

    A worker thread lives while its key has jobs and ends when they are done; nothing stays behind.
    """

    def __init__(self, name: str = "gemscope-job") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._queues: dict[Hashable, deque[Job]] = {}
        self._running: dict[Hashable, Job] = {}

    def submit(self, fn: Callable[[Job], Any], *, key: Hashable = None, listener: JobListener | None = None,
               name: str = "", join: bool = False) -> Job:
        """Queues ``fn(job)`` under ``key`` and returns its job; cancels the running and waiting jobs of ``key``.

        ``key=None``: a key of its own (never replaced). ``join=True``: if a job of ``key`` has not finished,
        ``listener`` is added to it and that job returned instead (nothing is cancelled or queued).
        """
        if not callable(fn):
            raise GemscopeError(f"A job must be a function fn(job), got {type(fn).__name__}.")
        key = object() if key is None else key
        listeners = [] if listener is None else [listener]
        with self._lock:
            queue = self._queues.get(key)
            earlier: list[Job] = [*([self._running[key]] if key in self._running else []), *(queue or ())]
            if join:
                live = next((j for j in reversed(earlier) if not j.cancelled and not j.finished), None)
                if live is not None:
                    if listener is not None:
                        live.add_listener(listener)
                    return live
            for old in earlier:
                old.cancel()
            job = Job(fn, key, name, listeners)
            if queue is None:
                self._queues[key] = queue = deque()
                threading.Thread(target=self._work, args=(key,), name=f"{self.name}:{name or key}",
                                 daemon=True).start()
            queue.append(job)
        return job

    def _work(self, key: Hashable) -> None:
        while True:
            with self._lock:
                queue = self._queues[key]
                if not queue:
                    del self._queues[key]
                    return
                job = queue.popleft()
                self._running[key] = job
            try:
                job._run()
            finally:
                with self._lock:
                    del self._running[key]

    def jobs(self) -> list[Job]:
        """The unfinished jobs, running ones first."""
        with self._lock:
            jobs = [*self._running.values(), *(j for q in self._queues.values() for j in q)]
        return [j for j in jobs if not j.finished]

    def cancel(self, key: Hashable = None) -> None:
        """Cancels the jobs of ``key``, or every job when ``key`` is None."""
        for job in self.jobs():
            if key is None or job.key == key:
                job.cancel()

    def wait(self, timeout: float | None = None) -> None:
        """Blocks until every job submitted so far (and any submitted meanwhile) has ended; GemscopeError after
        ``timeout`` seconds. Raises no job's error: ask the job (:meth:`Job.wait`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending := self.jobs():
            for job in pending:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not job.join(left):
                    raise GemscopeError(f"{job!r} did not finish within {timeout} s; wait longer or cancel it.")

    def close(self) -> None:
        """Cancels every job; the worker threads end at the jobs' next checks."""
        self.cancel()


__all__ = ["Job", "JobListener", "JobRunner", "JobState"]
