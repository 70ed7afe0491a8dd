"""Chat: a conversation drawn as turns, per-token feature heat, per-turn summaries; add a user turn, continue it.

A relay over :class:`~gemscope_widgets.backend.behaviour.chat_session.ChatSession` (the conversation, and its model
turns as latest-wins background jobs): this module holds traits and message handlers and starts no thread.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import traitlets

from gemscope_widgets.backend.behaviour.chat import conversation_features
from gemscope_widgets.backend.behaviour.chat_session import ChatListener, ChatSession
from gemscope_widgets.backend.behaviour.conversation import check_conversation, warn_if_base
from gemscope_widgets.backend.behaviour.direction import projection_at_layer
from gemscope_widgets.backend.workspace import Workspace
from gemscope_widgets.errors import GemscopeError, PromptError

from .base import ViewWidget, error_text
from .bundle import bundle_path
from .messages import PING, MessageTable
from .static_view import chat_html

_BUNDLE = bundle_path("chat")
_STOPPED = {"eos": "stopped at <end_of_turn>", "length": "reached max_new_tokens", "cancelled": "cancelled"}


class Chat(ViewWidget, ChatListener):
    """``scope.chat(messages)``: the conversation's turns with every template token shown (marked), the heat of the
    selected features on each token, each turn's strongest features, a box to add a user turn (the model's turn
    then streams in) and a "continue" control that streams the model's next turn with the current steering.

    Features: :meth:`select_features` (or a click on a chip) chooses whose heat is drawn, :attr:`selected_features`
    reads it, :meth:`turn_features` gives a turn's strongest features. Turns: :meth:`add_user` (or the box),
    :meth:`continue_` (or the button), :meth:`stop`, :meth:`edit` (replaces a message and drops what came after
    it; a user message is then answered again), :meth:`wait`. The conversation itself is ``chat.session``
    (:class:`~gemscope_widgets.backend.behaviour.chat_session.ChatSession`). With ``direction=`` a projection
    track is drawn under the tokens. Data: ``_view`` (tokens, turns, summaries), ``_heat``
    (``float32 [n_selected, T]``) and ``_track`` (``float32 [T]``) as binary.
    """

    _esm = _BUNDLE

    MESSAGES: ClassVar[MessageTable] = {
        "continue": {},
        "add": {"content": (str,)},
        "stop": {},
        "edit": {"message": (int,), "content": (str,)},
        "toggle": {"feature": (int,)},
        "ping": PING,
    }
    """What the view sends (``ChatMessage`` in ``js/lib/protocol.ts``)."""
    HANDLERS: ClassVar[dict[str, str]] = {
        "continue": "continue_", "add": "_on_add", "stop": "stop", "edit": "edit", "toggle": "_on_toggle",
    }
    """Message type -> the method it calls (see :mod:`.base`)."""

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

    def __init__(self, workspace: Workspace, messages: Any, *, features: Any = (), steer: Any = None,
                 steering: Any = None, direction: Any = None, summary_k: int = 6, max_new_tokens: int = 64,
                 **kwargs: Any) -> None:
        self.workspace = workspace
        self.steer = steer
        self.direction = direction
        self.summary_k = summary_k
        self.conversation: Any = None
        self._exc: BaseException | None = None
        checked = check_conversation(messages)
        for f in features:
            workspace.sae().check_feature(f)
        warn_if_base(workspace.model)
        warning = "" if workspace.model.is_instruct else (
            f"{workspace.model.name} is a base model, not chat-tuned: the template and tools work, but its replies are "
            "not a chat model's.")
        super().__init__(messages=checked, features=[int(f) for f in features], warning=warning, **kwargs)
        self.session = ChatSession(workspace.model, checked, steering, sae=self._sae(), max_new_tokens=max_new_tokens,
                                   listener=self)
        self._recompute(checked)

    @property
    def steering(self) -> Any:
        """The session's steering (each entry in its unit); a ``steer`` widget's sliders win when given."""
        return self.session.steering

    @property
    def max_new_tokens(self) -> int:
        return self.session.max_new_tokens

    @max_new_tokens.setter
    def max_new_tokens(self, value: int) -> None:
        self.session.max_new_tokens = value

    @property
    def result(self) -> Any:
        """The last model turn's generation (:class:`GenerationResult`), None before the first."""
        return self.session.result

    def static_html(self) -> str:
        """The script-free rendering carried in the mime bundle (see :mod:`.static_view`)."""
        return chat_html(self)

    @classmethod
    def build(cls, workspace: Workspace, messages: Any, **kwargs: Any) -> Chat:
        """The view of ``messages`` over ``workspace``'s model and SAEs (keywords as the constructor)."""
        if not workspace.saes:
            raise GemscopeError("scope.chat needs an SAE for the feature heat: build the Scope with one.")
        return cls(workspace, messages, **kwargs)

    # --- computing the view -----------------------------------------------------------------------------

    def _sae(self) -> Any:
        return list(self.workspace.saes.values())[self.sae_index]

    def _recompute(self, messages: list[dict[str, str]] | None = None) -> None:
        """Compute activations, summaries, heat and track for ``messages`` (default: the current ones) and only then
        show them with the messages: on failure nothing changes (one forward pass, one more with a direction)."""
        messages = self.session.messages if messages is None else messages
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the base-model warning was given when the view was built
            conv = conversation_features(self.workspace.model, list(self.workspace.saes.values()), messages)
            track = b""
            label = ""
            if self.direction is not None:
                values, label = projection_at_layer(self.workspace.model, conv.prompt, self.direction)
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
                    "sae_names": list(self.workspace.saes),
                    "track_label": label,
                    "system": messages[0]["content"] if messages[0]["role"] == "system" else "",
                    "labels": {str(f): text for f, text in labels.items()},
                }
                self._track = track
                self._update_heat()

    def _labels(self, features: Any) -> dict[int, str]:
        """Each feature's explanation or automatic label (``Scope.labels`` of the current SAE)."""
        wanted = sorted({int(f) for f in features})
        return self.workspace.labels(list(self.workspace.saes)[self.sae_index]).labels(wanted) if wanted else {}

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
            if self.sae_index >= len(self.workspace.saes):
                self.sae_index = 0
                return
            if _change["name"] == "sae_index":
                self.session.sae = self._sae()  # the reply is steered with this SAE's features
                self._recompute()
            else:
                known = self._view.get("labels", {})
                missing = [f for f in self.features if str(f) not in known]
                with self.hold_sync():
                    if missing:  # a feature selected from Python: its chip gets a label too
                        fresh = {str(f): text for f, text in self._labels(missing).items()}
                        self._view = {**self._view, "labels": {**known, **fresh}}
                    self._update_heat()

    @property
    def selected_features(self) -> list[int]:
        """The features whose heat is drawn (indices in the current SAE), in the order chosen."""
        return list(self.features)

    def select_features(self, features: Iterable[int]) -> list[int]:
        """Draws the heat of exactly ``features`` (indices in the current SAE; ``[]`` for none) and returns them.
        FeatureIndexError for an index outside the SAE (nothing changes)."""
        if isinstance(features, (int, np.integer)):
            features = [int(features)]
        sae = self._sae()
        checked = [sae.check_feature(f) for f in features]
        self.features = list(dict.fromkeys(checked))
        return self.selected_features

    def select(self, *features: int) -> None:
        """``select(3, 5)`` is :meth:`select_features` ``([3, 5])``."""
        self.select_features(features)

    def turn_features(self, turn: int = 0, k: int | None = None) -> list[int]:
        """The strongest features of turn ``turn`` (0 = the first turn; negative counts from the end), highest
        max activation first, as the turn's chips show them (``k`` of them, at most ``summary_k``)."""
        summaries = self.conversation.summary(self.sae_index, self.summary_k)
        if isinstance(turn, bool) or not isinstance(turn, int) or not -len(summaries) <= turn < len(summaries):
            raise PromptError(f"Turn {turn!r} does not exist: the conversation has turns 0..{len(summaries) - 1}.")
        found = [int(f) for f in summaries[turn].features]
        return found if k is None else found[:k]

    # --- turns: a relay over the chat session -------------------------------------------------------------

    def _steering(self) -> Any:
        """The steer widget's sliders (raw specs) when there is one, else None (the session's own steering)."""
        return None if self.steer is None else self.steer.specs()

    def continue_(self, *, wait: bool = False) -> None:
        """Generate the model's next turn (steered with the steer widget's current sliders, or ``steering``),
        streaming it into the view; the reply is appended and the view recomputed. A turn already running is
        replaced (latest wins). Raises :class:`PromptError` if the conversation ends on a model turn."""
        self.session.run(self._steering())
        if wait:
            self.wait()

    def add_user(self, text: str, *, reply: bool = True, wait: bool = False) -> None:
        """Appends a user turn (as the box under the conversation does) and, with ``reply``, generates the model's
        turn. PromptError for an empty text or when the conversation already ends on a user turn."""
        self.session.add_user(text)
        if reply:
            self.continue_(wait=wait)

    def stop(self) -> None:
        """Stops the model turn being generated; nothing is appended."""
        self.session.cancel()

    def wait(self, timeout: float | None = 300.0) -> Any:
        """Blocks until the running model turn ends; returns its generation or raises its error (JobCancelled
        when it was stopped)."""
        result = self.session.wait(timeout)
        if self._exc is not None:
            raise self._exc
        return result

    def edit(self, message: int, content: str, *, rerun: bool = True) -> None:
        """Replace message ``message``'s text and drop the messages after it (a turn being generated is stopped);
        with ``rerun`` and a user message, generate the model's reply again."""
        edited = self.session.edit(message, content)
        if rerun and edited[-1]["role"] == "user":
            self.continue_()

    # --- what the session tells (on the session's lock; a model turn's events on its job's thread) -----------

    def chat_changed(self, messages: list[dict[str, str]]) -> None:
        try:
            self._recompute(messages)
            self._exc = None
        except Exception as exc:  # the conversation changed but its features could not be drawn: say so
            self._exc = exc
            self.error = f"The view still shows the conversation before the last change: {error_text(exc)}"

    def chat_started(self, turn: int) -> None:
        with self.hold_sync():
            self.running = True
            self.error = ""
            self.streaming = []
            self.status = "generating the model's turn…"

    def chat_token(self, turn: int, token_id: int, token: str, step: int) -> None:
        self.streaming = [*self.streaming, token]

    def chat_done(self, turn: int, result: Any) -> None:
        steered = "steered" if result.specs else "unsteered"
        with self.hold_sync():
            self.streaming = []
            self.running = False
            self.status = f"{steered} reply: {len(result.steered_ids)} tokens, {_STOPPED[result.stopped]}"

    def chat_failed(self, turn: int, error: BaseException) -> None:
        with self.hold_sync():
            self.error = error_text(error)
            self.streaming = []
            self.running = False
            self.status = "failed"

    def chat_cancelled(self, turn: int) -> None:
        with self.hold_sync():
            self.streaming = []
            self.running = False
            self.status = "stopped: the model's turn was cancelled and nothing was added"

    def _on_add(self, content: str) -> None:
        self.error = ""
        self.add_user(content)

    def _on_toggle(self, feature: int) -> None:
        f = self._sae().check_feature(feature)
        self.features = [x for x in self.features if x != f] if f in self.features else [*self.features, f]
