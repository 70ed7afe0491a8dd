"""How a token is named outside running text: ``visible_text(" of") == "␣of"``.

The one rule for a token in a label, a table cell, a tooltip or a sentence (quoted there: ``“␣of”``), shared with
``visibleText`` in ``js/lib/format.ts``: the saved-notebook HTML and the names the kernel sends a view (the graph
comparison's node names) use this function, the browser views use that one, and ``tests/widgets/token_text_cases.json``
holds the cases both sides are tested on. A space shows ``␣``, a newline ``↵``, a tab ``→``, another control
character its Unicode control picture (U+2400 + code; U+2421 for DEL) and the empty token ``∅``; everything else is
kept as it is. The result is plain text, to be HTML-escaped where it goes into HTML.
"""

from __future__ import annotations

_MARKS = {" ": "␣", "\n": "↵", "\t": "→"}
EMPTY_MARK = "∅"


def _mark(ch: str) -> str:
    if ch in _MARKS:
        return _MARKS[ch]
    code = ord(ch)
    if code == 0x7F:
        return "\u2421"
    if code < 0x20:
        return chr(0x2400 + code)
    return ch


def visible_text(token: str) -> str:
    """``token`` (a str) with every space and control character made visible, as the views name a token:
    ``" of"`` -> ``"␣of"``, ``""`` -> ``"∅"``, ``"<b>"`` -> ``"<b>"`` (text: escape it for HTML). Mirrors
    ``visibleText`` in ``js/lib/format.ts``."""
    if token == "":
        return EMPTY_MARK
    return "".join(_mark(ch) for ch in token)
