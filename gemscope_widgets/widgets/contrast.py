"""Contrast: two prompts side by side with the SAE features that differ most between them over a span."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import traitlets

from gemscope_widgets.backend.behaviour.contrast import contrast, contrast_pairs, reduce_span
from gemscope_widgets.backend.workspace import Workspace
from gemscope_widgets.errors import ContrastError

from .bundle import bundle_path
from .feature_list import FeatureListView
from .feature_pane import FeaturePane
from .paned import PanedView
from .static_view import contrast_html

_BUNDLE = bundle_path("contrast")


def _side(acts: Any, positions: np.ndarray, features: np.ndarray) -> tuple[dict[str, Any], bytes]:
    p = acts.prompt
    heat = np.stack([acts.feature(int(f)) for f in features]).astype(np.float32) if len(features) else np.zeros(0)
    return {
        "tokens": list(p.tokens),
        "special": [bool(x) for x in p.special],
        "template": [bool(x) for x in p.template],
        "span": [int(x) for x in positions],
    }, heat.astype(np.float32).tobytes()


class ContrastView(FeatureListView):
    """The ranked features of a contrast (one pair, or several pairs with the paired t statistic) and both prompts'
    tokens side by side, coloured by the selected feature, with the compared span outlined.

    Click a feature row to select it (``selected_feature``; callbacks from :meth:`on_select` run, e.g. opening
    its pane); its "steer" button adds it to the ``steer`` widget given. ``_heat_a``/``_heat_b`` are
    ``float32 [k, T]``: each ranked feature's activation at each token of the (first) pair.
    """

    _esm = _BUNDLE

    # What the view sends is FeatureListView's (``ContrastViewMessage`` in ``js/lib/protocol.ts``).
    NO_STEER = ContrastError("This contrast has no steering widget: build it with steer=scope.steer(prompt).")

    _view = traitlets.Dict().tag(sync=True)
    """Both sides' tokens and spans, and the ranked rows (feature, a, b, diff; t and stderr for pairs)."""
    _heat_a = traitlets.Bytes(b"").tag(sync=True)
    _heat_b = traitlets.Bytes(b"").tag(sync=True)

    def __init__(self, view: dict[str, Any], heat_a: bytes, heat_b: bytes, *, steer: Any = None,
                 sae: Any = None, **kwargs: Any) -> None:
        self.sae = sae
        self.result: Any = None
        self._labeller: Any = None
        self.sae_key: str | None = None
        super().__init__(steer=steer, _view=view, _heat_a=heat_a, _heat_b=heat_b, **kwargs)

    def static_html(self) -> str:
        """The script-free rendering carried in the mime bundle (see :mod:`.static_view`)."""
        return contrast_html(self)

    @classmethod
    def build(cls, workspace: Workspace, a: Any = None, b: Any = None, *,
              pairs: Sequence[tuple[Any, Any]] | None = None, span: str | None = None, reduce: str = "mean",
              k: int = 20, sae: str | None = None, steer: Any = None) -> ContrastView:
        """Compute the contrast of ``a`` and ``b`` (or of ``pairs``) with ``workspace``'s SAE ``sae`` and build its
        view (its labels follow the workspace's statistics of that SAE)."""
        chosen = workspace.sae(sae)
        result: Any  # a Contrast, or a PairedContrast with pairs
        rows: list[dict[str, Any]]
        if pairs is not None:
            if a is not None or b is not None:
                raise ContrastError("Pass either a and b, or pairs=[(a, b), ...], not both.")
            result = contrast_pairs(workspace.model, chosen, pairs, span=span, reduce=reduce, k=k, progress=False)
            first = result.first
            rows = [{"feature": int(f), "diff": float(m), "stderr": float(s), "t": float(t)}
                    for f, m, s, t in zip(result.features, result.mean_diff, result.stderr, result.t)]
            features = result.features
        else:
            if a is None or b is None:
                raise ContrastError("scope.contrast needs two prompts a and b (or pairs=[(a, b), ...]).")
            single = first = contrast(workspace.model, chosen, a, b, span=span, reduce=reduce, k=k)
            rows = [{"feature": int(f), "diff": float(d), "a": float(x), "b": float(y)}
                    for f, d, x, y in zip(single.features, single.diff, single.a, single.b)]
            features = single.features
            result = single
        labeller = workspace.labels(sae)  # subscribed to the statistics before this view, so it is current first
        labels = labeller.labels([int(r["feature"]) for r in rows])  # explanation or automatic label
        for row in rows:
            row["label"] = labels[int(row["feature"])]
        side_a, heat_a = _side(first.acts_a, first.positions_a, features)
        side_b, heat_b = _side(first.acts_b, first.positions_b, features)
        if pairs is not None:
            red_a = reduce_span(first.acts_a, first.positions_a, reduce)
            red_b = reduce_span(first.acts_b, first.positions_b, reduce)
            for row in rows:  # the first pair's values, beside its heatmaps
                f = int(row["feature"])
                row["a"], row["b"] = float(red_a[f]), float(red_b[f])
        view = {
            "a": side_a, "b": side_b, "rows": rows, "span": result.span, "reduce": reduce,
            "sae_name": chosen.config.name, "n_pairs": len(pairs) if pairs is not None else 1,
            "caveat": None if pairs is not None else first.caveat,
        }
        widget = cls(view, heat_a, heat_b, steer=steer, sae=chosen)
        widget.sae_key = sae or next(iter(workspace.saes))
        widget.result = result
        widget._labeller = labeller
        widget._unsubscribe = workspace.stats_holder(sae).subscribe(widget._stats_changed)
        return widget

    def _stats_changed(self, _stats: Any) -> None:
        """New statistics (a scan finished): the rows' labels are recomputed, never left stale."""
        rows = self._view.get("rows", [])
        labels = self._labeller.labels([int(r["feature"]) for r in rows])
        self._view = {**self._view, "rows": [{**r, "label": labels[int(r["feature"])]} for r in rows]}


class ContrastPanel(PanedView):
    """``scope.contrast(...)``: the :class:`ContrastView` (:attr:`view`) with the selected feature's pane beneath."""

    def __init__(self, workspace: Workspace, view: ContrastView, **pane_kwargs: Any) -> None:
        self.workspace = workspace
        self._pane_kwargs = pane_kwargs
        super().__init__(view, steer=view.steer)
        view.on_select(self.show_feature)

    @property
    def result(self) -> Any:
        """The backend result (:class:`Contrast` or :class:`PairedContrast`)."""
        return self.view.result

    def show_feature(self, feature: int) -> FeaturePane:
        """Open (or switch) the feature pane below the contrast."""
        key = self.view.sae_key
        return self.open_pane(
            key, feature, lambda: FeaturePane.build(self.workspace, feature, sae=key, **self._pane_kwargs)
        )
