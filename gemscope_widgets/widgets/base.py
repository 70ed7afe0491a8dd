"""The base of every view: its messages dispatched by table, one error report, and the liveness ping answered.

A view subclasses :class:`ViewWidget` and declares two tables:

* ``MESSAGES`` (:mod:`.messages`): message type -> ``{field: allowed types}``, the same table ``js/lib/protocol.ts``
  declares as the view's ``...Message`` union; it has ``"ping"`` (:data:`~.messages.PING`).
* ``HANDLERS``: message type -> the name of the method that handles it, called with the message's checked fields
  as keywords (``{"open": "show"}`` calls ``self.show(feature=3)`` for ``{"type": "open", "feature": 3}``).
  ``"ping"`` needs no handler: the base answers it with :data:`~.messages.PONG` (``js/lib/live.ts``).

A class whose ``MESSAGES`` names a type without a handler, or a handler without a method, is refused when it is
defined (:class:`~gemscope_widgets.errors.ViewMessageError`), so the two tables cannot drift apart.

A message that fails (a malformed message, or a handler raising one of ``REPORTED``) ends in
:meth:`ViewWidget.report_error`: by default the text of :func:`error_text` in the view's ``error`` line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import anywidget

from gemscope_widgets.errors import GemscopeError, ViewMessageError

from .messages import PING, PONG, MessageTable, parse_message
from .static_html import StaticFallback


def error_text(exc: BaseException) -> str:
    """What a view shows of ``exc``: a :class:`GemscopeError`'s own message (it says what to do), anything else
    as ``"TypeName: message"`` (never a silent log line)."""
    return str(exc) if isinstance(exc, GemscopeError) else f"{type(exc).__name__}: {exc}"


class ViewWidget(StaticFallback, anywidget.AnyWidget):
    """An anywidget view of the package: table-driven message dispatch, one error report, the liveness ping.

    Subclasses set ``_esm``, ``MESSAGES`` and ``HANDLERS`` (see the module), define :meth:`static_html` (the
    script-free HTML a saved notebook shows) and may override :meth:`report_error` (where an error is shown)
    and ``REPORTED`` (which exceptions of a handler are shown rather than raised; default: GemscopeError).
    """

    MESSAGES: ClassVar[MessageTable] = {"ping": PING}
    """What the view sends; every table has ``"ping"``."""
    HANDLERS: ClassVar[Mapping[str, str]] = {}
    """Message type -> method name (called with the message's fields as keywords); ``"ping"`` is answered here."""
    REPORTED: ClassVar[tuple[type[BaseException], ...]] = (GemscopeError,)
    """Exceptions of a handler shown in the view by :meth:`report_error` instead of propagating."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = sorted(set(cls.MESSAGES) - set(cls.HANDLERS) - {"ping"})
        extra = sorted(set(cls.HANDLERS) - set(cls.MESSAGES))
        absent = sorted(name for name in cls.HANDLERS.values() if not callable(getattr(cls, name, None)))
        if "ping" not in cls.MESSAGES or missing or extra or absent:
            raise ViewMessageError(
                f"{cls.__name__}: MESSAGES and HANDLERS disagree (types without a handler: {missing}; handlers of "
                f"no message type: {extra}; handler methods that do not exist: {absent}; "
                f"'ping' in MESSAGES: {'ping' in cls.MESSAGES}). Give every message type but 'ping' a method."
            )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_msg(self._on_custom_msg)

    def report_error(self, exc: BaseException) -> None:
        """Shows ``exc`` (from a view's message) in the view: its ``error`` line (:func:`error_text`), or the
        widget's log when the view has no error line."""
        if self.has_trait("error"):
            self.error = error_text(exc)
        else:
            self.log.warning(error_text(exc))

    def _on_custom_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """A message from the view: checked against ``MESSAGES``, answered (ping) or handed to its handler."""
        try:
            kind, fields = parse_message(content, self.MESSAGES)
            if kind == "ping":
                self.send(PONG)
                return
            getattr(self, self.HANDLERS[kind])(**fields)
        except self.REPORTED as exc:
            self.report_error(exc)
