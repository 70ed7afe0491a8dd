"""A view with a feature pane beneath: the one composite behind ``scope.explore``, ``scope.contrast`` and
``scope.circuit``.

The view on top (a heatmap, a contrast, an attribution graph) selects a feature; :meth:`PanedView.open_pane` shows it
in a :class:`~.feature_pane.FeaturePane` beneath. Panes are made on first use, one per key (an SAE's name, a
transcoder's layer), and kept, so switching features reuses their statistics and cached logits. With a ``steer``
widget, each pane's "steer" button adds its feature to it. The saved notebook shows the view's script-free HTML
and the open pane's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import ipywidgets

from .feature_pane import FeaturePane
from .static_html import StaticFallback
from .static_view import feature_pane_html

PANE_KEYS = ("related_k", "logits_k", "page_size", "corpus")
"""The keywords of ``scope.explore`` / ``scope.contrast`` that go to the feature panes, not to the view."""


def pane_keywords(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Takes :data:`PANE_KEYS` out of ``kwargs`` (changing it) and returns them."""
    return {k: kwargs.pop(k) for k in PANE_KEYS if k in kwargs}


class PanedView(StaticFallback, ipywidgets.VBox):
    """``view`` with the pane of its selected feature beneath (``placeholder`` text until the first feature).

    :attr:`view` is the view on top, :attr:`pane` the pane shown (None before the first), :attr:`panes` every pane
    made, by key; ``steer`` (a steering widget) gets the panes' "steer" button.
    """

    def __init__(self, view: Any, *, steer: Any = None, placeholder: str | None = None) -> None:
        self.view = view
        self.steer = steer
        self.panes: dict[Hashable, FeaturePane] = {}
        below = [ipywidgets.HTML(placeholder)] if placeholder is not None else []
        super().__init__([view, *below])

    @property
    def pane(self) -> FeaturePane | None:
        """The pane now shown, or None before the first feature."""
        child = self.children[-1]
        return child if isinstance(child, FeaturePane) else None

    def open_pane(self, key: Hashable, feature: int, make: Callable[[], FeaturePane]) -> FeaturePane:
        """Shows ``feature`` in the pane kept under ``key`` (``make()`` builds it, showing ``feature``, on first use)
        beneath the view, and returns it."""
        pane = self.panes.get(key)
        if pane is None:
            pane = make()
            if self.steer is not None and hasattr(self.steer, "add_feature"):
                pane.on_steer(self.steer.add_feature)
            self._pane_made(pane)
            self.panes[key] = pane
        elif pane.feature != feature:
            pane.show(feature)
        if self.pane is not pane:
            self.children = (self.view, pane)
        return pane

    def _pane_made(self, pane: FeaturePane) -> None:
        """Called once per new pane (a subclass links it to its view)."""

    def static_html(self) -> str:
        """The view's script-free rendering, and the open pane's (see :mod:`.static_view`)."""
        pane = self.pane
        return self.view.static_html() + (feature_pane_html(pane) if pane is not None else "")
