"""Which view draws a backend result, without the backend knowing the widget layer.

The layer above (the package's ``__init__``) registers, per kind of result, where its view is built
(``"module:function"``, imported only when a view is asked for); a result's ``widget()`` asks this registry.
So the arrow runs one way: widgets know the backend, the backend knows only that some view may exist.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from gemscope_widgets.errors import GemscopeError

_VIEWS: dict[str, str | Callable[..., Any]] = {}


def register_view(kind: str, factory: str | Callable[..., Any]) -> None:
    """Registers the view of results of ``kind`` (e.g. ``"AttributionGraph"``): a callable
    ``factory(result, **kwargs)`` or its ``"module:function"`` path (imported on first use)."""
    _VIEWS[kind] = factory


def view_factory(kind: str) -> Callable[..., Any]:
    """The registered view builder of ``kind``; GemscopeError if none is registered."""
    factory = _VIEWS.get(kind)
    if factory is None:
        raise GemscopeError(f"No view is registered for {kind} results (gemscope_widgets registers them on import).")
    if isinstance(factory, str):
        module, _, name = factory.partition(":")
        factory = _VIEWS[kind] = getattr(importlib.import_module(module), name)
    return factory
