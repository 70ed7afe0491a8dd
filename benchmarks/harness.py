"""Timing and memory measurement shared by every case.

Every timing is a warm-up followed by the median of several runs, on a fixed number of torch threads, so
the ratios inside one run are comparable. Peak RSS and load time are measured in fresh subprocesses:
inside the benchmark process many model copies are alive at once.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

DEFAULT_THREADS = 2


def fix_threads(n: int | None = None) -> int:
    """Pin torch's intra-op threads (default: 2, the machine the published table was measured on)."""
    n = n or int(os.environ.get("GEMSCOPE_BENCH_THREADS", DEFAULT_THREADS))
    torch.set_num_threads(n)
    return n


@dataclass
class Timing:
    """Wall-clock seconds of each timed run (warm-up runs excluded)."""

    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "runs_s": [round(r, 6) for r in self.runs]}


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed."""
    for _ in range(warmup):
        fn()
    timing = Timing()
    for _ in range(max(repeats, 1)):
        gc.collect()
        start = time.perf_counter()
        fn()
        timing.runs.append(time.perf_counter() - start)
    return timing


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    warm_fns: dict[str, Callable[[], object]] | None = None,
) -> dict[str, Timing | BaseException]:
    """Time several paths round-robin (one run of each per round) so that load from other processes on a
    shared machine hits every path alike; a path that raises is reported by its exception and dropped.

    ``warm_fns[name]``, when given, replaces ``fns[name]`` for the warm-up (e.g. a 2-token generation).
    """
    out: dict[str, Timing | BaseException] = {}
    live = {}
    for name, fn in fns.items():
        warm = (warm_fns or {}).get(name, fn)
        try:
            for _ in range(warmup):
                warm()
        except Exception as exc:
            out[name] = exc
            continue
        live[name] = fn
        out[name] = Timing()
    for _ in range(max(repeats, 1)):
        for name, fn in list(live.items()):
            gc.collect()
            start = time.perf_counter()
            try:
                fn()
            except Exception as exc:
                out[name] = exc
                del live[name]
                continue
            timing = out[name]
            assert isinstance(timing, Timing)
            timing.runs.append(time.perf_counter() - start)
    return out


def cpu_seconds() -> float:
    """This process's CPU time so far (user + system, all threads), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """``(wall seconds, CPU seconds, result)`` of one call of ``fn``: on a shared machine the CPU time is the
    steadier number (wall time stretches with the load)."""
    cpu0, start = cpu_seconds(), time.perf_counter()
    out = fn()
    return time.perf_counter() - start, cpu_seconds() - cpu0, out


def error_text(exc: BaseException) -> str:
    """The exact error, type first, plus where it was raised (last frame), for the table."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def not_installed(exc: ImportError) -> str:
    return f"not installed: {type(exc).__name__}: {exc}"


# VmHWM, not ru_maxrss: Linux carries the forked parent's RSS high-water mark across exec into ru_maxrss,
# so a child of a large benchmark process would report the parent's peak.
_CHILD_PRELUDE = """
import json, sys, time
_t0 = time.perf_counter()
def _report(**extra):
    with open("/proc/self/status") as fh:
        peak_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    print("@@RESULT@@" + json.dumps({"peak_rss_mb": peak_kb / 1024, **extra}), flush=True)
"""


def run_fresh(code: str, timeout: float = 600.0, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh Python process and return the dict it passed to ``_report(...)``.

    The child's peak RSS (``ru_maxrss``) is added; a failed child gives ``{"error": ...}`` with its stderr tail.
    """
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD_PRELUDE + code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"TimeoutExpired: the subprocess ran past {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"error": f"subprocess exited with {done.returncode}: " + " | ".join(tail)}
