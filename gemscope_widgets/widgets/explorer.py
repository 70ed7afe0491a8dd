"""Explorer: a heatmap with a feature pane beneath; clicking a feature in the heatmap opens it in the pane."""

from __future__ import annotations

from typing import Any

import ipywidgets

from .feature_pane import FeaturePane
from .heatmap import Heatmap


class Explorer(ipywidgets.VBox):
    """``scope.explore(prompt)``: :class:`Heatmap` on top, :class:`FeaturePane` of the selected feature below.

    Selection is one state: a feature selected in the heatmap opens in the pane, and a feature opened in the
    pane (a related-feature chip) becomes the heatmap's selection, with a column of its own if it had none.

    One pane per SAE is built on first use and kept, so switching features reuses the SAE's cached
    statistics and each feature's logits; nothing is recomputed. With a ``steer`` widget, the pane's "steer"
    button adds the feature to it.
    """

    def __init__(self, scope: Any, heatmap: Heatmap, *, steer: Any = None, **pane_kwargs: Any) -> None:
        self.scope = scope
        self.heatmap = heatmap
        self.steer = steer
        self.panes: dict[str, FeaturePane] = {}
        self._pane_kwargs = pane_kwargs
        self._placeholder = ipywidgets.HTML("<i>Click a feature in the heatmap to see what it means.</i>")
        super().__init__([heatmap, self._placeholder])
        heatmap.on_select(self._on_select)

    @classmethod
    def build(cls, scope: Any, prompts: Any, *, steer: Any = None, **kwargs: Any) -> Explorer:
        """Builds the heatmap for ``prompts`` (keywords as :meth:`Heatmap.build`) and an empty pane slot."""
        pane_keys = ("related_k", "logits_k", "page_size", "corpus")
        pane_kwargs = {k: kwargs.pop(k) for k in pane_keys if k in kwargs}
        return cls(scope, Heatmap.build(scope, prompts, **kwargs), steer=steer, **pane_kwargs)

    @property
    def pane(self) -> FeaturePane | None:
        """The pane now shown, or None before the first click."""
        child = self.children[-1]
        return child if isinstance(child, FeaturePane) else None

    def show_feature(self, feature: int, sae: str | None = None) -> FeaturePane:
        """Shows ``feature`` of ``sae`` (default: the SAE the heatmap shows) in the pane."""
        name = sae or self.heatmap.sae_names[self.heatmap.sae_index]
        pane = self.panes.get(name)
        if pane is None:
            pane = FeaturePane.build(self.scope, feature, sae=name, **self._pane_kwargs)
            if self.steer is not None and hasattr(self.steer, "add_feature"):
                pane.on_steer(self.steer.add_feature)
            pane.observe(self._pane_moved, names="feature")
            self.panes[name] = pane
        elif pane.feature != feature:
            pane.show(feature)
        if self.pane is not pane:
            self.children = (self.heatmap, pane)
        return pane

    def _on_select(self, _prompt: int, feature: int, _token: int) -> None:
        if feature >= 0:
            self.show_feature(feature)

    def _pane_moved(self, change: Any) -> None:
        # One selection: a feature opened from the pane (a related-feature chip) is selected in the heatmap too,
        # which gives it a column if it has none.
        pane = change["owner"]
        shown = self.heatmap.sae_names[self.heatmap.sae_index]
        if self.panes.get(shown) is pane and self.heatmap.selected_feature != change["new"]:
            self.heatmap.select(feature=change["new"])
