"""Where the package keeps converted models, trained SAEs and feature statistics, and how cached artefacts are named."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under ``$GEMSCOPE_CACHE`` or ``~/.cache/gemscope_widgets``."""
    root = os.environ.get("GEMSCOPE_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "gemscope_widgets"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def key_digest(key: Any) -> str:
    """The name part that tells cached artefacts apart: the first 20 hex characters of the SHA-256 of ``key``
    written as JSON with sorted keys (``json.dumps`` defaults: ASCII escapes, ``", "`` and ``": "`` separators).

    ``key`` is anything JSON can write (dicts, lists, strings, numbers, None); a ``TypeError`` otherwise. The
    digest must never change for the same key: folders already on disk are found by it.
    """
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def name_slug(name: str, empty: str = "sae") -> str:
    """A file-name-safe tail of ``name`` to put before a :func:`key_digest` (a folder a person can recognise):
    runs of characters other than ``A-Za-z0-9_.-`` become ``_``, then the last 48 characters, without leading or
    trailing ``_``; ``empty`` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))[-48:].strip("_") or empty


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block.

    A notebook kernel and a test run may both build the same cached artefact on first use.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield a scratch folder beside ``target``; on success it replaces ``target`` in one rename.

    A half-written folder is never visible under the final name.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_once(path: Path, is_ready: Callable[[Path], bool], build: Callable[[], object]) -> Path:
    """Return ``path``, first running ``build()`` under its file lock unless ``is_ready(path)``.

    Concurrent callers (a notebook kernel and a test run) wait on one lock (``<path>.lock`` beside it); only the
    first builds, the others then find the artefact ready. ``build`` should write through :func:`staged_dir`.
    """
    if is_ready(path):
        return path
    with file_lock(path.parent / f"{path.name}.lock"):
        if not is_ready(path):
            build()
    return path
