"""ViewWidget: messages dispatched by table, one error report, the ping answered; tables that disagree refused."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any, ClassVar

import anywidget
import pytest
import traitlets

import gemscope_widgets.widgets as widgets_pkg
from gemscope_widgets.errors import GemscopeError, ViewMessageError
from gemscope_widgets.widgets.base import ViewWidget, error_text
from gemscope_widgets.widgets.messages import PING, MessageTable


class Probe(ViewWidget):
    _esm = "export default { render() {} }"
    MESSAGES: ClassVar[MessageTable] = {"open": {"feature": (int,)}, "boom": {}, "ping": PING}
    HANDLERS: ClassVar[dict[str, str]] = {"open": "show", "boom": "_boom"}
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        self.shown: list[int] = []
        super().__init__(**kwargs)

    def show(self, feature: int) -> None:
        self.shown.append(feature)

    def _boom(self) -> None:
        raise KeyError("not reported")

    def static_html(self) -> str:
        return "<div></div>"


def sent_by(widget: ViewWidget, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    sent: list[Any] = []
    monkeypatch.setattr(widget, "send", lambda content, buffers=None: sent.append(content))
    return sent


def test_messages_reach_their_handler_with_checked_fields(monkeypatch):
    w = Probe()
    sent = sent_by(w, monkeypatch)
    w._on_custom_msg(w, {"type": "open", "feature": 3.0}, [])  # a JavaScript number arrives as a float
    assert w.shown == [3] and isinstance(w.shown[0], int) and w.error == ""
    w._on_custom_msg(w, {"type": "ping"}, [])
    assert sent == [{"type": "pong"}] and w.shown == [3]


def test_a_bad_message_is_reported_in_the_error_line_and_nothing_runs(monkeypatch):
    w = Probe()
    sent_by(w, monkeypatch)
    w._on_custom_msg(w, {"type": "open", "feature": 1.5}, [])
    assert "whole number" in w.error and w.shown == []
    w._on_custom_msg(w, {"type": "nope"}, [])
    assert "unknown message 'nope'" in w.error


def test_only_reported_exceptions_are_caught():
    w = Probe()
    with pytest.raises(KeyError):
        w._on_custom_msg(w, {"type": "boom"}, [])


def test_a_view_without_an_error_line_logs_the_error(caplog):
    class Quiet(ViewWidget):
        _esm = "export default { render() {} }"

        def static_html(self) -> str:
            return ""

    w = Quiet()
    w._on_custom_msg(w, {"type": "open", "feature": 1}, [])
    assert not hasattr(w, "error")
    assert any("unknown message 'open'" in r.getMessage() for r in caplog.records)


def test_tables_that_disagree_are_refused_when_the_class_is_defined():
    with pytest.raises(ViewMessageError, match=r"without a handler: \['open'\]"):
        type("NoHandler", (ViewWidget,), {"MESSAGES": {"open": {}, "ping": PING}})
    with pytest.raises(ViewMessageError, match=r"do not exist: \['_gone'\]"):
        type("NoMethod", (ViewWidget,), {"MESSAGES": {"open": {}, "ping": PING}, "HANDLERS": {"open": "_gone"}})
    with pytest.raises(ViewMessageError, match="'ping' in MESSAGES: False"):
        type("NoPing", (ViewWidget,), {"MESSAGES": {}})


def test_error_text():
    assert error_text(GemscopeError("Pass a prompt.")) == "Pass a prompt."
    assert error_text(ValueError("bad")) == "ValueError: bad"


# --- rules over the package's views -------------------------------------------------------------------------------

def package_views() -> dict[str, type]:
    """Every anywidget view class of gemscope_widgets.widgets (a class with its own bundle), by dotted path."""
    found = {}
    for info in pkgutil.iter_modules(widgets_pkg.__path__):
        module = importlib.import_module(f"{widgets_pkg.__name__}.{info.name}")
        for _name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, anywidget.AnyWidget) and cls.__module__ == module.__name__ and hasattr(cls, "_esm"):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


VIEWS = package_views()


def test_every_view_is_a_view_widget():
    assert len(VIEWS) >= 7
    outside = sorted(path for path, cls in VIEWS.items() if not issubclass(cls, ViewWidget))
    assert not outside, f"subclass gemscope_widgets.widgets.base.ViewWidget (dispatch, errors, ping): {outside}"


@pytest.mark.parametrize("path", sorted(VIEWS))
def test_every_handler_takes_its_messages_fields(path):
    """Each handler can be called with exactly the fields its message carries (keywords), nothing missing."""
    cls = VIEWS[path]
    for kind, method in cls.HANDLERS.items():
        signature = inspect.signature(getattr(cls, method))
        fields = dict.fromkeys(cls.MESSAGES[kind], 0)
        try:
            signature.bind(object(), **fields)
        except TypeError as exc:
            raise AssertionError(f"{path}: {method}() cannot take the {kind!r} fields {list(fields)}") from exc


def test_no_widget_module_imports_the_scope():
    """Views are built from a Workspace: the widgets never reach back for the Scope (the facade above them)."""
    offenders = []
    for path in sorted(Path(widgets_pkg.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            relative = isinstance(node, ast.ImportFrom) and node.level == 2 and node.module == "scope"
            if relative or any(n == "gemscope_widgets.scope" for n in names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, f"widgets importing the Scope (take a Workspace instead): {offenders}"
