"""Host memory: how much a long computation may still use, and letting go of its buffers when it is interrupted.

Available memory is the kernel's own estimate (``MemAvailable`` in ``/proc/meminfo``: free memory plus what
can be reclaimed without swapping), capped by the cgroup's limit when the process runs under one (a container,
a JupyterHub spawner, ``systemd-run -p MemoryMax``): ``memory.max − memory.current`` (cgroup v2) or
``memory.limit_in_bytes − memory.usage_in_bytes`` (v1).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import traceback
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_headroom() -> int | None:
    for limit_path, usage_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_path), _read_int(usage_path)
        if limit is not None and usage is not None and limit < 1 << 60:
            return max(0, limit - usage)
    return None


def available_memory() -> int | None:
    """Bytes this process may still allocate without swapping or hitting its cgroup limit; None if unknown."""
    found = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    return min(found) if found else None


def tensor_ranges(tensors: Iterable[Any]) -> list[tuple[int, int]]:
    """``(address, bytes)`` of each CPU tensor's elements, once each (tied weights are one tensor), for
    :func:`absent_bytes`."""
    return sorted({(t.data_ptr(), t.numel() * t.element_size()) for t in tensors if t.device.type == "cpu"})


def absent_bytes(ranges: Iterable[tuple[int, int]]) -> int | None:
    """Bytes of the ``(address, n_bytes)`` ranges of this process's memory whose pages are not in its resident set
    yet: what reading all of them adds to its RSS (a memory-mapped weight file's pages count once touched, whether
    or not the file is in the page cache). Overlapping ranges count once.

    Read from ``/proc/self/pagemap`` (Linux; an entry per page, bit 63 "present", bit 62 "swapped"); None where it
    cannot be read (another OS, a locked-down kernel).
    """
    page = os.sysconf("SC_PAGE_SIZE")
    spans = sorted((a // page, (a + n - 1) // page + 1) for a, n in ranges if n > 0)
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return None
    absent = 0
    try:
        for lo, hi in merged:
            entries = array("Q", os.pread(fd, 8 * (hi - lo), 8 * lo))
            if len(entries) != hi - lo:
                return None
            absent += sum(1 for e in entries if not e >> 62)  # neither present (bit 63) nor swapped (bit 62)
    except OSError:
        return None
    finally:
        os.close(fd)
    return absent * page


def format_bytes(n: float) -> str:
    """``1.4 GB`` / ``350 MB`` (powers of 1024, one decimal above a GB)."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
    return f"{n / 2**20:.0f} MB"


@contextlib.contextmanager
def released_on_error() -> Iterator[None]:
    """Clear the local variables of every finished frame of an exception leaving the block.

    A notebook keeps the last traceback (``sys.last_traceback``), and with it every frame's locals: after a
    KeyboardInterrupt in the middle of a long computation its buffers (gigabytes) stayed held until the kernel
    restarted. The traceback still prints its lines; only the frames' variables go.
    """
    try:
        yield
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise


def releases_buffers_on_error(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: ``fn`` runs inside :func:`released_on_error`, so its own frame's buffers go too."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with released_on_error():
            return fn(*args, **kwargs)

    return wrapper


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the operating system (glibc's ``malloc_trim(0)``), so the resident
    memory after a large computation is what is still held, not what the allocator kept for reuse.

    After a training loop freed its gigabyte-sized buffers, glibc kept part of them mapped: the next step of
    first use then peaked on top of them. A no-op where the C library has no ``malloc_trim`` (macOS, musl).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
