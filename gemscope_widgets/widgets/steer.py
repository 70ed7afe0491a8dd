"""Steer: sliders per SAE feature and per residual-stream direction, baseline and steered continuations side by side.

A thin view over :class:`~gemscope_widgets.backend.steering.session.SteeringSession`, which owns the entries,
their strength units (:func:`~gemscope_widgets.backend.steering.units.strength_unit`) and the latest-wins
generation runner; this widget turns its events into traits and the browser's messages into its calls.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import traitlets

from gemscope_widgets.backend.steering.session import (
    DEFAULT_SETTINGS,
    Entry,
    SessionListener,
    SteeringSession,
    finite,
)
from gemscope_widgets.backend.workspace import Workspace
from gemscope_widgets.errors import GemscopeError, SteeringError

from .base import ViewWidget, error_text
from .bundle import bundle_path
from .messages import PING, MessageTable

_BUNDLE = bundle_path("steer")

__all__ = ["DEFAULT_SETTINGS", "Steer"]


class Steer(ViewWidget, SessionListener):
    """``scope.steer(prompt, {feature: multiple})``: one slider per feature or direction, baseline vs steered text.

    Python API: :meth:`add_feature`, :meth:`add_direction`, :meth:`remove_feature`, :meth:`remove_direction`,
    :meth:`set_strength`, :meth:`set_mode`, :meth:`set_positions`, :meth:`set_direction`, :meth:`set_unit`,
    :meth:`set_settings`, :meth:`show_next_token`; :meth:`wait` returns the latest
    :class:`~gemscope_widgets.backend.steering.generation.GenerationResult` (or raises its error).
    ``session`` is the backend :class:`SteeringSession` (usable without the view).
    """

    _esm = _BUNDLE

    MESSAGES: ClassVar[MessageTable] = {
        "set": {"feature": (int,), "key": frozenset({"multiple", "mode", "positions"}), "value": (float, str),
                "request": (int,)},
        "set_direction": {"direction": (str,), "key": frozenset({"multiple", "mode", "positions", "layer"}),
                          "value": (float, str), "request": (int,)},
        "add": {"feature": (int,)},
        "remove": {"feature": (int,)},
        "remove_direction": {"direction": (str,)},
        "settings": {"values": (dict,)},
        "unit": {"value": frozenset({"typical", "raw"})},
        "range": {"min": (float,), "max": (float,)},
        "next": {"index": (int,), "column": frozenset({"baseline", "steered"})},
        "run": {},
        "ping": PING,
    }
    """What the view sends (``SteerMessage`` in ``js/lib/protocol.ts``)."""
    HANDLERS: ClassVar[dict[str, str]] = {
        "set": "_on_set", "set_direction": "_on_set_direction", "add": "add_feature", "remove": "remove_feature",
        "remove_direction": "_on_remove_direction", "settings": "_on_settings", "unit": "_on_unit",
        "range": "_on_range", "next": "show_next_token", "run": "run",
    }
    """Message type -> the method it calls (see :mod:`.base`)."""
    REPORTED = (GemscopeError, TypeError, ValueError)
    """A refused change, or a request the session cannot read, is shown in ``error``."""

    sae_name = traitlets.Unicode("").tag(sync=True)
    """The SAE whose features are steered ("" when only directions are)."""
    prompt_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The prompt's token strings (BOS and chat template included)."""
    prompt_special = traitlets.List(traitlets.Bool()).tag(sync=True)
    """Per prompt token: a special or chat-template token (not steered unless ``steer_special_tokens``)."""
    chat = traitlets.Bool(False).tag(sync=True)
    """Whether the prompt is chat messages rendered through the chat template."""
    features = traitlets.List(traitlets.Dict()).tag(sync=True)
    """``[{"feature", "multiple", "mode", "positions", "scale", "scale_source", "unit_source", "raw", ...}]``:
    ``raw`` is ``multiple × scale`` in the SAE's activation units; ``scale_source`` is the unit's kind
    ("quantile", "site norm" or "raw") and ``unit_source`` says where it came from; ``feature_label`` (built from
    a Scope) is the feature's explanation or automatic label (``Scope.labels``)."""
    directions = traitlets.List(traitlets.Dict()).tag(sync=True)
    """Steered directions, as ``features`` with ``key`` ("d0", ...), ``label`` and ``layer`` (for "add")."""
    unit = traitlets.Unicode("typical").tag(sync=True)
    """``"typical"``: strengths are multiples of each entry's unit; ``"raw"``: raw values."""
    strength_range = traitlets.List(traitlets.Float(), default_value=[-3.0, 3.0]).tag(sync=True)
    """Slider range ``[min, max]`` (in the current unit)."""
    note = traitlets.Unicode("").tag(sync=True)
    """A notice about the view itself (e.g. the slider range was widened to show a value), "" when none."""
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
    """Next-token view: ``{"column", "index", "context", "chosen", "tokens", "baseline", "steered"}``; cleared
    whenever the steering or settings change."""
    error = traitlets.Unicode("").tag(sync=True)
    """A user-facing message about the last failed action, "" when none."""
    applied_request = traitlets.Int(0).tag(sync=True)
    """The id of the last ``set``/``set_direction`` request from the view that the kernel handled, applied or
    refused; the view shows a dragged slider's kernel value again once its own last request is handled
    (``js/lib/echo.ts``)."""

    def static_html(self) -> str:
        """The script-free rendering carried in the mime bundle (see :mod:`.static_view`).

        It is made when the cell displays the widget, so it waits (at most a few seconds) for the first
        generation to finish, or shows the texts as far as they got, marked partial."""
        from .static_view import STATIC_WAIT_S, steer_html

        with contextlib.suppress(Exception):  # a timeout or a failed generation: render what is there
            self.wait(timeout=STATIC_WAIT_S)
        return steer_html(self)

    def __init__(
        self,
        model: Any,
        sae: Any,
        prompt: Any,
        steering: Any = None,
        *,
        unit: str = "typical",
        strength_range: tuple[float, float] = (-3.0, 3.0),
        autorun: bool = True,
        labels: Any = None,
        **settings: Any,
    ) -> None:
        self._keep_baseline = False
        self._labeller = labels  # FeatureLabels of the SAE (Scope.labels): each feature row shows its label
        self._unsubscribe: Any = None
        self.session = SteeringSession(model, prompt, steering, sae=sae, unit=unit, listener=self, **settings)
        self.model, self.sae, self.prompt = model, sae, self.session.prompt
        p = self.prompt
        super().__init__(
            sae_name=sae.config.name if sae is not None else "",
            prompt_tokens=list(p.tokens),
            prompt_special=[bool(s) for s in (p.special | p.template)],
            chat=p.is_chat,
            settings=dict(self.session.settings),
            unit=unit,
        )
        self.set_range(*strength_range)
        for e in self.session.entries:
            self._fit_range(e.multiple)
        self._show_entries()
        if autorun:
            self.run()

    @classmethod
    def build(cls, workspace: Workspace, prompt: Any, steering: Any = None, *, sae: str | None = None,
              **kwargs: Any) -> Steer:
        """The widget for a workspace's model and SAE; ``steering``: ``{feature: multiple}``, SteeringSpecs or
        DirectionSpecs."""
        chosen = workspace.sae(sae) if (workspace.saes or sae is not None) else None
        if chosen is None:
            return cls(workspace.model, chosen, prompt, steering, **kwargs)
        # Subscribed to the statistics after the labels, so a finished scan relabels the rows with current text.
        widget = cls(workspace.model, chosen, prompt, steering, labels=workspace.labels(sae), **kwargs)
        widget._unsubscribe = workspace.stats_holder(sae).subscribe(widget._stats_changed)
        return widget

    @property
    def result(self) -> Any:
        """The latest finished :class:`GenerationResult` (None before the first)."""
        return self.session.result

    # --- entries ------------------------------------------------------------------------------------------

    def _stats_changed(self, _stats: Any) -> None:
        """New statistics (a scan finished): the feature rows' labels are recomputed, never left stale."""
        self._show_entries()

    def _show_entries(self) -> None:
        described = [e.describe() for e in self.session.entries]
        if self._labeller is not None:  # each feature's explanation or automatic label, beside its id
            ids = [int(d["feature"]) for d in described if d["kind"] == "feature"]
            texts = self._labeller.labels(ids) if ids else {}
            for d in described:
                if d["kind"] == "feature":
                    d["feature_label"] = texts[int(d["feature"])]
        with self.hold_sync():
            self.features = [d for d in described if d["kind"] == "feature"]
            self.directions = [d for d in described if d["kind"] == "direction"]

    def _act(self, action: Any, *args: Any, **kwargs: Any) -> Any:
        """Runs a session call; a GemscopeError lands in ``error`` (and is raised), else the view regenerates."""
        try:
            out = action(*args, **kwargs)
        except GemscopeError as exc:
            self.error = str(exc)
            raise
        if isinstance(out, Entry):
            self._fit_range(out.multiple)
        self._show_entries()
        self.run()
        return out

    def add_feature(self, feature: int, multiple: float = 1.0, *, mode: str = "add", positions: str = "all") -> None:
        """Adds a slider for ``feature`` (``multiple`` × its unit) and regenerates."""
        self._act(self.session.add_feature, feature, multiple, mode=mode, positions=positions)

    def add_direction(self, direction: Any, multiple: float = 1.0, *, mode: str = "ablate", layer: int | None = None,
                      positions: str = "all", name: str = "") -> str:
        """Adds a slider for a residual-stream direction (see :class:`DirectionSpec`); returns its key."""
        entry = self._act(self.session.add_direction, direction, multiple, mode=mode, layer=layer,
                          positions=positions, name=name)
        return str(entry.key)

    def remove_feature(self, feature: int) -> None:
        """Removes ``feature``'s slider and regenerates."""
        self._act(self.session.remove, feature)

    def remove_direction(self, key: str) -> None:
        """Removes the direction ``key`` ("d0", ...) and regenerates."""
        self._act(self.session.remove, key)

    def set_strength(self, feature: int, multiple: float) -> None:
        """Sets ``feature``'s slider (in the current unit) and regenerates."""
        self._act(self.session.update, feature, multiple=multiple)

    def set_mode(self, feature: int, mode: str) -> None:
        """``"add"``, ``"clamp"`` (to multiple × unit) or ``"ablate"``."""
        self._act(self.session.update, feature, mode=mode)

    def set_positions(self, feature: int, positions: str) -> None:
        """``"all"``, ``"prompt"`` or ``"generated"``."""
        self._act(self.session.update, feature, positions=positions)

    def set_direction(self, key: str, **changes: Any) -> None:
        """Changes a direction's ``multiple``, ``mode``, ``positions`` or ``layer`` and regenerates."""
        self._act(self.session.update, key, **changes)

    def set_unit(self, unit: str) -> None:
        """Shows strengths as ``"typical"`` multiples of each unit or as ``"raw"`` values (the steering stays)."""
        try:
            self.session.set_unit(unit)
        except GemscopeError as exc:
            self.error = str(exc)
            raise
        self.unit = unit
        for e in self.session.entries:
            self._fit_range(e.multiple)
        self._show_entries()

    def set_range(self, low: float, high: float) -> None:
        """The sliders' range in the current unit (default −3..3)."""
        low, high = finite(low, "range minimum"), finite(high, "range maximum")
        if not low < high:
            raise SteeringError(f"The slider range needs min < max, got {low}..{high}.")
        self.strength_range = [low, high]
        self.note = ""

    def _fit_range(self, value: float) -> None:
        low, high = self.strength_range
        if low <= value <= high:
            return
        low, high = min(low, value), max(high, value)
        self.strength_range = [low, high]
        self.note = f"The slider range was widened to {low:g}…{high:g} to show {value:g}."

    def set_settings(self, **changes: Any) -> None:
        """Changes generation settings (keys of :data:`DEFAULT_SETTINGS`) and regenerates. On an invalid value
        the settings stay as they were and ``error`` says why."""
        try:
            self.session.set_settings(**changes)
        except GemscopeError as exc:
            with self.hold_sync():
                self.error = str(exc)
                self.settings = dict(self.session.settings)  # the view's boxes go back to the last good values
            raise
        self.settings = dict(self.session.settings)
        self.run()

    def specs(self) -> list[Any]:
        """The current sliders as specs in raw units (what generation receives)."""
        return self.session.specs()

    # --- generation ---------------------------------------------------------------------------------------

    def run(self) -> int:
        """Cancels the running generation and starts one with the current sliders; returns its id."""
        return self.session.run()

    def wait(self, timeout: float | None = 120.0) -> Any:
        """Blocks until the latest generation ends; returns its result or raises its error."""
        return self.session.wait(timeout)

    def close(self) -> None:
        """Cancels any generation and closes the widget."""
        session = getattr(self, "session", None)
        if session is not None:
            session.close()
        if getattr(self, "_unsubscribe", None) is not None:
            self._unsubscribe()
            self._unsubscribe = None
        super().close()

    def session_started(self, gid: int, keep_baseline: bool) -> None:
        self._keep_baseline = keep_baseline
        with self.hold_sync():
            self.generation_id = gid
            self.running = True
            self.error = ""
            self.status = "generating…"
            self.steered_tokens = []
            self.divergence = -1
            self.next_token = {}  # it described the previous configuration
            if not keep_baseline:
                self.baseline_tokens = []

    def session_token(self, gid: int, baseline: str | None, steered: str | None, divergence: int, step: int) -> None:
        with self.hold_sync():
            if steered is not None:
                self.steered_tokens = [*self.steered_tokens, steered]
            if baseline is not None and not self._keep_baseline:
                self.baseline_tokens = [*self.baseline_tokens, baseline]
            self.divergence = divergence
            self.status = f"generating… {step + 1}/{self.settings['max_new_tokens']}"

    def session_finished(self, gid: int, result: Any, keep_baseline: bool) -> None:
        why = {"eos": "stopped at a stop token", "length": "reached max new tokens", "cancelled": "cancelled"}
        speed = 2 * max(result.steps, 1) / max(result.seconds, 1e-9)
        same = "identical" if result.divergence is None else f"diverge at token {result.divergence}"
        with self.hold_sync():
            self.baseline_tokens = list(result.baseline_tokens)
            self.steered_tokens = list(result.steered_tokens)
            self.divergence = -1 if result.divergence is None else result.divergence
            self.status = f"{why[result.stopped]}; {same}; {result.seconds:.2f} s ({speed:.1f} tokens/s for the pair)"
            self.running = False

    def session_failed(self, gid: int, error: BaseException) -> None:
        with self.hold_sync():
            self.error = error_text(error)
            self.status = "failed"
            self.running = False

    # --- next-token view ----------------------------------------------------------------------------------

    def show_next_token(self, index: int, column: str = "steered", k: int = 8) -> dict[str, Any]:
        """Top-``k`` probabilities, baseline vs steered, for continuation token ``index`` of ``column``."""
        try:
            view = self.session.next_token(index, column, k)
        except GemscopeError as exc:
            self.error = str(exc)
            raise
        self.next_token = view
        return view

    # --- messages from the browser ------------------------------------------------------------------------

    def report_error(self, exc: BaseException) -> None:
        """A refused change shows its own message; a request the session cannot read says so."""
        self.error = str(exc) if isinstance(exc, GemscopeError) else f"Bad request from the view: {exc}"

    def _on_set(self, feature: int, key: str, value: Any, request: int) -> None:
        try:
            if key == "multiple":
                self.set_strength(feature, value)
            elif key == "mode":
                self.set_mode(feature, str(value))
            else:
                self.set_positions(feature, str(value))
        finally:  # after the entries' echo: the view then knows that echo answers its latest request
            self.applied_request = max(self.applied_request, request)

    def _on_set_direction(self, direction: str, key: str, value: Any, request: int) -> None:
        try:
            self.set_direction(direction, **{key: _int(value) if key == "layer" else value})
        finally:  # as _on_set
            self.applied_request = max(self.applied_request, request)

    def _on_remove_direction(self, direction: str) -> None:
        self.remove_direction(direction)

    def _on_settings(self, values: dict[str, Any]) -> None:
        self.set_settings(**values)

    def _on_unit(self, value: str) -> None:
        self.set_unit(value)

    def _on_range(self, **bounds: float) -> None:  # the message's fields: min, max
        self.set_range(bounds["min"], bounds["max"])


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise SteeringError(f"Expected an integer index, got {value!r}.")
    return int(value)
