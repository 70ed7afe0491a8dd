"""Steering a model with SAE features: add a decoder direction, clamp or ablate a feature.

For feature ``f`` with decoder direction ``w = w_dec[f]`` at a write site with activation ``x``:

* ``add``:    ``x + s·w``
* ``clamp``:  ``x + (target − a_f)·w``, where ``a_f`` is the feature's activation computed from the SAE's
  input at its read site (for transcoders and CLTs, ``pre_feedforward_layernorm.output`` captured earlier in
  the same forward pass). The SAE's reconstruction error is kept.
* ``ablate``: clamp to 0.

With ``error="replace"`` the activation at every steered position is replaced by the SAE's reconstruction
plus the same change, i.e. the reconstruction error is dropped (what a "spliced-in SAE" does).

Cross-layer transcoders write into every layer the feature decodes to. Hooks act only on the rows they are
told to (the steered row of a baseline + steered batch) and only on forwards run by the thread that
installed them, so a plain forward elsewhere in the process is never steered.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.gemma.hooks import HookFn
from gemscope_widgets.backend.gemma.sites import Site, resolve_site
from gemscope_widgets.errors import FeatureIndexError, GemscopeError, SteeringError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

MODES = ("add", "clamp", "ablate")
POSITIONS = ("all", "prompt", "generated")
ERROR_MODES = ("keep", "replace")


# One steered run at a time per model: hooks are module-wide, so two runs must not overlap.
_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(gm: GemmaModel) -> threading.Lock:
    """The lock that serialises steered runs (and their scale measurements) on ``gm``'s model."""
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(gm.model)
        if lock is None:
            lock = _MODEL_LOCKS[gm.model] = threading.Lock()
        return lock


@dataclass(frozen=True)
class SteeringSpec:
    """One feature to steer.

    ``strength`` is in the SAE's activation units: the coefficient of ``w_dec[f]`` for ``add``, the target
    activation for ``clamp``, ignored for ``ablate``. ``positions``: ``"all"``, ``"prompt"`` (prompt tokens
    only) or ``"generated"`` (tokens produced by generation; the first new token is still predicted from the
    unsteered prompt). ``sae`` picks the SAE when a run steers with several; None means the run's SAE.
    """

    feature: int
    strength: float = 0.0
    mode: str = "add"
    positions: str = "all"
    sae: Any = field(default=None, compare=False)

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
    if spec.mode in ("clamp", "ablate") and sae.config.kind == "crosscoder" and len(sae.config.layers_in) > 1:
        raise SteeringError(
            f"{sae.config.name} is a crosscoder reading several layers: a feature's activation needs later "
            "layers than the ones it writes to, so it cannot be clamped during the forward pass. Use mode='add'."
        )
    return replace(spec, feature=feature, strength=strength, sae=sae)


def normalize_steering(steering: Any, sae: Any = None) -> list[SteeringSpec]:
    """Validate ``{feature: strength}``, one :class:`SteeringSpec` or a list of them (or of dicts).

    Raises :class:`SteeringError` / :class:`FeatureIndexError` before any model is touched.
    """
    if steering is None:
        return []
    items: Iterable[Any]
    if isinstance(steering, SteeringSpec):
        items = [steering]
    elif isinstance(steering, Mapping):
        items = [SteeringSpec(feature=f, strength=s) for f, s in steering.items()]
    elif isinstance(steering, Sequence) and not isinstance(steering, (str, bytes)):
        items = steering
    else:
        raise SteeringError(
            f"steering must be {{feature: strength}} or a list of SteeringSpec, got {type(steering).__name__}."
        )
    specs = []
    for item in items:
        if isinstance(item, Mapping):
            try:
                item = SteeringSpec(**item)
            except TypeError as exc:
                raise SteeringError(
                    f"Bad steering entry {dict(item)!r}: {exc}. Keys: feature, strength, mode, positions, sae."
                ) from None
        if not isinstance(item, SteeringSpec):
            raise SteeringError(f"Each steering entry must be a SteeringSpec or a dict, got {item!r}.")
        specs.append(_check_spec(item, sae))
    return specs


class StepState:
    """What the hooks need to know about the forward pass being run, set by the caller before each one.

    ``start``: absolute position of the first token of this forward; ``special``: ``[B, t]`` bool, tokens not
    steered (BOS, chat template) unless special tokens are steered; ``rows``: the batch rows to steer;
    ``enabled``: False turns the hooks off for a pass (the baseline row when rows run one at a time).
    """

    def __init__(self, prompt_len: int, rows: slice | None = None) -> None:
        self.prompt_len = prompt_len
        self.rows = rows if rows is not None else slice(None)
        self.start = 0
        self.special: torch.Tensor | None = None
        self.enabled = True
        self.inputs: dict[str, torch.Tensor] = {}

    def begin(self, start: int, special: torch.Tensor | None) -> None:
        """Called before each forward: where it starts and which of its tokens are special."""
        self.start = start
        self.special = special
        self.inputs.clear()

    def mask(self, positions: str, t: int, device: torch.device) -> torch.Tensor:
        """``[B_rows, t]`` float mask of the positions a spec with ``positions`` acts on in this forward."""
        pos = torch.arange(self.start, self.start + t, device=device)
        if positions == "prompt":
            keep = pos < self.prompt_len
        elif positions == "generated":
            keep = pos >= self.prompt_len
        else:
            keep = torch.ones(t, dtype=torch.bool, device=device)
        keep = keep.unsqueeze(0)
        if self.special is not None:
            keep = keep & ~self.special[self.rows].to(device)
        return keep.to(torch.float32)


@dataclass
class _Write:
    spec: SteeringSpec
    direction: torch.Tensor  # [d_out] float32


@dataclass
class _WriteSite:
    site: Site
    writes: list[_Write]
    saes: list[Any]


class SteeringPlan:
    """The hooks that carry out a list of specs on one model; use :meth:`pairs` with ``hooks.hooked``."""

    def __init__(
        self,
        gm: GemmaModel,
        specs: Sequence[SteeringSpec],
        state: StepState,
        *,
        error: str = "keep",
        steer_special_tokens: bool = False,
    ) -> None:
        if error not in ERROR_MODES:
            raise SteeringError(f"error={error!r} is not known: use 'keep' (keep the SAE error) or 'replace'.")
        self.gm, self.specs, self.state, self.error = gm, list(specs), state, error
        self.steer_special_tokens = steer_special_tokens
        self._write_sites: dict[str, _WriteSite] = {}
        self._read_points: dict[str, Site] = {}
        for spec in self.specs:
            sae = spec.sae
            if error == "replace" and sae.config.kind == "crosscoder" and len(sae.config.layers_in) > 1:
                raise SteeringError(
                    f"error='replace' needs {sae.config.name}'s reconstruction, which reads later layers than "
                    "it writes to; a crosscoder cannot be spliced in during the forward pass. Use error='keep'."
                )
            for hook_point, direction in sae.write_directions(spec.feature).items():
                entry = self._write_sites.get(hook_point)
                if entry is None:
                    entry = _WriteSite(resolve_site(gm, hook_point), [], [])
                    self._write_sites[hook_point] = entry
                entry.writes.append(_Write(spec, direction.detach().to(gm.device, torch.float32)))
                if all(s is not sae for s in entry.saes):
                    entry.saes.append(sae)
            if spec.mode != "add" or error == "replace":
                for hook_point in sae.read_hook_points:
                    if hook_point not in self._read_points:
                        self._read_points[hook_point] = resolve_site(gm, hook_point)

    def pairs(self) -> list[tuple[Site, HookFn]]:
        """(site, fn) pairs: input captures first (they run earlier in the forward), then the writes."""
        out: list[tuple[Site, HookFn]] = []
        for hook_point, site in self._read_points.items():
            if hook_point in self._write_sites:
                continue  # the write hook sees the same tensor before changing it
            out.append((site, self._capture(hook_point)))
        for hook_point, entry in self._write_sites.items():
            out.append((entry.site, self._steer(hook_point, entry)))
        return out

    def _active(self) -> bool:
        # Other threads' forwards never reach these hooks (hooks.hooked is thread-owned).
        return self.state.enabled

    def _capture(self, hook_point: str) -> HookFn:
        def fn(x: torch.Tensor) -> None:
            if self._active():
                self.state.inputs[hook_point] = x[self.state.rows].detach()

        return fn

    def _input(self, hook_point: str, sae: Any, feature: int | None = None) -> dict[str, torch.Tensor]:
        needed = list(sae.read_hook_points)
        if feature is not None and sae.config.kind == "clt":
            needed = [needed[sae.feature_slot(feature)[0]]]  # a CLT feature reads its own layer only
        elif feature is None and sae.config.kind == "clt":
            needed = [h for h in needed if h in self.state.inputs]  # later layers cannot write here
        missing = [h for h in needed if h not in self.state.inputs]
        if missing:
            raise GemscopeError(
                f"Steering {sae.config.name} needs the activation at {missing[0]} before {hook_point}, but it "
                "was not computed in this forward pass."
            )
        return {h: self.state.inputs[h] for h in needed}

    def _reconstruction(self, sae: Any, hook_point: str, xs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The SAE's reconstruction ``[B_rows, t, d_out]`` at ``hook_point`` from the unsteered inputs."""
        kind = sae.config.kind
        if kind in ("sae", "transcoder"):
            x = xs[sae.config.hook_in]
            return sae.decode(sae.encode(x), x)
        # CLT / crosscoder: stack the slots; a slot not computed yet (a later layer) cannot write here.
        points = sae.read_hook_points
        like = next(iter(xs.values()))
        stacked = torch.stack([xs[h].float() if h in xs else torch.zeros_like(like, dtype=torch.float32)
                               for h in points], dim=-2)
        slot = sae.config.hook_points_out.index(hook_point)
        return sae.decode(sae.encode(stacked), stacked)[..., slot, :]

    def _steer(self, hook_point: str, entry: _WriteSite) -> HookFn:
        def fn(x: torch.Tensor) -> torch.Tensor | None:
            if not self._active():
                return None
            state = self.state
            if hook_point in self._read_points:
                state.inputs[hook_point] = x[state.rows].detach()
            rows = x[state.rows].float()
            t = rows.shape[-2]
            delta = torch.zeros_like(rows)
            union = torch.zeros(rows.shape[:-1], dtype=torch.float32, device=rows.device)
            for write in entry.writes:
                spec = write.spec
                mask = state.mask(spec.positions, t, rows.device).expand(rows.shape[:-1])
                union = torch.maximum(union, mask)
                if spec.mode == "add":
                    coef = mask * spec.strength
                else:
                    a_f = spec.sae.feature_activation(spec.feature, self._input(hook_point, spec.sae, spec.feature))
                    coef = mask * (spec.target - a_f.to(rows.device))
                delta = delta + coef.unsqueeze(-1) * write.direction
            if self.error == "replace":
                base = rows.clone()
                for sae in entry.saes:
                    if len(entry.saes) > 1:
                        raise SteeringError(
                            f"error='replace' with several SAEs writing to {hook_point} is ambiguous; steer "
                            "one SAE per site or use error='keep'."
                        )
                    recon = self._reconstruction(sae, hook_point, self._input(hook_point, sae)).to(rows.device)
                    u = union.unsqueeze(-1)
                    base = u * recon + (1 - u) * rows
                new_rows = base + delta
            else:
                new_rows = rows + delta
            out = x.clone()
            out[state.rows] = new_rows.to(x.dtype)
            return out

        return fn


def typical_scales(
    gm: GemmaModel, sae: Any, features: Sequence[int], prompt_ids: torch.Tensor | None = None, stats: Any = None
) -> dict[int, tuple[float, str]]:
    """Each feature's strength unit (its typical maximum activation) and where it came from.

    In order: the feature statistics' ``max_act`` (a corpus scan) when present and positive; else the
    feature's maximum over the prompt's non-BOS tokens; else ``"site norm"``: the median norm of the
    activation at the feature's write site over the prompt divided by ``|w_dec[f]|``, so that ``1×`` adds a
    vector as long as a typical activation there (a push big enough to matter, never a vanishing one).
    """
    features = [sae.check_feature(f) for f in features]
    out: dict[int, tuple[float, str]] = {}
    max_act = getattr(stats, "max_act", None) if stats is not None else None
    todo = []
    for f in features:
        if max_act is not None and f < len(max_act) and float(max_act[f]) > 0:
            out[f] = (float(max_act[f]), "stats")
        else:
            todo.append(f)
    if not todo:
        return out
    if prompt_ids is None:
        for f in todo:
            out[f] = (1.0, "raw")
        return out
    from gemscope_widgets.backend.gemma.capture import capture

    ids = prompt_ids.reshape(-1)
    write_points = {hp for f in todo for hp in sae.write_directions(f)}
    with model_lock(gm):
        acts = capture(gm, ids, [*sae.read_hook_points, *write_points])
    body = slice(1, None) if ids.shape[0] > 1 else slice(None)  # BOS activations are huge outliers
    xs = {h: acts[h][0, body] for h in sae.read_hook_points}
    for f in todo:
        peak = float(sae.feature_activation(f, xs).max())
        if peak > 0:
            out[f] = (peak, "prompt")
            continue
        norms = []
        for hp, direction in sae.write_directions(f).items():
            site_norm = acts[hp][0, body].float().norm(dim=-1).median()
            norms.append(float(site_norm) / max(float(direction.float().norm()), 1e-12))
        out[f] = (float(sum(norms) / len(norms)), "site norm")
    return out
