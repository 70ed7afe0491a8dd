"""How steering is carried out: the forward hooks that apply a list of specs during a forward pass.

:class:`SteeringPlan` turns validated specs (:mod:`~gemscope_widgets.backend.steering.spec`) into
``(site, fn)`` pairs for :func:`~gemscope_widgets.backend.gemma.hooks.hooked`; :class:`StepState` tells the
hooks which positions and batch rows the current forward covers. Hooks act only on the rows they are told to
(the steered row of a baseline + steered batch) and only on forwards run by the thread that installed them,
so a plain forward elsewhere in the process is never steered.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.dictionaries.placement import require_model_device
from gemscope_widgets.backend.gemma.hooks import HookFn
from gemscope_widgets.backend.gemma.sites import Site, resolve_site
from gemscope_widgets.backend.steering.spec import ERROR_MODES, DirectionSpec, Spec, SteeringSpec, normalize_steering
from gemscope_widgets.errors import GemscopeError, SteeringError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel


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

    def mask(self, positions: str, t: int, device: torch.device, *, special: bool = False) -> torch.Tensor:
        """``[B_rows, t]`` (or ``[1, t]``) float mask of the positions a spec with ``positions`` acts on in this
        forward; special tokens are left out unless ``special`` (or special tokens are steered)."""
        pos = torch.arange(self.start, self.start + t, device=device)
        if positions == "prompt":
            keep = pos < self.prompt_len
        elif positions == "generated":
            keep = pos >= self.prompt_len
        else:
            keep = torch.ones(t, dtype=torch.bool, device=device)
        keep = keep.unsqueeze(0)
        if self.special is not None and not special:
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


@dataclass
class _Ablation:
    basis: torch.Tensor  # [d_model, k] orthonormal float32: the span of the ablated directions
    fraction: float
    positions: str


def residual_sites(gm: GemmaModel) -> list[Site]:
    """Every place the residual stream is written: the embedding output, then per layer the attention block's
    contribution (``post_attention_layernorm`` output, when the layer has one) and the layer's output."""
    sites = [Site(hook_point="model.embed_tokens.output", layer=-1, module=gm.embed, kind="output")]
    for i, layer in enumerate(gm.layers):
        if isinstance(getattr(layer, "post_attention_layernorm", None), torch.nn.Module):
            sites.append(resolve_site(gm, f"model.layers.{i}.post_attention_layernorm.output"))
        sites.append(resolve_site(gm, f"model.layers.{i}.output"))
    return sites


def _span(directions: Sequence[torch.Tensor]) -> torch.Tensor:
    """An orthonormal basis ``[d, k]`` of the directions' span (dependent directions add nothing)."""
    u, sv, _ = torch.linalg.svd(torch.stack(list(directions), dim=1), full_matrices=False)
    basis: torch.Tensor = u[:, sv > sv.max() * 1e-6].contiguous()
    return basis


class SteeringPlan:
    """The hooks that carry out a list of specs on one model; use :meth:`pairs` with ``hooks.hooked``."""

    def __init__(
        self,
        gm: GemmaModel,
        specs: Sequence[Spec],
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
        self._adds: dict[int, list[tuple[DirectionSpec, torch.Tensor]]] = {}
        self._ablations: list[_Ablation] = []
        directions = normalize_steering([s for s in self.specs if isinstance(s, DirectionSpec)], model=gm)
        groups: dict[tuple[str, float], list[torch.Tensor]] = {}
        for d in directions:
            if not isinstance(d, DirectionSpec):
                continue
            if d.mode == "add":
                assert d.layer is not None
                self._adds.setdefault(d.layer, []).append((d, d.direction.to(gm.device)))
            elif d.strength > 0:
                groups.setdefault((d.positions, d.strength), []).append(d.direction)
        for (positions, fraction), vectors in groups.items():
            self._ablations.append(_Ablation(_span(vectors).to(gm.device), fraction, positions))
        for spec in self.specs:
            if not isinstance(spec, SteeringSpec):
                continue
            sae = spec.sae
            if spec.mode != "add" or error == "replace":  # the SAE itself runs at every step
                require_model_device(sae, gm, f"steering feature {spec.feature} ({spec.mode})")
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
        for layer, adds in self._adds.items():
            out.append((resolve_site(self.gm, f"model.layers.{layer}.output"), self._add_directions(adds)))
        if self._ablations:  # last at every site: the stream keeps no component along an ablated direction
            out.extend((site, self._ablate()) for site in residual_sites(self.gm))
        return out

    def _add_directions(self, adds: list[tuple[DirectionSpec, torch.Tensor]]) -> HookFn:
        def fn(x: torch.Tensor) -> torch.Tensor | None:
            if not self._active():
                return None
            rows = x[self.state.rows].float()
            for spec, r in adds:
                mask = self.state.mask(spec.positions, rows.shape[-2], rows.device)
                rows = rows + (mask * spec.strength).unsqueeze(-1) * r
            out = x.clone()
            out[self.state.rows] = rows.to(x.dtype)
            return out

        return fn

    def _ablate(self) -> HookFn:
        def fn(x: torch.Tensor) -> torch.Tensor | None:
            if not self._active():
                return None
            rows = x[self.state.rows].float()
            for ab in self._ablations:
                mask = self.state.mask(ab.positions, rows.shape[-2], rows.device, special=True)
                component = (rows @ ab.basis) @ ab.basis.T
                rows = rows - (mask * ab.fraction).unsqueeze(-1) * component
            out = x.clone()
            out[self.state.rows] = rows.to(x.dtype)
            return out

        return fn

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
            out: torch.Tensor = sae.decode(sae.encode(x), x)
            return out
        # CLT / crosscoder: stack the slots; a slot not computed yet (a later layer) cannot write here.
        points = sae.read_hook_points
        like = next(iter(xs.values()))
        stacked = torch.stack([xs[h].float() if h in xs else torch.zeros_like(like, dtype=torch.float32)
                               for h in points], dim=-2)
        slot = sae.config.hook_points_out.index(hook_point)
        stacked_out: torch.Tensor = sae.decode(sae.encode(stacked), stacked)
        return stacked_out[..., slot, :]

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

