"""Locating the esbuild bundles that `pip install` builds into ``gemscope_widgets/static``."""

from __future__ import annotations

import pathlib

from ..errors import GemscopeError

STATIC = pathlib.Path(__file__).parent.parent / "static"


def bundle_path(name: str) -> pathlib.Path:
    """The bundled ESM for widget ``name`` (e.g. ``"heatmap"``), or a clear error if it was never built."""
    path = STATIC / f"{name}.js"
    if not path.is_file():
        raise GemscopeError(
            f"The front-end bundle {path} is missing. Build it with `npm run build` in the source tree "
            "or reinstall the package with `pip install -e .`."
        )
    return path
