"""What to steer: SAE features (:class:`SteeringSpec`) and residual-stream directions (:class:`DirectionSpec`).

Feature steering, for feature ``f`` with decoder direction ``w = w_dec[f]`` at a write site with activation ``x``:

* ``add``:    ``x + s·w``
* ``clamp``:  ``x + (target − a_f)·w``, where ``a_f`` is the feature's activation computed from the SAE's
  input at its read site (for transcoders and CLTs, ``pre_feedforward_layernorm.output`` captured earlier in
  the same forward pass). The SAE's reconstruction error is kept.
* ``ablate``: clamp to 0.

With ``error="replace"`` the activation at every steered position is replaced by the SAE's reconstruction
plus the same change, i.e. the reconstruction error is dropped (what a "spliced-in SAE" does).
Cross-layer transcoders write into every layer the feature decodes to.

Direction steering, for a direction ``r`` in the residual stream (``[d_model]``, normalised here to the unit
vector ``r̂``, float32), as in Arditi et al. 2024, "Refusal in Language Models Is Mediated by a Single
Direction" (arXiv:2406.11717):

* ``mode="ablate"`` (directional ablation): ``x ← x − s·(x·r̂) r̂`` on the whole residual stream: at the
  embedding output, at the output of every layer's attention block (``post_attention_layernorm``, so the
  stream between attention and MLP is clean too) and at every layer's output, at every position of the
  steered row, special tokens included. ``s = strength`` in [0, 1] is the removed fraction (1, the default,
  leaves no component along ``r̂`` anywhere; smaller values give ablation sweeps). Ablation runs after any
  other steering at a site, so the stream stays clean whatever else is added.
* ``mode="add"`` (activation addition): ``x ← x + α·r̂`` at the output of decoder layer ``layer``
  (``model.layers.{layer}.output``, the residual stream a Gemma Scope ``resid_post`` SAE reads), at the
  chosen positions; ``α = strength`` is in residual-stream units (the length of the added vector, since
  ``|r̂| = 1``). Special tokens follow the same rule as feature steering.

Strengths, everywhere steering is accepted (``generate``, ``next_token_probs``, ``Scope.generate``,
``Scope.steer``, ``Scope.chat``, the steering session and widget), are read in the run's ``unit``:
``"typical"`` (the default) is a multiple of each entry's stable unit
(:func:`~gemscope_widgets.backend.steering.units.strength_unit`: a feature's p99 activation, an added
direction's length, an ablation's fraction), ``"raw"`` the value as given (activation or residual-stream
units). So ``{feature: 2.0}`` means 2× the feature's unit in every entry point. A spec may carry its own
``unit``, which wins over the run's: the specs a session or a generation result hands back say
``unit="raw"``, so passing them anywhere again steers exactly as much.

The API, for code that computes directions (e.g. a difference of means)::

    from gemscope_widgets import DirectionSpec, generate

    ablate = DirectionSpec(r, mode="ablate")                   # r: [d_model] tensor / array / list
    add = DirectionSpec(r, mode="add", strength=2.0, layer=6)  # 2x r's length at model.layers.6.output
    raw = DirectionSpec(r, mode="add", strength=8.0, layer=6, unit="raw")  # 8 residual-stream units
    result = generate(gm, prompt, [ablate])                    # baseline row unsteered, steered row ablated
    scope.generate(prompt, [add, SteeringSpec(123, 1.0)])      # mixed with SAE features

``direction`` may also be any object with a ``direction`` attribute (``[d_model]``); its ``layer`` attribute
(if any) is the default ``layer`` for ``add`` and its ``name`` (if any) the default label. Specs go anywhere
steering is accepted: ``generate``, ``next_token_probs``, ``Scope.generate`` and the steering widget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.errors import FeatureIndexError, SteeringError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

MODES = ("add", "clamp", "ablate")
DIRECTION_MODES = ("ablate", "add")
POSITIONS = ("all", "prompt", "generated")
ERROR_MODES = ("keep", "replace")
UNITS = ("typical", "raw")
"""``"typical"``: multiples of each feature's (or direction's) stable unit; ``"raw"``: the values as given."""


def check_unit(unit: Any) -> str:
    """``unit`` if it is one of :data:`UNITS`, else a SteeringError that names them."""
    if not isinstance(unit, str) or unit not in UNITS:
        raise SteeringError(
            f"Unknown steering unit {unit!r}: use 'typical' (multiples of each feature's or direction's stable "
            "unit, the default) or 'raw' (the values as given)."
        )
    return unit


@dataclass(frozen=True)
class SteeringSpec:
    """One feature to steer.

    ``strength``, in ``unit`` (None: the run's unit, ``"typical"`` unless the call says otherwise): the
    coefficient of ``w_dec[f]`` for ``add``, the target activation for ``clamp``, ignored for ``ablate``; in
    raw activation units once :func:`~gemscope_widgets.backend.steering.units.to_raw` has converted it (then
    ``unit="raw"``). ``positions``: ``"all"``, ``"prompt"`` (prompt tokens only) or ``"generated"`` (tokens
    produced by generation; the first new token is still predicted from the unsteered prompt). ``sae`` picks
    the SAE when a run steers with several; None means the run's SAE.
    """

    feature: int
    strength: float = 0.0
    mode: str = "add"
    positions: str = "all"
    sae: Any = field(default=None, compare=False)
    unit: str | None = None

    @property
    def target(self) -> float:
        """The activation value a clamp sets (0 for ablate)."""
        return 0.0 if self.mode == "ablate" else float(self.strength)


def _check_spec(spec: SteeringSpec, default_sae: Any) -> SteeringSpec:
    sae = spec.sae if spec.sae is not None else default_sae
    if sae is None:
        raise SteeringError(
            f"Steering feature {spec.feature!r} needs an SAE: pass sae=... (or SteeringSpec(..., sae=sae))."
        )
    if not hasattr(sae, "write_directions") or not hasattr(sae, "config"):
        raise SteeringError(f"{type(sae).__name__} is not a loaded SAE: load one with load_sae(...).")
    if isinstance(spec.feature, bool):
        raise FeatureIndexError(f"Feature index {spec.feature!r} is a bool, not an integer feature index.")
    feature = sae.check_feature(spec.feature)
    if spec.mode not in MODES:
        raise SteeringError(f"Unknown steering mode {spec.mode!r} for feature {feature}: use one of {MODES}.")
    if spec.positions not in POSITIONS:
        raise SteeringError(
            f"Unknown positions {spec.positions!r} for feature {feature}: use one of {POSITIONS}."
        )
    try:
        strength = float(spec.strength)
    except (TypeError, ValueError):
        raise SteeringError(
            f"Strength {spec.strength!r} for feature {feature} is not a number; pass a finite float."
        ) from None
    if not math.isfinite(strength):
        raise SteeringError(f"Strength {strength} for feature {feature} is not finite; pass a finite float.")
    if spec.unit is not None:
        check_unit(spec.unit)
    if spec.mode in ("clamp", "ablate") and sae.config.kind == "crosscoder" and len(sae.config.layers_in) > 1:
        raise SteeringError(
            f"{sae.config.name} is a crosscoder reading several layers: a feature's activation needs later "
            "layers than the ones it writes to, so it cannot be clamped during the forward pass. Use mode='add'."
        )
    return replace(spec, feature=feature, strength=strength, sae=sae)


@dataclass(frozen=True)
class DirectionSpec:
    """A residual-stream direction to ablate or add (see the module docstring for the arithmetic).

    ``direction``: ``[d_model]`` tensor, array or list (normalised to unit length, float32), or an object with
    a ``direction`` attribute (and optionally ``layer`` and ``name``). ``mode``: ``"ablate"`` (every layer,
    every position; ``strength`` in [0, 1] is the removed fraction) or ``"add"`` (``strength`` × unit vector
    at the output of decoder layer ``layer``). ``positions``: ``"all"``, ``"prompt"`` or ``"generated"``.
    ``name``: a label for views. ``length``: the direction's natural length, the ``"typical"`` unit of ``add``
    strengths (default: the object's ``norm`` attribute, e.g. a mean difference's norm, else the length of the
    vector given). ``unit``: as :class:`SteeringSpec`'s (None: the run's). After :func:`normalize_steering`,
    ``direction`` is the unit ``[d_model]`` float32 tensor on the CPU and ``layer``, ``name`` and ``length``
    are filled in.
    """

    direction: Any = field(compare=False)
    mode: str = "ablate"
    strength: float = 1.0
    layer: int | None = None
    positions: str = "all"
    name: str = ""
    length: float | None = field(default=None, compare=False)
    unit: str | None = None

    @property
    def label(self) -> str:
        """``name`` or ``"direction"``, with the mode: ``"refusal (ablate)"``."""
        return f"{self.name or 'direction'} ({self.mode})"


Spec = SteeringSpec | DirectionSpec


def unit_direction(direction: Any, d_model: int | None = None) -> torch.Tensor:
    """``direction`` (or its ``.direction``) as a unit ``[d_model]`` float32 CPU tensor; SteeringError if it is
    not a finite, non-zero vector of that length."""
    r = _vector(direction, d_model)
    unit: torch.Tensor = r / r.norm()
    return unit


def _vector(direction: Any, d_model: int | None) -> torch.Tensor:
    vector = getattr(direction, "direction", direction)
    try:
        r = torch.as_tensor(vector.detach().cpu() if isinstance(vector, torch.Tensor) else vector,
                            dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise SteeringError(
            f"A steering direction must be a [d_model] vector (tensor, array or list), got {type(vector).__name__}."
        ) from None
    r = r.squeeze()
    if r.dim() != 1:
        raise SteeringError(f"A steering direction must be one vector [d_model], got shape {tuple(r.shape)}.")
    if d_model is not None and r.shape[0] != d_model:
        raise SteeringError(
            f"The steering direction has {r.shape[0]} entries but the model's residual stream has {d_model}: "
            "compute the direction on this model."
        )
    if not bool(torch.isfinite(r).all()):
        raise SteeringError("The steering direction has NaN or infinite entries.")
    if float(r.norm()) == 0.0:
        raise SteeringError("The steering direction is the zero vector; it has no direction to steer along.")
    return r


def _check_direction(spec: DirectionSpec, gm: GemmaModel | None) -> DirectionSpec:
    source = spec.direction
    d_model = gm.d_model if gm is not None else None
    if spec.mode not in DIRECTION_MODES:
        raise SteeringError(f"Unknown direction mode {spec.mode!r}: use one of {DIRECTION_MODES}.")
    if spec.positions not in POSITIONS:
        raise SteeringError(f"Unknown positions {spec.positions!r} for a direction: use one of {POSITIONS}.")
    vector = _vector(source, d_model)
    r = vector / vector.norm()
    length = spec.length
    if length is None:
        attr = getattr(source, "norm", None)  # a tensor's .norm is a method, a direction object's a number
        length = float(attr) if isinstance(attr, (int, float)) and not isinstance(attr, bool) else float(vector.norm())
    try:
        strength = float(spec.strength)
    except (TypeError, ValueError):
        raise SteeringError(f"Direction strength {spec.strength!r} is not a number; pass a finite float.") from None
    if not math.isfinite(strength):
        raise SteeringError(f"Direction strength {strength} is not finite; pass a finite float.")
    if spec.unit is not None:
        check_unit(spec.unit)
    name = spec.name or str(getattr(source, "name", "") or "")
    layer = spec.layer
    if spec.mode == "ablate":
        if layer is not None:
            raise SteeringError(
                "Direction ablation acts on every layer (as in Arditi et al. 2024); layer= is for mode='add'."
            )
        if not 0.0 <= strength <= 1.0:
            raise SteeringError(
                f"An ablation's strength is the fraction of the component removed, in [0, 1]; got {strength}."
            )
    else:
        if layer is None:
            layer = getattr(source, "layer", None)
        if layer is None:
            raise SteeringError("Adding a direction needs the layer to add it at: DirectionSpec(..., layer=L).")
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise SteeringError(f"The direction's layer must be an integer, got {layer!r}.")
        if gm is not None and not 0 <= layer < gm.n_layers:
            raise SteeringError(f"Layer {layer} is out of range: {gm.name} has layers 0–{gm.n_layers - 1}.")
    return replace(spec, direction=r, strength=strength, layer=layer, name=name, length=length)


def in_unit(steering: Any, unit: str) -> list[Any]:
    """``steering`` (as :func:`normalize_steering` takes it) as a list whose every entry says its unit: entries
    without one get ``unit``; nothing else is checked or bound (features stay with the run's SAE)."""
    check_unit(unit)
    if steering is None:
        return []
    if isinstance(steering, Mapping):
        return [SteeringSpec(feature=f, strength=s, unit=unit) for f, s in steering.items()]
    items = [steering] if isinstance(steering, (SteeringSpec, DirectionSpec)) else steering
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        normalize_steering(items)  # raises the usual error for a wrong type
    out: list[Any] = []
    for item in items:
        if isinstance(item, (SteeringSpec, DirectionSpec)) and item.unit is None:
            item = replace(item, unit=unit)
        elif isinstance(item, Mapping) and item.get("unit") is None:
            item = {**item, "unit": unit}
        out.append(item)
    return out


def normalize_steering(steering: Any, sae: Any = None, *, model: GemmaModel | None = None) -> list[Spec]:
    """Validate ``{feature: strength}``, one spec, or a list of :class:`SteeringSpec` / :class:`DirectionSpec`
    (or of dicts: a dict with a ``direction`` key is a direction). Strengths stay as given, in their unit
    (see the module docstring; :func:`~gemscope_widgets.backend.steering.units.to_raw` converts them).

    ``model``, when given, checks each direction's length and layer against it. Raises
    :class:`SteeringError` / :class:`FeatureIndexError` before any model is touched.
    """
    if steering is None:
        return []
    items: Iterable[Any]
    if isinstance(steering, (SteeringSpec, DirectionSpec)):
        items = [steering]
    elif isinstance(steering, Mapping):
        items = [SteeringSpec(feature=f, strength=s) for f, s in steering.items()]
    elif isinstance(steering, Sequence) and not isinstance(steering, (str, bytes)):
        items = steering
    else:
        raise SteeringError(
            "steering must be {feature: strength} or a list of SteeringSpec / DirectionSpec, "
            f"got {type(steering).__name__}."
        )
    specs: list[Spec] = []
    for item in items:
        if isinstance(item, Mapping):
            kind, keys = (
                (DirectionSpec, "direction, mode, strength, layer, positions, name, unit")
                if "direction" in item
                else (SteeringSpec, "feature, strength, mode, positions, sae, unit")
            )
            try:
                item = kind(**item)
            except TypeError as exc:
                raise SteeringError(f"Bad steering entry {dict(item)!r}: {exc}. Keys: {keys}.") from None
        if isinstance(item, DirectionSpec):
            specs.append(_check_direction(item, model))
        elif isinstance(item, SteeringSpec):
            specs.append(_check_spec(item, sae))
        else:
            raise SteeringError(
                f"Each steering entry must be a SteeringSpec, a DirectionSpec or a dict, got {item!r}."
            )
    return specs
