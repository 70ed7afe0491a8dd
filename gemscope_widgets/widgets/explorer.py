"""Explorer: a heatmap with a feature pane beneath; clicking a feature in the heatmap opens it in the pane."""

from __future__ import annotations

from typing import Any

from gemscope_widgets.backend.workspace import Workspace

from .feature_pane import FeaturePane
from .heatmap import Heatmap
from .paned import PanedView, pane_keywords

_PLACEHOLDER = "<i>Click a feature in the heatmap to see what it means.</i>"


class Explorer(PanedView):
    """``scope.explore(prompt)``: :class:`Heatmap` on top, :class:`FeaturePane` of the selected feature below.

    Selection is one state: a feature selected in the heatmap opens in the pane, and a feature opened in the
    pane (a related-feature chip) becomes the heatmap's selection, with a column of its own if it had none.

    One pane per SAE is built on first use and kept, so switching features reuses the SAE's cached
    statistics and each feature's logits; nothing is recomputed. With a ``steer`` widget, the pane's "steer"
    button adds the feature to it. The heatmap is :attr:`heatmap` (also :attr:`view`).
    """

    def __init__(self, workspace: Workspace, heatmap: Heatmap, *, steer: Any = None, **pane_kwargs: Any) -> None:
        self.workspace = workspace
        self.heatmap = heatmap
        self._pane_kwargs = pane_kwargs
        super().__init__(heatmap, steer=steer, placeholder=_PLACEHOLDER)
        heatmap.on_select(self._on_select)

    @classmethod
    def build(cls, workspace: Workspace, prompts: Any, *, steer: Any = None, **kwargs: Any) -> Explorer:
        """Builds the heatmap for ``prompts`` (keywords as :meth:`Heatmap.build`; the panes' ``related_k``,
        ``logits_k``, ``page_size`` and ``corpus`` go to them) and an empty pane slot."""
        pane_kwargs = pane_keywords(kwargs)
        return cls(workspace, Heatmap.build(workspace, prompts, **kwargs), steer=steer, **pane_kwargs)

    def show_feature(self, feature: int, sae: str | None = None) -> FeaturePane:
        """Shows ``feature`` of ``sae`` (default: the SAE the heatmap shows) in the pane."""
        name = sae or self.heatmap.sae_names[self.heatmap.sae_index]
        return self.open_pane(
            name, feature, lambda: FeaturePane.build(self.workspace, feature, sae=name, **self._pane_kwargs)
        )

    def _pane_made(self, pane: FeaturePane) -> None:
        pane.observe(self._pane_moved, names="feature")

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
