"""Chat: a conversation drawn as turns, per-token feature heat, per-turn summaries, and continuing it."""

from __future__ import annotations

import threading
import warnings
from typing import Any, ClassVar

import anywidget
import numpy as np
import traitlets

from gemscope_widgets.errors import GemscopeError, PromptError

from .bundle import bundle_path
from .messages import PING, PONG, MessageTable, parse_message
from .static_view import StaticFallback, chat_html

_BUNDLE = bundle_path("chat")


class Chat(StaticFallback, anywidget.AnyWidget):
    """``scope.chat(messages)``: the conversation's turns with every template token shown (marked), the heat of the
    selected features on each token, each turn's strongest features, and a "continue" control that streams the
    model's next turn with the current steering.

    Click a feature chip to add it to (or remove it from) the heat; :meth:`select` does the same from Python.
    :meth:`continue_` (or the button) generates the model's reply; :meth:`edit` replaces a message and drops what
    came after it (a user message is then answered again). With ``direction=`` a projection track is drawn under
    the tokens. Data: ``_view`` (tokens, turns, summaries), ``_heat`` (``float32 [n_selected, T]``) and ``_track``
    (``float32 [T]``) as binary.
    """

    _esm = _BUNDLE

    MESSAGES: ClassVar[MessageTable] = {
        "continue": {},
        "edit": {"message": (int,), "content": (str,)},
        "toggle": {"feature": (int,)},
        "ping": PING,
    }
    """What the view sends (``ChatMessage`` in ``js/lib/protocol.ts``)."""

    messages = traitlets.List(traitlets.Dict()).tag(sync=True)
    """The conversation, as checked (a model turn's role is written ``"assistant"``)."""
    features = traitlets.List(traitlets.Int()).tag(sync=True)
    """The features whose per-token activation is drawn."""
    sae_index = traitlets.Int(0).tag(sync=True)
    """Which of the Scope's SAEs the heat and summaries use."""
    _view = traitlets.Dict().tag(sync=True)
    """Tokens, template flags, turns with summaries, SAE names, the direction's label."""
    _heat = traitlets.Bytes(b"").tag(sync=True)
    """``float32 [len(features), T]``: activation of each selected feature at each token."""
    _track = traitlets.Bytes(b"").tag(sync=True)
    """``float32 [T]``: the residual stream's projection on ``direction`` at its layer (empty without one)."""
    streaming = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Tokens of the reply being generated (steered row), shown live; empty when idle."""
    running = traitlets.Bool(False).tag(sync=True)
    """True while a turn is generated or the view recomputed: the view greys out what is stale."""
    status = traitlets.Unicode("").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    warning = traitlets.Unicode("").tag(sync=True)
    """Shown above the conversation, e.g. that the model is not chat-tuned."""

    def __init__(self, scope: Any, messages: Any, *, features: Any = (), steer: Any = None, steering: Any = None,
                 direction: Any = None, summary_k: int = 6, max_new_tokens: int = 64, **kwargs: Any) -> None:
        from gemscope_widgets.backend.behaviour.conversation import check_conversation

        self.scope = scope
        self.steer = steer
        self.steering = steering
        self.direction = direction
        self.summary_k = summary_k
        self.max_new_tokens = max_new_tokens
        self.result: Any = None
        self.conversation: Any = None
        self._lock = threading.RLock()
        self._done = threading.Event()
        self._done.set()
        self._exc: BaseException | None = None
        checked = check_conversation(messages)
        for f in features:
            scope.sae().check_feature(f)
        from gemscope_widgets.backend.behaviour.conversation import warn_if_base

        warn_if_base(scope.model)
        warning = "" if scope.model.is_instruct else (
            f"{scope.model.name} is a base model, not chat-tuned: the template and tools work, but its replies are "
            "not a chat model's.")
        super().__init__(messages=checked, features=[int(f) for f in features], warning=warning, **kwargs)
        self._recompute(checked)
        self.on_msg(self._on_custom_msg)

    def static_html(self) -> str:
        """The script-free rendering carried in the mime bundle (see :mod:`.static_view`)."""
        return chat_html(self)

    @classmethod
    def build(cls, scope: Any, messages: Any, **kwargs: Any) -> Chat:
        if not scope.saes:
            raise GemscopeError("scope.chat needs an SAE for the feature heat: build the Scope with one.")
        return cls(scope, messages, **kwargs)

    # --- computing the view -----------------------------------------------------------------------------

    def _sae(self) -> Any:
        return list(self.scope.saes.values())[self.sae_index]

    def _recompute(self, messages: list[dict[str, str]] | None = None) -> None:
        """Compute activations, summaries, heat and track for ``messages`` (default: the current ones) and only then
        show them with the messages: on failure nothing changes (one forward pass, one more with a direction)."""
        from gemscope_widgets.backend.behaviour.chat import conversation_features

        messages = self.messages if messages is None else messages
        with self._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the base-model warning was given when the view was built
            conv = conversation_features(self.scope.model, list(self.scope.saes.values()), messages)
            track = b""
            label = ""
            if self.direction is not None:
                from gemscope_widgets.backend.behaviour.direction import projection_at_layer

                values, label = projection_at_layer(self.scope.model, conv.prompt, self.direction)
                track = values.tobytes()
            turns_out = []
            summaries = conv.summary(self.sae_index, self.summary_k)
            shown = {int(f) for s in summaries for f in s.features} | set(self.features)
            labels = self._labels(shown)  # every chip names its feature, as the other views do
            for s in summaries:
                t = s.turn
                turns_out.append({
                    "role": t.role, "message": t.message, "start": t.start, "end": t.end,
                    "content_start": t.content_start, "content_end": t.content_end, "message_start": t.message_start,
                    "summary": [{"feature": int(f), "max": float(m), "mean": float(a), "label": labels[int(f)]}
                                for f, m, a in zip(s.features, s.max, s.mean)],
                })
            p = conv.prompt
            with self.hold_sync():
                self.conversation = conv
                self.messages = conv.messages
                self._view = {
                    "tokens": list(p.tokens),
                    "special": [bool(x) for x in p.special],
                    "template": [bool(x) for x in p.template],
                    "turns": turns_out,
                    "sae_names": list(self.scope.saes),
                    "track_label": label,
                    "system": messages[0]["content"] if messages[0]["role"] == "system" else "",
                    "labels": {str(f): text for f, text in labels.items()},
                }
                self._track = track
                self._update_heat()

    def _labels(self, features: Any) -> dict[int, str]:
        """Each feature's explanation or automatic label (``Scope.labels`` of the current SAE)."""
        wanted = sorted({int(f) for f in features})
        return self.scope.labels(list(self.scope.saes)[self.sae_index]).labels(wanted) if wanted else {}

    def _update_heat(self) -> None:
        conv = self.conversation
        if conv is None:
            return
        acts = conv.activations[self.sae_index]
        rows = [acts.feature(f) for f in self.features]
        self._heat = np.stack(rows).astype(np.float32).tobytes() if rows else b""

    @traitlets.observe("features", "sae_index")
    def _on_features(self, _change: Any) -> None:
        if self.conversation is not None:
            if self.sae_index >= len(self.scope.saes):
                self.sae_index = 0
                return
            if _change["name"] == "sae_index":
                self._recompute()
            else:
                known = self._view.get("labels", {})
                missing = [f for f in self.features if str(f) not in known]
                with self.hold_sync():
                    if missing:  # a feature selected from Python: its chip gets a label too
                        fresh = {str(f): text for f, text in self._labels(missing).items()}
                        self._view = {**self._view, "labels": {**known, **fresh}}
                    self._update_heat()

    def select(self, *features: int) -> None:
        """Draw the heat of exactly these features (indices in the current SAE)."""
        sae = self._sae()
        self.features = [sae.check_feature(f) for f in features]

    # --- continuing and editing -------------------------------------------------------------------------

    def _steering(self) -> Any:
        if self.steer is not None:
            return self.steer.specs()
        return self.steering

    def continue_(self, *, wait: bool = False) -> None:
        """Generate the model's next turn (steered with the steer widget's current sliders, or ``steering``),
        streaming it into the view; the reply is appended and the view recomputed. Raises :class:`PromptError` if
        the conversation ends on a model turn."""
        from gemscope_widgets.backend.behaviour.conversation import check_conversation

        check_conversation(self.messages, ending="user")
        if self.running:
            raise GemscopeError("A turn is already being generated; wait for it (chat.wait()).")
        self._done.clear()
        self._exc = None
        with self.hold_sync():
            self.running = True
            self.error = ""
            self.streaming = []
            self.status = "generating…"
        thread = threading.Thread(target=self._generate, name="gemscope-chat", daemon=True)
        thread.start()
        if wait:
            self.wait()

    def _generate(self) -> None:
        from gemscope_widgets.backend.behaviour.chat import continue_conversation
        from gemscope_widgets.backend.gemma.prompts import token_strings

        def on_token(_step: int, _base: int | None, steered: int | None) -> None:
            if steered is not None:
                self.streaming = [*self.streaming, *token_strings(self.scope.model.tokenizer, [steered])]

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sae = self._sae()
                result, messages = continue_conversation(
                    self.scope.model, self.messages, self._steering(), sae=sae,
                    max_new_tokens=self.max_new_tokens, on_token=on_token,
                )
            self.result = result
            with self.hold_sync():
                self._recompute(messages)
                self.streaming = []
                why = {"eos": "stopped at <end_of_turn>", "length": "reached max_new_tokens",
                       "cancelled": "cancelled"}[result.stopped]
                steered = "steered" if result.specs else "unsteered"
                self.status = f"{steered} reply: {len(result.steered_ids)} tokens, {why}"
        except Exception as exc:  # shown in the view and re-raised by wait()
            self._exc = exc
            with self.hold_sync():
                self.error = str(exc) if isinstance(exc, GemscopeError) else f"{type(exc).__name__}: {exc}"
                self.streaming = []
                self.status = "failed"
        finally:
            self.running = False
            self._done.set()

    def wait(self, timeout: float | None = 300.0) -> Any:
        """Block until the running generation ends; return its result or raise its error."""
        if not self._done.wait(timeout):
            raise GemscopeError(f"The reply did not finish within {timeout} s.")
        if self._exc is not None:
            raise self._exc
        return self.result

    def edit(self, message: int, content: str, *, rerun: bool = True) -> None:
        """Replace message ``message``'s text and drop the messages after it; with ``rerun`` and a user message,
        generate the model's reply again."""
        from gemscope_widgets.backend.behaviour.conversation import check_conversation

        if self.running:
            raise GemscopeError("A turn is being generated; wait for it before editing.")
        if isinstance(message, bool) or not isinstance(message, int) or not 0 <= message < len(self.messages):
            raise PromptError(f"Message {message!r} does not exist: the conversation has messages "
                              f"0..{len(self.messages) - 1}.")
        if not isinstance(content, str):
            raise PromptError(f"The new text must be a string, got {type(content).__name__}.")
        edited = [*self.messages[:message], {**self.messages[message], "content": content}]
        edited = check_conversation(edited)
        self._recompute(edited)
        if rerun and edited[-1]["role"] == "user":
            self.continue_()

    def _on_custom_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        try:
            kind, msg = parse_message(content, self.MESSAGES)
            if kind == "ping":
                self.send(PONG)
            elif kind == "continue":
                self.continue_()
            elif kind == "edit":
                self.edit(msg["message"], msg["content"])
            else:
                f = self._sae().check_feature(msg["feature"])
                self.features = [x for x in self.features if x != f] if f in self.features else [*self.features, f]
        except GemscopeError as exc:
            self.error = str(exc)
