"""A steering session: one prompt, a list of steering entries, and the latest-wins generation runner.

The session holds what the steering view shows (features and directions, each with a strength in multiples of
its unit, :func:`~gemscope_widgets.backend.steering.units.strength_unit`) and runs baseline + steered
generation as jobs of the backend's runner (:mod:`gemscope_widgets.backend.jobs`, latest wins): every
:meth:`SteeringSession.run` cancels the running generation (checked before every token step) and queues the new
one; a generation id guards every event, so a listener only ever hears about the latest generation. It works
from a script as well as behind a widget::

    session = SteeringSession(gm, "The capital of France is", {123: 2.0}, sae=sae, max_new_tokens=16)
    session.run()
    result = session.wait()          # GenerationResult of the latest run
    session.set_strength(123, -1.0)  # cancels nothing here (the run ended), starts the next one
    session.generate()               # or run synchronously in this thread

Listeners (:class:`SessionListener`) are called on the worker thread, with the session's lock held, only for
the current generation.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.backend.jobs import Job, JobListener, JobRunner
from gemscope_widgets.backend.steering.generation import (
    GenerationResult,
    check_settings,
    generate,
    next_token_distribution,
)
from gemscope_widgets.backend.steering.spec import (
    ERROR_MODES,
    DirectionSpec,
    Spec,
    SteeringSpec,
    check_unit,
    normalize_steering,
)
from gemscope_widgets.backend.steering.units import StrengthUnit, strength_unit
from gemscope_widgets.errors import GemscopeError, JobCancelled, SteeringError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

DEFAULT_SETTINGS: dict[str, Any] = {
    "max_new_tokens": 32,
    "temperature": 0.0,
    "top_p": 1.0,
    "seed": 0,
    "frequency_penalty": 0.0,
    "stop_at_eos": True,
    "steer_special_tokens": False,
    "error": "keep",
}
"""Generation settings a session keeps (keywords of :func:`~gemscope_widgets.backend.steering.generation.generate`)."""
_BASELINE_SETTINGS = ("max_new_tokens", "temperature", "top_p", "seed", "frequency_penalty", "stop_at_eos")


def check_session_settings(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` updated with ``changes``, validated; SteeringError naming what is wrong otherwise."""
    unknown = set(changes) - set(DEFAULT_SETTINGS)
    if unknown:
        raise SteeringError(f"Unknown generation settings {sorted(unknown)}; known: {sorted(DEFAULT_SETTINGS)}.")
    merged = {**DEFAULT_SETTINGS, **current, **changes}
    check_settings(merged["max_new_tokens"], merged["temperature"], merged["top_p"], merged["frequency_penalty"],
                   merged["seed"])
    if merged["error"] not in ERROR_MODES:
        raise SteeringError(f"error={merged['error']!r}: use 'keep' or 'replace'.")
    return merged


def finite(value: Any, what: str) -> float:
    """``value`` as a finite float, or a SteeringError naming ``what``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SteeringError(f"The {what} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise SteeringError(f"The {what} must be finite, got {number}.")
    return number


@dataclass(frozen=True)
class Entry:
    """One steered feature or direction: ``spec`` with its strength in multiples of ``unit``."""

    key: int | str  # the feature index, or "d0", "d1", ... for directions
    spec: Spec
    unit: StrengthUnit

    @property
    def multiple(self) -> float:
        return float(self.spec.strength)

    @property
    def raw(self) -> float:
        """The strength in raw units (activation units for features, residual-stream units for directions)."""
        return self.multiple * self.unit.value

    def raw_spec(self) -> Spec:
        """The spec in raw units, saying so (``unit="raw"``): any entry point steers exactly as much with it."""
        return replace(self.spec, strength=self.raw, unit="raw")

    def describe(self) -> dict[str, Any]:
        """A plain dict for views: key, kind, label, multiple, mode, positions, scale, scale_source, unit_source,
        raw (and feature or layer)."""
        spec = self.spec
        out: dict[str, Any] = {
            "key": self.key,
            "multiple": self.multiple,
            "mode": spec.mode,
            "positions": spec.positions,
            "scale": self.unit.value,
            "scale_source": self.unit.kind,
            "unit_source": self.unit.source,
            "raw": self.raw,
        }
        if isinstance(spec, SteeringSpec):
            out.update(kind="feature", feature=spec.feature, label=f"#{spec.feature}")
        else:
            out.update(kind="direction", layer=spec.layer, label=spec.name or "direction")
        return out


class SessionListener:
    """What a view hears from a session (all no-ops here); called only for the current generation."""

    def session_started(self, gid: int, keep_baseline: bool) -> None:
        """A generation ``gid`` started; ``keep_baseline``: the baseline of the last one is still valid."""

    def session_token(self, gid: int, baseline: str | None, steered: str | None, divergence: int, step: int) -> None:
        """One decoding step: the new token strings (None for a row that has stopped) and the divergence so far
        (-1 while the rows agree)."""

    def session_finished(self, gid: int, result: GenerationResult, keep_baseline: bool) -> None:
        """The generation finished (or was cut by ``max_new_tokens`` / a stop token)."""

    def session_failed(self, gid: int, error: BaseException) -> None:
        """The generation raised."""


class SteeringSession:
    """Steering state for one prompt, and a latest-wins runner for its baseline + steered generation.

    ``prompt``: text, chat messages or token ids. ``steering``: ``{feature: strength}``, SteeringSpecs and
    DirectionSpecs, strengths in ``unit`` (``"typical"``: multiples of each entry's unit; ``"raw"``: raw values;
    a spec's own ``unit`` wins and is converted to the session's). ``sae``: the SAE whose features are steered
    (None for directions only). ``settings``: keys of :data:`DEFAULT_SETTINGS`.
    """

    def __init__(
        self,
        model: GemmaModel,
        prompt: Any,
        steering: Any = None,
        *,
        sae: Any = None,
        unit: str = "typical",
        listener: SessionListener | None = None,
        **settings: Any,
    ) -> None:
        self.model, self.sae, self.unit = model, sae, check_unit(unit)
        self.settings = check_session_settings({}, settings)
        self.prompt = model.prompt(prompt)
        self.listener = listener or SessionListener()
        self.entries: list[Entry] = []
        self.result: GenerationResult | None = None
        self._lock = threading.RLock()
        self._jobs = JobRunner("gemscope-steer")
        self._gen_id = 0
        self._result_id = -1
        self._done = threading.Event()
        self._done.set()
        self._exc: BaseException | None = None
        self._baseline_key: Any = None
        self._streamed: dict[str, list[int]] = {"b": [], "s": []}
        self._direction_ids = itertools.count()
        for spec in normalize_steering(steering, sae, model=model):
            self._append(spec)

    # --- entries ------------------------------------------------------------------------------------------

    @property
    def generation_id(self) -> int:
        """The id of the latest generation started (0 before the first)."""
        return self._gen_id

    def _append(self, spec: Spec) -> Entry:
        if isinstance(spec, SteeringSpec):
            # Features of the session's SAE are keyed by their index; another SAE's (Scope.generate with several
            # SAEs) by "<SAE name>#<index>".
            key: int | str = spec.feature if spec.sae is self.sae else f"{spec.sae.config.name}#{spec.feature}"
            if any(e.key == key for e in self.entries):
                raise SteeringError(f"Feature {spec.feature} is already steered here; move its slider instead.")
        else:
            key = f"d{next(self._direction_ids)}"
        if spec.unit is not None:  # a strength in its own unit becomes a multiple of the session's
            if spec.unit != self.unit:
                raw = spec.strength * strength_unit(self.model, spec, spec.unit).value
                spec = replace(spec, strength=raw / strength_unit(self.model, spec, self.unit).value)
            spec = replace(spec, unit=None)
        entry = Entry(key, spec, strength_unit(self.model, spec, self.unit))
        self.entries = [*self.entries, entry]
        return entry

    def entry(self, key: int | str) -> Entry:
        """The entry for a feature index or a direction key; SteeringError if it is not steered here."""
        for e in self.entries:
            if e.key == key:
                return e
        raise SteeringError(f"{_what(key)} is not steered here" + (
            f"; add it with add_feature({key})." if isinstance(key, int) else "."))

    def add_feature(self, feature: Any, multiple: float = 1.0, *, mode: str = "add", positions: str = "all") -> Entry:
        """Steers ``feature`` of the session's SAE at ``multiple`` of its unit (does not start a generation)."""
        if self.sae is None:
            raise SteeringError("This session has no SAE to take features from; pass sae=... when creating it.")
        spec = normalize_steering([SteeringSpec(feature, multiple, mode=mode, positions=positions)], self.sae)[0]
        with self._lock:
            return self._append(spec)

    def add_direction(self, direction: Any, multiple: float = 1.0, *, mode: str = "ablate", layer: int | None = None,
                      positions: str = "all", name: str = "") -> Entry:
        """Steers along a residual-stream direction (a vector, a direction object or a DirectionSpec)."""
        if isinstance(direction, DirectionSpec):
            spec = direction
        else:
            spec = DirectionSpec(direction, mode=mode, strength=multiple, layer=layer, positions=positions, name=name)
        with self._lock:
            return self._append(normalize_steering([spec], model=self.model)[0])

    def remove(self, key: int | str) -> None:
        """Stops steering a feature or direction."""
        with self._lock:
            self.entry(key)
            self.entries = [e for e in self.entries if e.key != key]

    def update(self, key: int | str, **changes: Any) -> Entry:
        """Changes an entry's ``multiple``, ``mode``, ``positions`` (or, for an added direction, ``layer``)."""
        allowed = {"multiple", "mode", "positions", "layer"}
        unknown = set(changes) - allowed
        if unknown:
            raise SteeringError(f"Cannot change {sorted(unknown)} of a steering entry; use {sorted(allowed)}.")
        if "multiple" in changes:
            changes["strength"] = finite(changes.pop("multiple"), f"strength of {_what(key)}")
        with self._lock:
            old = self.entry(key)
            spec = replace(old.spec, **changes)
            sae = spec.sae if isinstance(spec, SteeringSpec) else None
            checked = normalize_steering([spec], sae, model=self.model)[0]
            unit = old.unit if checked.mode == old.spec.mode else strength_unit(self.model, checked, self.unit)
            new = Entry(old.key, checked, unit)
            self.entries = [new if e.key == key else e for e in self.entries]
            return new

    def set_unit(self, unit: str) -> None:
        """Shows strengths in ``"typical"`` multiples or ``"raw"`` values; each entry keeps its raw strength."""
        check_unit(unit)
        with self._lock:
            self.unit = unit
            entries = []
            for e in self.entries:
                new_unit = strength_unit(self.model, e.spec, unit)
                entries.append(Entry(e.key, replace(e.spec, strength=e.raw / new_unit.value), new_unit))
            self.entries = entries

    def set_settings(self, **changes: Any) -> None:
        """Changes generation settings (keys of :data:`DEFAULT_SETTINGS`; does not start a generation)."""
        with self._lock:
            self.settings = check_session_settings(self.settings, changes)

    def specs(self) -> list[Spec]:
        """The current entries as specs in raw units, as :func:`generate` takes them."""
        return [e.raw_spec() for e in self.entries]

    # --- generation ---------------------------------------------------------------------------------------

    def generate(self, **kwargs: Any) -> GenerationResult:
        """Baseline and steered continuations now, in this thread (keywords: :func:`generate`'s, overriding the
        session's settings)."""
        return generate(self.model, self.prompt, self.specs() or None, sae=self.sae, unit="raw",
                        **{**self.settings, **kwargs})

    def _settings_key(self) -> tuple[Any, ...]:
        return tuple(self.settings[k] for k in _BASELINE_SETTINGS)

    def run(self) -> int:
        """Cancels the running generation and starts one with the current entries; returns its id."""
        with self._lock:
            specs, settings = self.specs(), dict(self.settings)
            self._gen_id += 1
            gid = self._gen_id
            keep_baseline = self._baseline_key == self._settings_key()
            self._done.clear()
            self._exc = None
            self._streamed = {"b": [], "s": []}
            self.listener.session_started(gid, keep_baseline)
            self._jobs.submit(functools.partial(self._generate, gid, specs, settings), key="generation",
                              listener=_GenerationEnd(self, gid, keep_baseline), name=f"generation {gid}")
        return gid

    def _generate(self, gid: int, specs: list[Spec], settings: dict[str, Any], job: Job) -> GenerationResult:
        return generate(self.model, self.prompt, specs or None, sae=self.sae, unit="raw", cancel=job.cancel_event,
                        on_token=functools.partial(self._stream, gid), **settings)

    def _stream(self, gid: int, step: int, base: int | None, steered: int | None) -> None:
        with self._lock:
            if gid != self._gen_id:
                return
            tok = self.model.tokenizer
            b, s = self._streamed["b"], self._streamed["s"]
            if base is not None:
                b.append(base)
            if steered is not None:
                s.append(steered)
            divergence = next((i for i, (x, y) in enumerate(zip(b, s)) if x != y), -1)
            self.listener.session_token(
                gid,
                None if base is None else token_strings(tok, [base])[0],
                None if steered is None else token_strings(tok, [steered])[0],
                divergence,
                step,
            )

    def _finish(self, gid: int, result: GenerationResult, keep_baseline: bool) -> None:
        with self._lock:
            if gid != self._gen_id:
                return
            self.result, self._result_id = result, gid
            self._baseline_key = self._settings_key()
            self.listener.session_finished(gid, result, keep_baseline)
            self._done.set()

    def _fail(self, gid: int, exc: BaseException) -> None:
        with self._lock:
            if gid != self._gen_id:
                return
            self._exc = exc
            self.listener.session_failed(gid, exc)
            self._done.set()

    def cancel(self) -> None:
        """Cancels the running generation (within one token step); the next :meth:`run` starts afresh."""
        self._jobs.cancel()

    def wait(self, timeout: float | None = 120.0) -> GenerationResult:
        """Blocks until the latest generation ends; returns its result or raises its error."""
        if not self._done.wait(timeout):
            raise GemscopeError(f"The generation did not finish within {timeout} s.")
        with self._lock:
            if self._exc is not None:
                raise self._exc
            if self.result is None:
                raise SteeringError("Nothing has been generated yet: call run() first.")
            return self.result

    def close(self) -> None:
        """Cancels any generation and lets the worker thread end."""
        self._jobs.close()

    # --- next-token view ----------------------------------------------------------------------------------

    def next_token(self, index: int, column: str = "steered", k: int = 8) -> dict[str, Any]:
        """Top-``k`` next-token probabilities, baseline vs steered, before continuation token ``index`` of
        ``column`` (``"steered"`` or ``"baseline"``) of the latest finished generation, under the current
        entries: ``{"column", "index", "context", "chosen", "tokens", "baseline", "steered"}``."""
        with self._lock:
            result, current = self.result, self._result_id == self._gen_id and self._done.is_set()
            specs, settings = self.specs(), dict(self.settings)
        if result is None:
            raise SteeringError("No finished generation yet: wait for it, then pick a token.")
        if not current:
            raise SteeringError("The continuation is being regenerated for the new settings; pick the token again "
                                "when it has finished.")
        if column not in ("steered", "baseline"):
            raise SteeringError(f"column={column!r}: use 'steered' or 'baseline'.")
        ids = result.steered_ids if column == "steered" else result.baseline_ids
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(ids):
            raise SteeringError(f"No token {index} in the {column} continuation (it has {len(ids)}).")
        view = next_token_distribution(
            self.model, self.prompt, specs or None, sae=self.sae, unit="raw", continuation=ids[:index], k=k,
            steer_special_tokens=settings["steer_special_tokens"], error=settings["error"],
        )
        return {
            "column": column,
            "index": index,
            "context": view.context_token,
            "chosen": token_strings(self.model.tokenizer, [ids[index]])[0],
            "tokens": view.tokens,
            "baseline": view.baseline,
            "steered": view.steered,
        }


class _GenerationEnd(JobListener):
    """Hands the end of generation ``gid``'s job to its session, which drops it unless ``gid`` is the latest."""

    def __init__(self, session: SteeringSession, gid: int, keep_baseline: bool) -> None:
        self.session, self.gid, self.keep_baseline = session, gid, keep_baseline

    def job_done(self, job: Job, result: GenerationResult) -> None:  # a cancelled generation ends here too
        self.session._finish(self.gid, result, self.keep_baseline)

    def job_failed(self, job: Job, error: BaseException) -> None:
        self.session._fail(self.gid, error)

    def job_cancelled(self, job: Job) -> None:  # cancelled before it started
        self.session._fail(self.gid, JobCancelled("The generation was cancelled before it started; run() again."))


def _what(key: int | str) -> str:
    return f"Feature {key}" if isinstance(key, int) else f"Direction {key!r}"
