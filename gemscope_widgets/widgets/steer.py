"""Steer: sliders per SAE feature, with the baseline and steered continuations streamed side by side.

Strength is shown as a multiple of the feature's typical maximum activation (see
:func:`~gemscope_widgets.backend.steering.spec.typical_scales` for where that unit comes from), with the raw value
beside it. Generation runs on one background worker thread per widget: every change cancels the running
generation (within one token step) and queues the new one; a generation id guards every update so a
superseded run never writes to the view.
"""

from __future__ import annotations

import math
import threading
from typing import Any, ClassVar

import anywidget
import traitlets

from gemscope_widgets.errors import GemscopeError, SteeringError

from .bundle import bundle_path
from .messages import MessageTable, parse_message

_BUNDLE = bundle_path("steer")

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
_IDLE_EXIT_S = 30.0


class Steer(anywidget.AnyWidget):
    """``scope.steer(prompt, {feature: multiple})``: one slider per feature, baseline vs steered text.

    Python API: :meth:`add_feature`, :meth:`remove_feature`, :meth:`set_strength`, :meth:`set_mode`,
    :meth:`set_positions`, :meth:`set_settings`, :meth:`show_next_token`; :meth:`wait` returns the latest
    :class:`~gemscope_widgets.backend.steering.generation.GenerationResult` (or raises its error).
    """

    _esm = _BUNDLE

    MESSAGES: ClassVar[MessageTable] = {
        "set": {"feature": (int,), "key": frozenset({"multiple", "mode", "positions"}), "value": (float, str)},
        "add": {"feature": (int,)},
        "remove": {"feature": (int,)},
        "settings": {"values": (dict,)},
        "range": {"min": (float,), "max": (float,)},
        "next": {"index": (int,), "column": frozenset({"baseline", "steered"})},
        "run": {},
    }
    """What the view sends (``SteerMessage`` in ``js/lib/protocol.ts``)."""

    sae_name = traitlets.Unicode("").tag(sync=True)
    """The SAE whose features are steered."""
    prompt_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The prompt's token strings (BOS and chat template included)."""
    prompt_special = traitlets.List(traitlets.Bool()).tag(sync=True)
    """Per prompt token: a special or chat-template token (not steered unless ``steer_special_tokens``)."""
    chat = traitlets.Bool(False).tag(sync=True)
    """Whether the prompt is chat messages rendered through the chat template."""
    features = traitlets.List(traitlets.Dict()).tag(sync=True)
    """``[{"feature", "multiple", "mode", "positions", "scale", "scale_source", "raw"}]``: ``raw`` is
    ``multiple × scale``, the value in the SAE's activation units; ``scale_source`` is "stats", "prompt",
    "site norm" or "raw"."""
    strength_range = traitlets.List(traitlets.Float(), default_value=[-3.0, 3.0]).tag(sync=True)
    """Slider range ``[min, max]`` in multiples."""
    settings = traitlets.Dict(dict(DEFAULT_SETTINGS)).tag(sync=True)
    """Generation settings: max_new_tokens, temperature (0 = greedy), top_p, seed, frequency_penalty,
    stop_at_eos, steer_special_tokens, error ("keep" the SAE error, or "replace" by the reconstruction)."""
    baseline_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The unsteered continuation so far."""
    steered_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The steered continuation so far."""
    divergence = traitlets.Int(-1).tag(sync=True)
    """Index of the first continuation token where the two differ, -1 while they agree."""
    running = traitlets.Bool(False).tag(sync=True)
    """Whether a generation is under way."""
    status = traitlets.Unicode("").tag(sync=True)
    """A line about the current generation."""
    generation_id = traitlets.Int(0).tag(sync=True)
    """Id of the generation whose tokens are shown; increases with every change."""
    next_token = traitlets.Dict().tag(sync=True)
    """Next-token view: ``{"column", "index", "context", "chosen", "tokens", "baseline", "steered"}``."""
    error = traitlets.Unicode("").tag(sync=True)
    """A user-facing message about the last failed action, "" when none."""

    def __init__(
        self,
        model: Any,
        sae: Any,
        prompt: Any,
        steering: Any = None,
        *,
        stats: Any = None,
        unit: str = "typical",
        strength_range: tuple[float, float] = (-3.0, 3.0),
        autorun: bool = True,
        **settings: Any,
    ) -> None:
        from gemscope_widgets.backend.steering.generation import _check_settings

        if unit not in ("typical", "raw"):
            raise SteeringError(f"unit={unit!r}: use 'typical' (multiples of max activation) or 'raw'.")
        merged = {**DEFAULT_SETTINGS, **settings}
        unknown = set(merged) - set(DEFAULT_SETTINGS)
        if unknown:
            raise SteeringError(f"Unknown generation settings {sorted(unknown)}; known: {sorted(DEFAULT_SETTINGS)}.")
        _check_settings(merged["max_new_tokens"], merged["temperature"], merged["top_p"],
                        merged["frequency_penalty"], merged["seed"])
        self.model, self.sae, self.stats, self.unit = model, sae, stats, unit
        self.prompt = model.prompt(prompt)
        self.result: Any = None
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._gen_id = 0
        self._pending: tuple | None = None
        self._cancel: threading.Event | None = None
        self._worker: threading.Thread | None = None
        self._done = threading.Event()
        self._done.set()
        self._exc: BaseException | None = None
        self._baseline_key: Any = None
        self._streamed: dict[str, list[int]] = {"b": [], "s": []}
        super().__init__(
            sae_name=sae.config.name,
            prompt_tokens=list(self.prompt.tokens),
            prompt_special=[bool(s) for s in (self.prompt.special | self.prompt.template)],
            chat=self.prompt.is_chat,
            settings=merged,
        )
        self.set_range(*strength_range)
        self.on_msg(self._on_custom_msg)
        entries = _entries(steering)
        with self._lock:
            for f, value, mode, positions in entries:
                self._add(f, value, mode, positions, raw=unit == "raw")
        if autorun:
            self.run()

    @classmethod
    def build(cls, scope: Any, prompt: Any, steering: Any = None, *, sae: str | None = None, **kwargs: Any) -> Steer:
        """The widget for a Scope's model and SAE; ``steering`` is ``{feature: multiple}`` or SteeringSpecs."""
        chosen = scope.sae(sae)
        stats = kwargs.pop("stats", None) or getattr(scope, "_stats", {}).get(chosen.config.name)
        return cls(scope.model, chosen, prompt, steering, stats=stats, **kwargs)

    # --- features -----------------------------------------------------------------------------------

    def _add(self, feature: Any, value: float, mode: str, positions: str, raw: bool = False) -> dict[str, Any]:
        from gemscope_widgets.backend.steering.spec import SteeringSpec, normalize_steering
        from gemscope_widgets.backend.steering.units import typical_scales

        spec = normalize_steering([SteeringSpec(feature, value, mode=mode, positions=positions)], self.sae)[0]
        if any(e["feature"] == spec.feature for e in self.features):
            raise SteeringError(f"Feature {spec.feature} is already steered here; move its slider instead.")
        scale, source = typical_scales(self.model, self.sae, [spec.feature], self.prompt.input_ids, self.stats)[
            spec.feature
        ]
        multiple = spec.strength / scale if raw else spec.strength
        entry = {"feature": spec.feature, "multiple": multiple, "mode": mode, "positions": positions,
                 "scale": scale, "scale_source": source, "raw": multiple * scale}
        self.features = [*self.features, entry]
        return entry

    def add_feature(
        self, feature: int, multiple: float = 1.0, *, mode: str = "add", positions: str = "all"
    ) -> None:
        """Adds a slider for ``feature`` (``multiple`` × its typical max activation) and regenerates."""
        self._cancel_running()  # the scale needs a forward pass; do not wait for a stale generation
        try:
            with self._lock:
                self._add(feature, multiple, mode, positions)
        except GemscopeError as exc:
            self.error = str(exc)
            raise
        self.run()

    def remove_feature(self, feature: int) -> None:
        """Removes ``feature``'s slider and regenerates."""
        if not any(e["feature"] == feature for e in self.features):
            self.error = f"Feature {feature} is not steered here."
            raise SteeringError(self.error)
        self.features = [e for e in self.features if e["feature"] != feature]
        self.run()

    def _update(self, feature: int, **changes: Any) -> None:
        from gemscope_widgets.backend.steering.spec import SteeringSpec, normalize_steering

        entries = [dict(e) for e in self.features]
        for entry in entries:
            if entry["feature"] == feature:
                entry.update(changes)
                try:
                    normalize_steering(
                        [SteeringSpec(feature, entry["multiple"], mode=entry["mode"], positions=entry["positions"])],
                        self.sae,
                    )
                except GemscopeError as exc:
                    self.error = str(exc)
                    raise
                entry["raw"] = entry["multiple"] * entry["scale"]
                break
        else:
            self.error = f"Feature {feature} is not steered here; add it with add_feature({feature})."
            raise SteeringError(self.error)
        self.features = entries
        self.run()

    def set_strength(self, feature: int, multiple: float) -> None:
        """Sets ``feature``'s slider (in multiples of its typical max activation) and regenerates."""
        self._update(feature, multiple=_number(multiple, f"strength of feature {feature}"))

    def set_mode(self, feature: int, mode: str) -> None:
        """``"add"``, ``"clamp"`` (to multiple × scale) or ``"ablate"``."""
        self._update(feature, mode=mode)

    def set_positions(self, feature: int, positions: str) -> None:
        """``"all"``, ``"prompt"`` or ``"generated"``."""
        self._update(feature, positions=positions)

    def set_range(self, low: float, high: float) -> None:
        """The sliders' range in multiples (default −3..3)."""
        low, high = _number(low, "range minimum"), _number(high, "range maximum")
        if not low < high:
            raise SteeringError(f"The slider range needs min < max, got {low}..{high}.")
        self.strength_range = [low, high]

    def set_settings(self, **changes: Any) -> None:
        """Changes generation settings (keys of :data:`DEFAULT_SETTINGS`) and regenerates."""
        from gemscope_widgets.backend.steering.generation import _check_settings
        from gemscope_widgets.backend.steering.spec import ERROR_MODES

        merged = {**self.settings, **changes}
        try:
            unknown = set(changes) - set(DEFAULT_SETTINGS)
            if unknown:
                raise SteeringError(f"Unknown settings {sorted(unknown)}; known: {sorted(DEFAULT_SETTINGS)}.")
            _check_settings(merged["max_new_tokens"], merged["temperature"], merged["top_p"],
                            merged["frequency_penalty"], merged["seed"])
            if merged["error"] not in ERROR_MODES:
                raise SteeringError(f"error={merged['error']!r}: use 'keep' or 'replace'.")
        except GemscopeError as exc:
            self.error = str(exc)
            raise
        self.settings = merged
        self.run()

    def specs(self) -> list[Any]:
        """The current sliders as :class:`SteeringSpec` in raw activation units."""
        from gemscope_widgets.backend.steering.spec import SteeringSpec

        return [SteeringSpec(e["feature"], e["multiple"] * e["scale"], mode=e["mode"], positions=e["positions"],
                             sae=self.sae) for e in self.features]

    # --- generation ---------------------------------------------------------------------------------

    def _settings_key(self) -> tuple:
        s = self.settings
        return tuple(s[k] for k in ("max_new_tokens", "temperature", "top_p", "seed", "frequency_penalty",
                                    "stop_at_eos"))

    def run(self) -> int:
        """Cancels the running generation and starts one with the current sliders; returns its id."""
        specs = self.specs()
        settings = dict(self.settings)
        with self._cond:
            self._gen_id += 1
            gid = self._gen_id
            if self._cancel is not None:
                self._cancel.set()
            cancel = threading.Event()
            self._cancel = cancel
            keep_baseline = self._baseline_key == self._settings_key()
            self._pending = (gid, specs, settings, keep_baseline, cancel)
            self._done.clear()
            self._exc = None
            self._streamed = {"b": [], "s": []}
            with self.hold_sync():
                self.generation_id = gid
                self.running = True
                self.error = ""
                self.status = "generating…"
                self.steered_tokens = []
                self.divergence = -1
                if not keep_baseline:
                    self.baseline_tokens = []
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="gemscope-steer", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return gid

    def _work(self) -> None:
        from gemscope_widgets.backend.steering.generation import generate

        while True:
            with self._cond:
                if self._pending is None:
                    self._cond.wait(timeout=_IDLE_EXIT_S)
                if self._pending is None:
                    self._worker = None
                    return
                gid, specs, settings, keep_baseline, cancel = self._pending
                self._pending = None
            try:
                result = generate(
                    self.model, self.prompt, specs, sae=self.sae, cancel=cancel,
                    on_token=lambda step, b, s, gid=gid, keep=keep_baseline: self._stream(gid, keep, b, s),
                    **settings,
                )
            except Exception as exc:
                self._fail(gid, exc)
            else:
                self._finish(gid, result)

    def _stream(self, gid: int, keep_baseline: bool, base: int | None, steered: int | None) -> None:
        from gemscope_widgets.backend.gemma.prompts import token_strings

        with self._lock:
            if gid != self._gen_id:
                return
            tok = self.model.tokenizer
            with self.hold_sync():
                if steered is not None:
                    self._streamed["s"].append(steered)
                    self.steered_tokens = [*self.steered_tokens, *token_strings(tok, [steered])]
                if base is not None:
                    self._streamed["b"].append(base)
                    if not keep_baseline:
                        self.baseline_tokens = [*self.baseline_tokens, *token_strings(tok, [base])]
                b, s = self._streamed["b"], self._streamed["s"]
                if self.divergence < 0:
                    diff = next((i for i, (x, y) in enumerate(zip(b, s)) if x != y), -1)
                    self.divergence = diff
                self.status = f"generating… {max(len(b), len(s))}/{self.settings['max_new_tokens']}"

    def _finish(self, gid: int, result: Any) -> None:
        with self._lock:
            if gid != self._gen_id:
                return
            self.result = result
            self._baseline_key = self._settings_key()
            with self.hold_sync():
                self.baseline_tokens = list(result.baseline_tokens)
                self.steered_tokens = list(result.steered_tokens)
                self.divergence = -1 if result.divergence is None else result.divergence
                why = {"eos": "stopped at a stop token", "length": "reached max new tokens",
                       "cancelled": "cancelled"}[result.stopped]
                speed = 2 * max(result.steps, 1) / max(result.seconds, 1e-9)
                same = "identical" if result.divergence is None else f"diverge at token {result.divergence}"
                self.status = f"{why}; {same}; {result.seconds:.2f} s ({speed:.1f} tokens/s for the pair)"
                self.running = False
            self._done.set()

    def _fail(self, gid: int, exc: BaseException) -> None:
        with self._lock:
            if gid != self._gen_id:
                return
            self._exc = exc
            with self.hold_sync():
                self.error = str(exc) if isinstance(exc, GemscopeError) else f"{type(exc).__name__}: {exc}"
                self.status = "failed"
                self.running = False
            self._done.set()

    def _cancel_running(self) -> None:
        with self._cond:
            if self._cancel is not None:
                self._cancel.set()

    def wait(self, timeout: float | None = 120.0) -> Any:
        """Blocks until the latest generation ends; returns its result or raises its error."""
        if not self._done.wait(timeout):
            raise GemscopeError(f"The generation did not finish within {timeout} s.")
        with self._lock:
            if self._exc is not None:
                raise self._exc
            return self.result

    def close(self) -> None:
        """Cancels any generation and closes the widget."""
        if not hasattr(self, "_cond"):  # the constructor failed before the worker existed
            super().close()
            return
        with self._cond:
            self._pending = None
            if self._cancel is not None:
                self._cancel.set()
            self._cond.notify_all()
        super().close()

    # --- next-token view ----------------------------------------------------------------------------

    def show_next_token(self, index: int, column: str = "steered", k: int = 8) -> dict[str, Any]:
        """Top-``k`` probabilities, baseline vs steered, for continuation token ``index`` of ``column``."""
        from gemscope_widgets.backend.gemma.prompts import token_strings
        from gemscope_widgets.backend.steering.generation import next_token_distribution

        try:
            if self.result is None:
                raise SteeringError("No finished generation yet: wait for it, then pick a token.")
            ids = self.result.steered_ids if column == "steered" else self.result.baseline_ids
            if column not in ("steered", "baseline") or not 0 <= index < len(ids):
                raise SteeringError(f"No token {index} in the {column} continuation (it has {len(ids)}).")
            view = next_token_distribution(
                self.model, self.prompt, self.specs(), sae=self.sae, continuation=ids[:index], k=k,
                steer_special_tokens=self.settings["steer_special_tokens"], error=self.settings["error"],
            )
        except GemscopeError as exc:
            self.error = str(exc)
            raise
        self.next_token = {
            "column": column,
            "index": index,
            "context": view.context_token,
            "chosen": token_strings(self.model.tokenizer, [ids[index]])[0],
            "tokens": view.tokens,
            "baseline": view.baseline,
            "steered": view.steered,
        }
        return self.next_token

    # --- messages from the browser --------------------------------------------------------------------

    def _on_custom_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        try:
            kind, msg = parse_message(content, self.MESSAGES)
            if kind == "set":
                key, feature, value = msg["key"], msg["feature"], msg["value"]
                if key == "multiple":
                    self.set_strength(feature, value)
                elif key == "mode":
                    self.set_mode(feature, str(value))
                else:
                    self.set_positions(feature, str(value))
            elif kind == "add":
                self.add_feature(msg["feature"])
            elif kind == "remove":
                self.remove_feature(msg["feature"])
            elif kind == "settings":
                self.set_settings(**msg["values"])
            elif kind == "range":
                self.set_range(msg["min"], msg["max"])
            elif kind == "next":
                self.show_next_token(msg["index"], msg["column"])
            elif kind == "run":
                self.run()
        except GemscopeError as exc:
            self.error = str(exc)
        except (TypeError, ValueError) as exc:
            self.error = f"Bad request from the view: {exc}"


def _number(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SteeringError(f"The {what} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise SteeringError(f"The {what} must be finite, got {number}.")
    return number


def _entries(steering: Any) -> list[tuple[Any, float, str, str]]:
    from gemscope_widgets.backend.steering.spec import SteeringSpec

    if steering is None:
        return []
    if isinstance(steering, dict):
        return [(f, v, "add", "all") for f, v in steering.items()]
    if isinstance(steering, SteeringSpec):
        steering = [steering]
    out = []
    for spec in steering:
        if not isinstance(spec, SteeringSpec):
            raise SteeringError(f"steering must be {{feature: multiple}} or SteeringSpecs, got {spec!r}.")
        out.append((spec.feature, spec.strength, spec.mode, spec.positions))
    return out
