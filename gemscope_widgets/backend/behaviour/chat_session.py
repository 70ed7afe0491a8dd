"""A chat session: a conversation that grows turn by turn, its model turns generated as background jobs.

The session holds the messages (an optional system message, then user and model turns alternating, checked by
:func:`~gemscope_widgets.backend.behaviour.conversation.check_conversation`). :meth:`ChatSession.add_user` appends
a user turn; :meth:`ChatSession.run` generates the model's next turn with
:func:`~gemscope_widgets.backend.behaviour.chat.continue_conversation` (the steering view's
:func:`~gemscope_widgets.backend.steering.generation.generate`, stopping at ``<end_of_turn>`` or
``max_new_tokens``) as a job of :class:`~gemscope_widgets.backend.jobs.JobRunner`: latest wins (a new run, an
edit or :meth:`~ChatSession.cancel` stops the running turn within one token step, and a cancelled turn is never
appended). Steering means what it means everywhere: ``{feature: x}`` is x × the feature's unit
(:mod:`~gemscope_widgets.backend.steering.units`), ``unit="raw"`` for raw values. From a script::

    chat = ChatSession(gm, sae=sae, steering={123: 2.0}, max_new_tokens=32)
    chat.add_user("Where is the fox?")
    chat.run()
    result = chat.wait()             # GenerationResult; chat.messages now ends on the model's turn
    chat.add_user("And the dog?")
    chat.generate()                  # or run the next turn and wait for it

Listeners (:class:`ChatListener`) are called on the job's worker thread (conversation changes on the caller's),
with the session's lock held, and only for the current turn: a turn that was replaced or cancelled tells nothing
more after its ``chat_cancelled``.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any

from gemscope_widgets.backend.behaviour.chat import continue_conversation
from gemscope_widgets.backend.behaviour.conversation import check_conversation, model_role, warn_if_base
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.backend.jobs import Job, JobListener, JobRunner
from gemscope_widgets.backend.steering.generation import GenerationResult, check_settings
from gemscope_widgets.backend.steering.spec import in_unit, normalize_steering
from gemscope_widgets.errors import GemscopeError, JobCancelled, PromptError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

GENERATION_KEYWORDS = ("temperature", "top_p", "seed", "frequency_penalty", "steer_special_tokens", "error")
"""Keywords of :func:`~gemscope_widgets.backend.steering.generation.generate` a session passes on."""


class ChatListener:
    """What a view hears from a :class:`ChatSession` (all no-ops here)."""

    def chat_changed(self, messages: list[dict[str, str]]) -> None:
        """The conversation changed: a user turn was added, a message edited, or a model turn appended."""

    def chat_started(self, turn: int) -> None:
        """Model turn ``turn`` (an id, increasing) started generating."""

    def chat_token(self, turn: int, token_id: int, token: str, step: int) -> None:
        """One generated token of the model turn (steered), as an id and as its text."""

    def chat_done(self, turn: int, result: GenerationResult) -> None:
        """The turn finished (``result.stopped``: ``"eos"`` at ``<end_of_turn>`` or ``"length"``); it has been
        appended to the messages (``chat_changed`` came first)."""

    def chat_failed(self, turn: int, error: BaseException) -> None:
        """The turn's generation raised; the conversation is unchanged."""

    def chat_cancelled(self, turn: int) -> None:
        """The turn was cancelled (by :meth:`ChatSession.cancel`, a newer run or an edit); nothing was appended."""


class ChatSession:
    """A conversation with the model, one turn at a time; model turns generated as latest-wins background jobs.

    ``messages``: the conversation so far (``[]`` to start empty; a list of ``{"role", "content"}`` with roles
    ``system``/``user``/``model`` or ``assistant``). ``steering``: ``{feature: x}`` (x × the feature's unit),
    SteeringSpecs and DirectionSpecs, in ``unit`` (``"typical"`` or ``"raw"``); ``sae``: whose features are
    steered. ``max_new_tokens`` and the keywords of :data:`GENERATION_KEYWORDS` go to ``generate``.
    Raises :class:`PromptError` for a conversation out of order, SteeringError for bad steering.
    """

    def __init__(
        self,
        model: GemmaModel,
        messages: Any = (),
        steering: Any = None,
        *,
        sae: Any = None,
        unit: str = "typical",
        max_new_tokens: int = 64,
        listener: ChatListener | None = None,
        **settings: Any,
    ) -> None:
        unknown = set(settings) - set(GENERATION_KEYWORDS)
        if unknown:
            raise GemscopeError(f"Unknown chat settings {sorted(unknown)}: use max_new_tokens or "
                                f"{list(GENERATION_KEYWORDS)}.")
        check_settings(max_new_tokens, settings.get("temperature", 0.0), settings.get("top_p", 1.0),
                       settings.get("frequency_penalty", 0.0), settings.get("seed", 0))
        self.model, self.sae = model, sae
        self.max_new_tokens = max_new_tokens
        self.settings = dict(settings)
        self.steering = self._checked_steering(steering, unit)
        is_empty = not isinstance(messages, str) and hasattr(messages, "__len__") and len(messages) == 0
        self._messages: list[dict[str, str]] = [] if is_empty else check_conversation(messages)
        self.listener = listener or ChatListener()
        self.result: GenerationResult | None = None
        self._lock = threading.RLock()
        self._jobs = JobRunner("gemscope-chat")
        self._turn = 0
        self._running = False
        self._done = threading.Event()
        self._done.set()
        self._exc: BaseException | None = None
        self._streamed: list[int] = []
        warn_if_base(model)

    def _checked_steering(self, steering: Any, unit: str) -> list[Any]:
        """``steering`` with every entry in its unit, checked now (bad steering fails here, not in a job)."""
        specs = in_unit(steering, unit)
        normalize_steering(specs, self.sae, model=self.model)
        return specs

    # --- the conversation ---------------------------------------------------------------------------------

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation (a copy); a model turn's role is written ``"assistant"``."""
        with self._lock:
            return [dict(m) for m in self._messages]

    @property
    def running(self) -> bool:
        """Whether a model turn is being generated."""
        return self._running

    @property
    def turn_id(self) -> int:
        """The id of the latest model turn started (0 before the first)."""
        return self._turn

    def next_role(self) -> str:
        """Whose turn it is: ``"user"`` on an empty conversation or after a model turn, else ``"model"``."""
        with self._lock:
            last = self._messages[-1]["role"] if self._messages else "assistant"
        return "user" if last in ("assistant", "system") else "model"

    def _not_running(self, what: str) -> None:
        if self._running:
            raise GemscopeError(f"A model turn is being generated: wait for it (wait()) or cancel() it, then {what}.")

    def add_user(self, text: str) -> list[dict[str, str]]:
        """Appends a user turn (its text as given); returns the conversation. PromptError for an empty text or
        when the conversation already ends on a user turn (generate the model's turn first)."""
        return self.add_turn("user", text)

    def add_turn(self, role: str, content: str) -> list[dict[str, str]]:
        """Appends a turn of ``role`` (``"user"``, or ``"model"``/``"assistant"`` to write the model's turn
        yourself); returns the conversation. PromptError for an empty text or a role out of order."""
        if not isinstance(content, str):
            raise PromptError(f"A turn's text must be a string, got {type(content).__name__}.")
        if not content.strip():
            raise PromptError(f"The {model_role(str(role))} turn is empty: give it some text.")
        with self._lock:
            self._not_running("add the turn")
            expected = self.next_role()
            if model_role(str(role)) in ("user", "model") and model_role(str(role)) != expected:
                then = ("generate the model's turn first (run())" if expected == "model"
                        else "add a user turn first")
                raise PromptError(f"The conversation expects a {expected} turn next, not a {model_role(str(role))} "
                                  f"turn: {then}.")
            self._set_messages(check_conversation([*self._messages, {"role": role, "content": content}]))
            return self.messages

    def edit(self, message: int, content: str) -> list[dict[str, str]]:
        """Replaces message ``message``'s text and drops the messages after it (a running turn is cancelled);
        returns the conversation. PromptError for a message that does not exist or an empty text."""
        if not isinstance(content, str):
            raise PromptError(f"The new text must be a string, got {type(content).__name__}.")
        with self._lock:
            n = len(self._messages)
            if isinstance(message, bool) or not isinstance(message, int) or not 0 <= message < n:
                raise PromptError(f"Message {message!r} does not exist: the conversation has messages 0..{n - 1}.")
            if not content.strip():
                raise PromptError(f"Message {message}'s new text is empty: give it some text.")
            edited = check_conversation([*self._messages[:message], {**self._messages[message], "content": content}])
            self._drop_running()
            self._set_messages(edited)
            return self.messages

    def _set_messages(self, messages: list[dict[str, str]]) -> None:
        self._messages = messages
        self.listener.chat_changed(self.messages)

    # --- model turns ----------------------------------------------------------------------------------------

    def _steering_now(self, steering: Any, unit: str) -> list[Any]:
        return self.steering if steering is None else self._checked_steering(steering, unit)

    def run(self, steering: Any = None, *, unit: str = "typical") -> int:
        """Generates the model's next turn in the background (latest wins: a running turn is cancelled) and
        returns its id. ``steering`` (in ``unit``) replaces the session's for this turn. PromptError when the
        conversation does not end on a user turn."""
        with self._lock:
            specs = self._steering_now(steering, unit)
            checked = check_conversation(self._messages, ending="user")
            self._drop_running()
            self._turn += 1
            turn = self._turn
            self._running, self._exc, self._streamed = True, None, []
            self._done.clear()
            self.listener.chat_started(turn)
            self._jobs.submit(functools.partial(self._generate, turn, checked, specs), key="turn",
                              listener=_TurnEnd(self, turn), name=f"model turn {turn}")
        return turn

    def generate(self, steering: Any = None, *, unit: str = "typical") -> GenerationResult:
        """Generates the model's next turn, waits for it and returns its generation (appended to the messages)."""
        self.run(steering, unit=unit)
        return self.wait(None)

    def _generate(self, turn: int, messages: list[dict[str, str]], specs: list[Any], job: Job) -> GenerationResult:
        result, _ = continue_conversation(
            self.model, messages, specs or None, sae=self.sae, max_new_tokens=self.max_new_tokens,
            cancel=job.cancel_event, on_token=functools.partial(self._stream, turn), **self.settings,
        )
        return result

    def _stream(self, turn: int, step: int, _base: int | None, steered: int | None) -> None:
        if steered is None:
            return
        with self._lock:
            if turn != self._turn:
                return
            self._streamed.append(steered)
            self.listener.chat_token(turn, steered, token_strings(self.model.tokenizer, [steered])[0], step)

    def _end(self, turn: int, result: GenerationResult | None, error: BaseException | None) -> None:
        with self._lock:
            if turn != self._turn:
                return
            self._running = False
            if error is not None:
                self._exc = error
                self.listener.chat_failed(turn, error)
            elif result is None or result.stopped == "cancelled":
                self._exc = JobCancelled("The model turn was cancelled; nothing was appended (run() to generate "
                                         "it again).")
                self.listener.chat_cancelled(turn)
            else:
                self.result = result
                self._set_messages([*self._messages, {"role": "assistant", "content": result.steered_text}])
                self.listener.chat_done(turn, result)
            self._done.set()

    def _drop_running(self) -> None:
        """Cancels the running turn and tells the listener now (its job's later events are ignored)."""
        if not self._running:
            return
        self._jobs.cancel()
        turn = self._turn
        self._turn += 1  # the old job's events no longer match
        self._running = False
        self._exc = JobCancelled("The model turn was cancelled; nothing was appended.")
        self.listener.chat_cancelled(turn)
        self._done.set()

    def streamed(self) -> list[int]:
        """The token ids streamed so far by the current (or last) model turn."""
        with self._lock:
            return list(self._streamed)

    def cancel(self) -> None:
        """Stops the running model turn (within one token step); nothing is appended, the model is left clean."""
        with self._lock:
            self._drop_running()

    def wait(self, timeout: float | None = 300.0) -> GenerationResult:
        """Blocks until the latest model turn ends; its generation, or its error raised (JobCancelled when
        it was cancelled). GemscopeError after ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise GemscopeError(f"The model turn did not finish within {timeout} s; wait longer or cancel() it.")
        with self._lock:
            if self._exc is not None:
                raise self._exc
            if self.result is None:
                raise PromptError("No model turn has been generated yet: add a user turn and run().")
            return self.result

    def join(self, timeout: float | None = 300.0) -> bool:
        """Blocks until no job of this session is left running (a cancelled one included); whether so."""
        try:
            self._jobs.wait(timeout)
        except GemscopeError:
            return False
        return True

    def close(self) -> None:
        """Cancels any running turn and lets the worker thread end."""
        self.cancel()
        self._jobs.close()


class _TurnEnd(JobListener):
    """Hands a turn's job end back to its session (the turn id guards against replaced turns)."""

    def __init__(self, session: ChatSession, turn: int) -> None:
        self.session, self.turn = session, turn

    def job_done(self, job: Job, result: Any) -> None:
        self.session._end(self.turn, result, None)

    def job_failed(self, job: Job, error: BaseException) -> None:
        self.session._end(self.turn, None, error)

    def job_cancelled(self, job: Job) -> None:
        self.session._end(self.turn, None, None)


__all__ = ["GENERATION_KEYWORDS", "ChatListener", "ChatSession"]
