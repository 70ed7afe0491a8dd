"""Probe view: held-out ROC curves of every detector, the SAE probe's latents, the AUROCs and the learning curve."""

from __future__ import annotations

from typing import Any

import numpy as np
import traitlets

from gemscope_widgets.backend.behaviour.probe import DENSE_PROBE, PROBES, SAE_PROBE, ProbeResult
from gemscope_widgets.errors import ProbeError

from .bundle import bundle_path
from .feature_list import FeatureListView
from .feature_pane import FeaturePane
from .paned import PanedView
from .static_view import probe_html

_BUNDLE = bundle_path("probe")


def roc_payload(result: ProbeResult) -> tuple[list[dict[str, Any]], bytes]:
    """Every ROC curve of ``result`` (the three probes, then each latent) as ``float32`` points in one buffer:
    ``[{"name", "feature", "offset", "n"}]`` and the bytes, curve ``c`` holding ``n`` false positive rates at
    ``offset`` then ``n`` true positive rates."""
    curves: list[dict[str, Any]] = []
    parts: list[np.ndarray] = []
    offset = 0
    keys: list[str | int] = [*PROBES, *result.top_features]
    for key in keys:
        fpr, tpr = result.roc(key)
        curves.append({"name": key if isinstance(key, str) else f"#{key}",
                       "feature": -1 if isinstance(key, str) else int(key), "offset": offset, "n": len(fpr)})
        parts += [fpr.astype(np.float32), tpr.astype(np.float32)]
        offset += 2 * len(fpr)
    return curves, np.concatenate(parts).astype(np.float32).tobytes() if parts else b""


def probe_payload(result: ProbeResult, labels: dict[int, str] | None = None,
                  density: Any = None) -> dict[str, Any]:
    """The JSON part of the view: header, detectors, latents (labels and densities from the result unless newer
    ones are given), learning curve; ``best``: the latent with the highest held-out AUROC alone (the first of
    ties, as the result's summary names it), the one the view shows when none is selected."""
    n_pos = int(result.labels.sum())
    names = {SAE_PROBE: f"SAE probe (top {result.k} latents)", DENSE_PROBE: f"dense probe ({result.d_model} dims)"}
    features = []
    for f in result.features:
        label = (labels or {}).get(f.feature, f.label)
        dens = f.density if density is None else float(density[f.feature])
        features.append({
            "feature": f.feature, "label": label or "", "density": dens, "auroc": f.auroc, "low": f.low,
            "high": f.high, "mean_difference": f.mean_difference, "chosen_in": f.chosen_in,
            "n_held_out": f.n_held_out,
        })
    return {
        "sae_name": result.sae_name, "layer": result.layer, "position": str(result.position), "k": result.k,
        "seed": result.seed, "n_positive": n_pos, "n_negative": len(result.labels) - n_pos, "scheme": result.scheme,
        "n_folds": len(result.folds),
        "detectors": [{"name": d.name, "title": names.get(d.name, d.name), "auroc": d.auroc, "low": d.low,
                       "high": d.high, "n_held_out": d.n_held_out} for d in result.detectors],
        "features": features,
        "best": int(max(result.features, key=lambda f: f.auroc).feature) if result.features else -1,
        "curve": {"sizes": [int(s) for s in result.curve_sizes],
                  "values": {name: [float(v) for v in values] for name, values in result.curve.items()}},
    }


class ProbeView(FeatureListView):
    """A :class:`ProbeResult` drawn: held-out ROC curves of the SAE probe, the dense probe, the difference of means
    and the selected latent; the AUROCs with their 95% intervals; the SAE probe's latents with labels and
    densities (click one to select it: ``selected_feature``, callbacks of :meth:`on_select`, e.g. its pane; its
    "steer" button adds it to the ``steer`` widget given); and the learning curve.

    ``_roc`` is ``float32``: each curve's false then true positive rates, placed by ``_view["roc"]``.
    """

    _esm = _BUNDLE

    # What the view sends is FeatureListView's (``ProbeViewMessage`` in ``js/lib/protocol.ts``).
    NO_STEER = ProbeError("This probe view has no steering widget: pass steer=scope.steer(prompt).")

    _view = traitlets.Dict().tag(sync=True)
    """Header, detectors, latents, learning curve and the ROC curves' places in ``_roc``."""
    _roc = traitlets.Bytes(b"").tag(sync=True)

    def __init__(self, result: ProbeResult, *, steer: Any = None, **kwargs: Any) -> None:
        if not isinstance(result, ProbeResult):
            raise ProbeError(f"A probe view draws a ProbeResult (from probe or scope.probe), got "
                             f"{type(result).__name__}.")
        self.result = result
        self._labeller: Any = None
        curves, data = roc_payload(result)
        view = {**probe_payload(result), "roc": curves}
        super().__init__(steer=steer, _view=view, _roc=data, **kwargs)

    def static_html(self) -> str:
        """The script-free rendering carried in the mime bundle (see :mod:`.static_view`)."""
        return probe_html(self)

    def follow(self, workspace: Any, sae: str | None) -> None:
        """Keep the latents' labels and densities those of ``workspace``'s statistics for ``sae``, now and after
        every new scan (never left stale)."""
        self._labeller = workspace.labels(sae)
        holder = workspace.stats_holder(sae)
        self._unsubscribe = holder.subscribe(self._stats_changed)
        self._stats_changed(holder.stats)

    def _stats_changed(self, stats: Any) -> None:
        features = self.result.top_features
        labels = self._labeller.labels(features) if self._labeller is not None else None
        density = None if stats is None else stats.density
        self._view = {**probe_payload(self.result, labels, density), "roc": self._view.get("roc", [])}


class ProbePanel(PanedView):
    """The :class:`ProbeView` (:attr:`view`) with the selected latent's feature pane beneath
    (``result.widget(scope=scope)``)."""

    def __init__(self, workspace: Any, view: ProbeView, sae: str | None = None, **pane_kwargs: Any) -> None:
        self.workspace = workspace
        self.sae_key = sae
        self._pane_kwargs = pane_kwargs
        super().__init__(view, steer=view.steer)
        view.on_select(self.show_feature)

    @property
    def result(self) -> ProbeResult:
        """The backend result."""
        return self.view.result

    def show_feature(self, feature: int) -> FeaturePane:
        """Open (or switch) the feature pane below the probe view."""
        return self.open_pane(
            self.sae_key, feature,
            lambda: FeaturePane.build(self.workspace, feature, sae=self.sae_key, **self._pane_kwargs),
        )


def probe_view(result: ProbeResult, *, scope: Any = None, sae: str | None = None, steer: Any = None,
               **pane_kwargs: Any) -> ProbePanel | ProbeView:
    """``result.widget()``: the probe view; with ``scope`` (the Scope or Workspace whose SAE ``sae`` the probe used),
    a click on a latent opens its feature pane beneath, and labels and densities follow its statistics.
    ``steer``: a steering widget the latents' "steer" buttons add to."""
    view = ProbeView(result, steer=steer)
    if scope is None:
        return view
    workspace = getattr(scope, "workspace", scope)
    sae_obj = workspace.sae(sae)
    if sae_obj.config.name != result.sae_name:
        raise ProbeError(f"The probe used {result.sae_name}, but the Scope's SAE {sae!r} is {sae_obj.config.name}: "
                         "pass sae= the key of the SAE the probe used.")
    view.follow(workspace, sae)
    return ProbePanel(workspace, view, sae, **pane_kwargs)
