"""Where the package keeps converted models, trained SAEs and feature statistics."""

from __future__ import annotations

import os
from pathlib import Path


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
