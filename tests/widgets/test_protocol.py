"""The kernel <-> browser protocol is declared once, in js/lib/protocol.ts, and the Python widgets match it.

For every ``/** @widget module.Class */`` interface: the same synced traits, each of a matching kind. For every
``/** @messages module.Class */`` union: the same message types with the same fields and field types as the
class's ``MESSAGES`` table (``never`` for a widget that sends none). Every anywidget class of the package must
appear in both, so a new widget or a changed trait fails here until both sides agree.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from typing import Any

import anywidget
import pytest
import traitlets

import gemscope_widgets.widgets as widgets_pkg
from gemscope_widgets.widgets.messages import ViewMessageError, parse_message

PROTOCOL = Path(__file__).resolve().parents[2] / "js" / "lib" / "protocol.ts"

_WIDGET_RE = re.compile(r"/\*\* @widget ([\w.]+) \*/\s*export interface (\w+) \{\n(.*?)\n\}", re.S)
_MESSAGES_RE = re.compile(r"/\*\* @messages ([\w.]+) \*/\s*export type (\w+) =\s*(.*?);\n", re.S)
_FIELD_RE = re.compile(r"^\s*(\w+)(\??):\s*(.+?);\s*(?://.*)?$")


def _ts_widgets(text: str) -> dict[str, dict[str, str]]:
    """``{class path: {trait: TS type}}`` of every @widget interface."""
    out = {}
    for path, _name, body in _WIDGET_RE.findall(text):
        fields = {}
        for line in body.splitlines():
            if not line.strip() or line.strip().startswith("//"):
                continue
            m = _FIELD_RE.match(line)
            assert m, f"protocol.ts: cannot read the field line {line!r} of {path}; keep one `name: Type;` per line"
            fields[m.group(1)] = m.group(3)
        out[path] = fields
    return out


def _ts_type(text: str) -> frozenset[str]:
    """A TS field type as a set of kinds: literal strings stay as themselves (quoted), others by name."""
    parts = [p.strip() for p in text.split("|")] if not text.startswith("Record<") else [text]
    if all(p.startswith('"') for p in parts):
        return frozenset(p.strip('"') for p in parts)
    kinds = {"number": "number", "string": "string", "boolean": "boolean"}
    out = set()
    for p in parts:
        if p.startswith("Record<"):
            out.add("object")
        else:
            assert p in kinds, f"protocol.ts: message field type {p!r} is not one the test knows"
            out.add(kinds[p])
    return frozenset(f"<{k}>" for k in out)


def _ts_messages(text: str) -> dict[str, dict[str, dict[str, frozenset[str]]]]:
    """``{class path: {message type: {field: kinds}}}`` of every @messages union."""
    out: dict[str, dict[str, dict[str, frozenset[str]]]] = {}
    for path, _name, body in _MESSAGES_RE.findall(text):
        table: dict[str, dict[str, frozenset[str]]] = {}
        if body.strip() != "never":
            for member in re.findall(r"\{([^{}]*(?:<[^<>]*>[^{}]*)*)\}", body):
                fields = {}
                for part in member.split(";"):
                    if not part.strip():
                        continue
                    name, _, kind = part.partition(":")
                    fields[name.strip()] = kind.strip()
                kind = fields.pop("type").strip('"')
                table[kind] = {name: _ts_type(t) for name, t in fields.items()}
        out[path] = table
    return out


def _py_kinds(spec: Any) -> frozenset[str]:
    if isinstance(spec, frozenset):
        return spec
    names = {int: "number", float: "number", str: "string", bool: "boolean", dict: "object"}
    return frozenset(f"<{names[t]}>" for t in spec)


def _anywidget_classes() -> dict[str, type]:
    found = {}
    for info in pkgutil.iter_modules(widgets_pkg.__path__):
        module = importlib.import_module(f"{widgets_pkg.__name__}.{info.name}")
        for _name, cls in inspect.getmembers(module, inspect.isclass):
            # a class without its own bundle (_esm) is a base, not a view (widgets/base.py)
            if issubclass(cls, anywidget.AnyWidget) and cls.__module__ == module.__name__ and hasattr(cls, "_esm"):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


_BASE = set(anywidget.AnyWidget.class_traits(sync=True))


def _own_synced(cls: type) -> dict[str, traitlets.TraitType]:
    return {
        name: trait
        for name, trait in cls.class_traits(sync=True).items()
        if name not in _BASE and not name.startswith(("_esm", "_css", "_anywidget"))
    }


def _kind_matches(trait: traitlets.TraitType, ts: str) -> bool:
    if isinstance(trait, (traitlets.Int, traitlets.Float)):
        return ts == "number"
    if isinstance(trait, traitlets.Bool):
        return ts == "boolean"
    if isinstance(trait, traitlets.Unicode):
        return ts == "string" or all(p.strip().startswith('"') for p in ts.split("|"))
    if isinstance(trait, traitlets.Bytes):
        return ts in ("Bytes", "DataView")
    if isinstance(trait, (traitlets.List, traitlets.Tuple)):
        return ts.endswith("[]") or ts.startswith("Array<")
    if isinstance(trait, traitlets.Dict):
        return ts not in ("number", "boolean", "string") and not ts.endswith("[]")
    return True  # a trait kind this test does not know: names are still compared


TEXT = PROTOCOL.read_text(encoding="utf-8")
TS_WIDGETS = _ts_widgets(TEXT)
TS_MESSAGES = _ts_messages(TEXT)
CLASSES = _anywidget_classes()


def test_protocol_file_is_read():
    assert "gemscope_widgets.widgets.heatmap.Heatmap" in TS_WIDGETS
    assert TS_MESSAGES["gemscope_widgets.widgets.feature_pane.FeaturePane"]["page"] == {
        "kind": frozenset({"top", "quantile"}),
        "start": frozenset({"<number>"}),
    }


def test_every_widget_class_is_declared_once_in_typescript():
    assert set(CLASSES) == set(TS_WIDGETS), "add a `/** @widget module.Class */` interface to js/lib/protocol.ts"
    assert set(CLASSES) == set(TS_MESSAGES), "add a `/** @messages module.Class */` type to js/lib/protocol.ts"


@pytest.mark.parametrize("path", sorted(CLASSES))
def test_synced_traits_match(path):
    traits = _own_synced(CLASSES[path])
    ts = TS_WIDGETS.get(path, {})
    only_py, only_ts = set(traits) - set(ts), set(ts) - set(traits)
    assert not only_py and not only_ts, f"{path}: traits only in Python {only_py}, only in protocol.ts {only_ts}"
    wrong = {name: ts[name] for name, trait in traits.items() if not _kind_matches(trait, ts[name])}
    assert not wrong, f"{path}: trait kinds differ from protocol.ts: {wrong}"


@pytest.mark.parametrize("path", sorted(CLASSES))
def test_messages_match(path):
    table = getattr(CLASSES[path], "MESSAGES", {})
    py = {kind: {name: _py_kinds(spec) for name, spec in fields.items()} for kind, fields in table.items()}
    assert py == TS_MESSAGES.get(path), f"{path}: MESSAGES differs from its union in protocol.ts"


def test_a_changed_side_is_caught():
    """The comparison is not vacuous: a renamed field, a dropped literal and an extra trait all differ."""
    pane = "gemscope_widgets.widgets.feature_pane.FeaturePane"
    page = '{ type: "page"; kind: "top" | "quantile"; start: number }'
    assert page in TEXT
    edited = TEXT.replace(page, '{ type: "page"; kind: "top"; from: number }')
    assert _ts_messages(edited)[pane] != _ts_messages(TEXT)[pane]
    edited = TEXT.replace("  can_steer: boolean;\n", "")
    assert "can_steer" not in _ts_widgets(edited)[pane]


def test_parse_message_checks_types_and_fields():
    table = CLASSES["gemscope_widgets.widgets.steer.Steer"].MESSAGES
    assert parse_message({"type": "add", "feature": 3.0}, table) == ("add", {"feature": 3})
    assert parse_message({"type": "range", "min": -3, "max": 2.5}, table) == ("range", {"min": -3, "max": 2.5})
    for bad in (
        {"type": "add", "feature": 1.5},
        {"type": "add", "feature": True},
        {"type": "add"},
        {"type": "next", "index": 0, "column": "both"},
        {"type": "nope"},
        {"feature": 1},
        ["add"],
        {"type": "range", "min": float("nan"), "max": 1},
    ):
        with pytest.raises(ViewMessageError):
            parse_message(bad, table)


@pytest.mark.parametrize("path", sorted(CLASSES))
def test_every_widget_answers_the_liveness_ping(path):
    assert "ping" in getattr(CLASSES[path], "MESSAGES", {}), f"{path} must answer the view's ping (js/lib/live.ts)"


def test_ping_is_answered_with_pong():
    from gemscope_widgets.widgets.token_view import TokenView

    view = TokenView(["a", "b"])
    sent = []
    view.send = lambda content, buffers=None: sent.append(content)
    view._handle_custom_msg({"type": "ping"}, [])
    view._handle_custom_msg({"type": "bogus"}, [])
    assert sent == [{"type": "pong"}]
