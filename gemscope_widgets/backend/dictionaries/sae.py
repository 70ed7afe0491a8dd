"""The dictionary classes and their config in one import (each lives in its own module of this package).

- :mod:`.config`: :class:`SAEConfig` and ``config.json`` parsing;
- :mod:`.base`: the JumpReLU, float32 inputs, feature-index checks, per-slot input stacking;
- :mod:`.jumprelu`: one-layer SAEs and transcoders; :mod:`.clt`: cross-layer transcoders;
- :mod:`.crosscoder`: crosscoders, one class per layout; :mod:`.layered`: the per-slot math they share.
"""

from __future__ import annotations

from gemscope_widgets.backend.dictionaries.base import check_feature_index, jumprelu, stack_slots
from gemscope_widgets.backend.dictionaries.clt import CrossLayerTranscoder
from gemscope_widgets.backend.dictionaries.config import KINDS, SITES, SAEConfig
from gemscope_widgets.backend.dictionaries.crosscoder import Crosscoder, PerSlotCrosscoder, SharedLatentCrosscoder
from gemscope_widgets.backend.dictionaries.jumprelu import JumpReLUSAE
from gemscope_widgets.backend.dictionaries.layered import validate_slot_shapes

__all__ = [
    "KINDS",
    "SITES",
    "CrossLayerTranscoder",
    "Crosscoder",
    "JumpReLUSAE",
    "PerSlotCrosscoder",
    "SAEConfig",
    "SharedLatentCrosscoder",
    "check_feature_index",
    "jumprelu",
    "stack_slots",
    "validate_slot_shapes",
]
