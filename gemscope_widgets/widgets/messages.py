"""Custom messages from a widget's view to the kernel: one table per widget, checked on arrival.

Each widget class declares ``MESSAGES``: message type -> ``{field: allowed Python types}``, the same table
``js/lib/protocol.ts`` declares as the widget's ``...Message`` union (a test compares the two). The view's
messages then arrive as ``(type, fields)`` with every field present and of an allowed type, or as a short
:class:`ViewMessageError` the widget shows in its error line. Numbers from JavaScript may arrive as ``int``
or ``float``; ``int`` in a table means "a whole number" and is returned as ``int``. Every table has
``"ping"`` (:data:`PING`), which :class:`~.base.ViewWidget` answers with :data:`PONG`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gemscope_widgets.errors import ViewMessageError

FieldSpec = tuple[type, ...] | frozenset[str]
"""A field's allowed Python types, or the set of strings it may be (a string-literal union in TypeScript)."""
MessageTable = Mapping[str, Mapping[str, FieldSpec]]
"""``{message type: {field name: FieldSpec}}``; a field of ``(float,)`` accepts ints too."""


PING: dict[str, FieldSpec] = {}
"""Every widget's view sends ``{"type": "ping"}`` to learn whether the kernel answers (``js/lib/live.ts``)."""
PONG = {"type": "pong"}
"""The answer to a ping (``KernelMessage`` in ``js/lib/protocol.ts``)."""


def _check(kind: str, name: str, value: Any, allowed: FieldSpec) -> Any:
    if isinstance(allowed, frozenset):
        if isinstance(value, str) and value in allowed:
            return value
        raise ViewMessageError(
            f"The view sent {name}={value!r} in a {kind!r} message; expected one of {sorted(allowed)}."
        )
    if isinstance(value, bool):  # JSON booleans are Python bools, which are ints too
        if bool in allowed:
            return value
    elif isinstance(value, (int, float)) and (int in allowed or float in allowed):
        if not math.isfinite(value):
            raise ViewMessageError(f"The view sent {name}={value} in a {kind!r} message; it must be finite.")
        if float in allowed:
            return value
        if float(value).is_integer():
            return int(value)
        raise ViewMessageError(f"The view sent {name}={value} in a {kind!r} message; it must be a whole number.")
    elif isinstance(value, tuple(t for t in allowed if t not in (int, float, bool))):
        return value
    names = "/".join(t.__name__ for t in allowed)
    raise ViewMessageError(f"The view sent {name}={value!r} in a {kind!r} message; expected {names}.")


def parse_message(content: Any, table: MessageTable) -> tuple[str, dict[str, Any]]:
    """``content`` (the JSON the view sent) as ``(type, fields)`` after checking it against ``table``."""
    if not isinstance(content, dict) or not isinstance(content.get("type"), str):
        raise ViewMessageError(f"The view sent {content!r}, which is not a message; reload the widget's cell.")
    kind = content["type"]
    if kind not in table:
        raise ViewMessageError(
            f"The view sent an unknown message {kind!r} (known: {sorted(table)}); the front end and the "
            "package may be of different versions: reinstall the package and rerun the cell."
        )
    fields = {}
    for name, allowed in table[kind].items():
        if name not in content:
            raise ViewMessageError(f"The view's {kind!r} message lacks its {name!r} field.")
        fields[name] = _check(kind, name, content[name], allowed)
    return kind, fields
