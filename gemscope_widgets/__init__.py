"""Look inside Gemma 3 with Gemma Scope 2 SAEs, live in a notebook.

The public names are imported lazily so that ``import gemscope_widgets`` does not pull in torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("gemscope-widgets")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

_EXPORTS = {
    "load_model": "gemscope_widgets.backend.gemma.model",
    "GemmaModel": "gemscope_widgets.backend.gemma.model",
    "load_sae": "gemscope_widgets.backend.dictionaries.loading",
    "JumpReLUSAE": "gemscope_widgets.backend.dictionaries.jumprelu",
    "SAEConfig": "gemscope_widgets.backend.dictionaries.config",
    "capture": "gemscope_widgets.backend.gemma.capture",
    "check_compatible": "gemscope_widgets.backend.dictionaries.compat",
    "prompt_features": "gemscope_widgets.backend.analysis.features",
    "SteeringSpec": "gemscope_widgets.backend.steering.spec",
    "DirectionSpec": "gemscope_widgets.backend.steering.spec",
    "FeatureStats": "gemscope_widgets.backend.stats.feature_stats",
    "train_sae": "gemscope_widgets.backend.training.train",
    "load_default": "gemscope_widgets.backend.default",
    "attribute": "gemscope_widgets.backend.circuits.attribution",
    "AttributionGraph": "gemscope_widgets.backend.circuits.graph",
    "load_transcoders": "gemscope_widgets.backend.circuits.transcoder_set",
    "TranscoderSet": "gemscope_widgets.backend.circuits.transcoder_set",
    "behaviour_direction": "gemscope_widgets.backend.behaviour.direction",
    "refusal_direction": "gemscope_widgets.backend.behaviour.direction",
    "projection_track": "gemscope_widgets.backend.behaviour.direction",
    "refusal_score": "gemscope_widgets.backend.behaviour.refusal",
    "refusal_sweep": "gemscope_widgets.backend.behaviour.refusal",
    "contrast": "gemscope_widgets.backend.behaviour.contrast",
    "contrast_pairs": "gemscope_widgets.backend.behaviour.contrast",
    "cot_faithfulness": "gemscope_widgets.backend.behaviour.faithfulness",
    "Scope": "gemscope_widgets.scope",
    "heatmap": "gemscope_widgets.widgets.heatmap",
    "Heatmap": "gemscope_widgets.widgets.heatmap",
    "FeaturePane": "gemscope_widgets.widgets.feature_pane",
    "Steer": "gemscope_widgets.widgets.steer",
    "TokenView": "gemscope_widgets.widgets.token_view",
    "Chat": "gemscope_widgets.widgets.chat",
    "ContrastView": "gemscope_widgets.widgets.contrast",
    "Circuit": "gemscope_widgets.widgets.circuit",
    "train_transcoders": "gemscope_widgets.backend.training.transcoders",
    # coarse-to-fine structure (Matryoshka prefixes, parents and children, the family tree across widths)
    "prefix_curve": "gemscope_widgets.backend.analysis.matryoshka",
    "PrefixCurve": "gemscope_widgets.backend.analysis.matryoshka",
    "LatentOrder": "gemscope_widgets.backend.analysis.matryoshka",
    "cofiring": "gemscope_widgets.backend.stats.cofiring",
    "CoFiring": "gemscope_widgets.backend.stats.cofiring",
    "latent_family": "gemscope_widgets.backend.analysis.hierarchy",
    "LatentFamily": "gemscope_widgets.backend.analysis.hierarchy",
    "family_tree": "gemscope_widgets.backend.analysis.width_family",
    "FamilyTree": "gemscope_widgets.backend.analysis.width_family",
    "MatryoshkaError": "gemscope_widgets.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gemscope_widgets' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
