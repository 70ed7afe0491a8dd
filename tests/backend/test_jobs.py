"""The background-job runner, without widgets: events in order, latest wins, cancellation, every failure reported,
and a real corpus scan run, reported and cancelled between batches as a job."""

from __future__ import annotations

import threading
import warnings

import pytest

from gemscope_widgets.backend.jobs import Job, JobListener, JobRunner
from gemscope_widgets.backend.stats.holder import StatsHolder
from gemscope_widgets.errors import GemscopeError, JobCancelled
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae
from tests.helpers import SCAN_CORPUS, SCAN_PARAMS

TIMEOUT = 30.0


class Recorder(JobListener):
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.threads: set[str] = set()

    def _add(self, *event: object) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append(event)

    def job_started(self, job: Job) -> None:
        self._add("started", job.id)

    def job_progress(self, job: Job, done: int, total: int, message: str) -> None:
        self._add("progress", job.id, done, total, message)

    def job_done(self, job: Job, result: object) -> None:
        self._add("done", job.id, result)

    def job_failed(self, job: Job, error: BaseException) -> None:
        self._add("failed", job.id, error)

    def job_cancelled(self, job: Job) -> None:
        self._add("cancelled", job.id)


def blocking(release: threading.Event, started: threading.Event | None = None):
    """A job that reports progress every few ms until ``release`` is set (or it is cancelled)."""
    def work(job: Job) -> str:
        if started is not None:
            started.set()
        step = 0
        while not release.wait(0.005):
            step += 1
            job.progress(step, 0)
        return "released"
    return work


def test_the_listener_hears_start_progress_then_done_on_a_worker_thread():
    runner, rec = JobRunner("t-order"), Recorder()

    def work(job: Job) -> int:
        for i in range(1, 4):
            job.progress(i, 3, f"step {i}")
        return 42

    job = runner.submit(work, key="k", listener=rec)
    assert job.wait(TIMEOUT) == 42
    assert job.state == "done" and job.result == 42 and (job.done, job.total) == (3, 3)
    assert rec.events == [("started", job.id), *[("progress", job.id, i, 3, f"step {i}") for i in (1, 2, 3)],
                          ("done", job.id, 42)]
    assert rec.threads and threading.current_thread().name not in rec.threads


def test_an_exception_reaches_the_listener_and_wait():
    runner, rec = JobRunner("t-fail"), Recorder()
    boom = RuntimeError("the job broke")

    def work(job: Job) -> None:
        job.progress(1, 2)
        raise boom

    job = runner.submit(work, listener=rec)
    with pytest.raises(RuntimeError, match="the job broke"):
        job.wait(TIMEOUT)
    assert job.state == "failed" and job.error is boom
    assert rec.events == [("started", job.id), ("progress", job.id, 1, 2, ""), ("failed", job.id, boom)]


def test_a_failure_nobody_listens_to_is_a_warning():
    with pytest.warns(RuntimeWarning, match="failed and nobody was listening: ZeroDivisionError: division"):
        assert JobRunner("t-silent").submit(lambda job: 1 / 0).join(TIMEOUT)


def test_a_listener_that_raises_is_reported_and_the_others_still_hear():
    class Broken(JobListener):
        def job_done(self, job: Job, result: object) -> None:
            raise KeyError("view closed")

    runner, rec = JobRunner("t-broken"), Recorder()
    job = runner.submit(lambda job: "ok", listener=Broken())
    job.add_listener(rec)
    with pytest.warns(RuntimeWarning, match="failed in job_done: KeyError"):
        assert job.wait(TIMEOUT) == "ok"
    assert rec.events[-1] == ("done", job.id, "ok")


def test_latest_wins_per_key_and_jobs_of_one_key_never_overlap():
    runner = JobRunner("t-latest")
    first_started, release = threading.Event(), threading.Event()
    running = []
    overlap = []

    def tracked(work):
        def run(job: Job):
            running.append(job.id)
            overlap.append(len(running))
            try:
                return work(job)
            finally:
                running.remove(job.id)
        return run

    rec_a, rec_b, rec_c = Recorder(), Recorder(), Recorder()
    a = runner.submit(tracked(blocking(release, first_started)), key="gen", listener=rec_a)
    assert first_started.wait(TIMEOUT)
    b = runner.submit(tracked(blocking(release)), key="gen", listener=rec_b)  # queued behind a, a cancelled
    c = runner.submit(lambda job: "latest", key="gen", listener=rec_c)  # b dropped before it started
    assert c.wait(TIMEOUT) == "latest"
    assert a.state == b.state == "cancelled" and c.state == "done"
    assert rec_a.events[0] == ("started", a.id) and rec_a.events[-1] == ("cancelled", a.id)
    assert rec_b.events == [("cancelled", b.id)]  # never ran
    assert max(overlap) == 1
    with pytest.raises(JobCancelled, match="cancelled"):
        a.wait(TIMEOUT)
    assert a.id < b.id < c.id


def test_different_keys_run_side_by_side():
    runner = JobRunner("t-keys")
    both = threading.Barrier(2, timeout=TIMEOUT)

    def meet(job: Job) -> str:
        both.wait()  # only returns when the other key's job runs at the same time
        return str(job.key)

    jobs = [runner.submit(meet, key=k) for k in ("x", "y")]
    assert [j.wait(TIMEOUT) for j in jobs] == ["x", "y"]


def test_cancel_stops_a_running_job_at_its_next_check():
    runner, rec = JobRunner("t-cancel"), Recorder()
    started, release = threading.Event(), threading.Event()
    job = runner.submit(blocking(release, started), key="scan", listener=rec)
    assert started.wait(TIMEOUT)
    runner.cancel("scan")
    assert job.join(TIMEOUT) and job.state == "cancelled"
    assert not release.is_set()  # it stopped because of the cancel, not because it ended
    assert rec.events[-1] == ("cancelled", job.id)
    assert sum(e[0] == "cancelled" for e in rec.events) == 1


def test_join_follows_the_unfinished_job_instead_of_replacing_it():
    runner = JobRunner("t-join")
    started, release = threading.Event(), threading.Event()
    first, rec = Recorder(), Recorder()
    job = runner.submit(blocking(release, started), key="scan", listener=first)
    assert started.wait(TIMEOUT)
    again = runner.submit(lambda job: "another", key="scan", listener=rec, join=True)
    assert again is job and not job.cancelled
    release.set()
    assert job.wait(TIMEOUT) == "released"
    assert rec.events[-1] == ("done", job.id, "released") and first.events[-1] == rec.events[-1]
    # once it has finished, join=True starts a new job
    assert runner.submit(lambda job: "new", key="scan", join=True).wait(TIMEOUT) == "new"


def test_runner_wait_blocks_until_all_jobs_end_and_workers_go_away():
    runner = JobRunner("t-wait")
    release = threading.Event()
    jobs = [runner.submit(blocking(release), key=k) for k in range(3)]
    with pytest.raises(GemscopeError, match="did not finish within"):
        runner.wait(timeout=0.05)
    release.set()
    runner.wait(timeout=TIMEOUT)
    assert all(j.state == "done" for j in jobs) and runner.jobs() == []
    for thread in threading.enumerate():
        if thread.name.startswith("t-wait:"):
            thread.join(TIMEOUT)
    assert not [t for t in threading.enumerate() if t.name.startswith("t-wait:")]


def test_a_job_must_be_callable():
    with pytest.raises(GemscopeError, match="must be a function"):
        JobRunner().submit("scan")  # type: ignore[arg-type]


# --- a real scan as a job ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scan_sae(tmp_path_factory):
    from gemscope_widgets.backend.dictionaries.loading import load_sae_folder

    folder = write_gemma_scope_sae(
        tmp_path_factory.mktemp("jobs_sae") / "resid_post/layer_1_width_16k_l0_medium",
        kind="sae", site="resid_post", layer=1, width=48, seed=7, threshold=0.3,
    )
    return load_sae_folder(folder)


def test_a_scan_job_reports_every_batch_and_fills_the_holder(tiny_model, scan_sae, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path / "cache"))
    holder, rec = StatsHolder(tiny_model, scan_sae), Recorder()
    job = holder.scan_in_background(SCAN_CORPUS, listener=rec, batch_size=2, **SCAN_PARAMS)
    stats = job.wait(120)
    assert holder.stats is stats and stats.n_tokens > 0
    progress = [e for e in rec.events if e[0] == "progress"]
    assert [e[2] for e in progress] == list(range(2, len(SCAN_CORPUS) + 1, 2))  # documents, batch by batch
    assert {e[3] for e in progress} == {len(SCAN_CORPUS)}
    assert rec.events[-1] == ("done", job.id, stats)


def test_a_cancelled_scan_stops_between_batches_and_sets_nothing(tiny_model, scan_sae, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path / "cache"))
    holder = StatsHolder(tiny_model, scan_sae)

    class CancelAfterFirstBatch(Recorder):
        def job_progress(self, job: Job, done: int, total: int, message: str) -> None:
            super().job_progress(job, done, total, message)
            job.cancel()

    rec = CancelAfterFirstBatch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cancelled scan is not a failure
        job = holder.scan_in_background(SCAN_CORPUS, listener=rec, batch_size=2, **SCAN_PARAMS)
        assert job.join(120)
    assert job.state == "cancelled" and holder.stats is None
    assert [e[0] for e in rec.events] == ["started", "progress", "cancelled"]
    # the next scan runs to the end
    assert holder.scan_in_background(SCAN_CORPUS, batch_size=2, **SCAN_PARAMS).wait(120) is holder.stats
