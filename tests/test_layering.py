"""The layering rule: the torch side (``gemscope_widgets.backend``) never reaches for a widget library or the
layers above it.

Checked by reading every module's imports (any import statement, also inside functions), by importing every
backend module in a fresh interpreter and looking at what got loaded, and by reading every backend file for the
upper layers' names (strings, ``importlib`` calls and comments included).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gemscope_widgets"
BACKEND = PACKAGE / "backend"
WIDGET_LIBRARIES = ("anywidget", "traitlets", "ipywidgets", "ipykernel", "comm")
UPPER_LAYERS = ("gemscope_widgets.widgets", "gemscope_widgets.scope")


def backend_modules() -> list[str]:
    return sorted(
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in BACKEND.rglob("*.py")
    )


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_backend_module_imports_a_widget_library_or_an_upper_layer():
    offenders = {}
    for path in sorted(BACKEND.rglob("*.py")):
        bad = sorted(
            name for name in imported_names(path)
            if name.split(".")[0] in WIDGET_LIBRARIES or name.startswith(UPPER_LAYERS)
        )
        if bad:
            offenders[str(path.relative_to(PACKAGE.parent))] = bad
    assert not offenders, f"backend modules import widget code: {offenders}"


def test_the_scan_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import traitlets\n    from anywidget import AnyWidget\n")
    assert {"traitlets", "anywidget"} <= imported_names(probe)


def test_importing_the_whole_backend_loads_no_widget_library():
    modules = backend_modules()
    assert len(modules) > 20
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {WIDGET_LIBRARIES!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing the backend loaded {loaded}"


# Names of the upper layers, however written: "gemscope_widgets.widgets.circuit", "gemscope_widgets . scope", ...
UPPER_LAYER_NAME = re.compile(r"gemscope_widgets\s*\.\s*(widgets|scope)\b")
# The only backend module that imports by a name it is given: the view registry, whose names come from the
# package's __init__ (the layer above), never from the backend.
DYNAMIC_IMPORTERS = {"backend/views.py"}


def _dynamic_imports(path: Path) -> list[int]:
    """Lines of ``importlib.import_module(...)``, ``__import__(...)`` and ``importlib.util`` loader calls."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__", "spec_from_file_location", "find_spec"):
                lines.append(node.lineno)
    return lines


def test_no_backend_file_names_an_upper_layer_even_in_a_string():
    """Not in an import, a string, an ``importlib`` call, a docstring or a comment: the backend cannot reach the
    widgets or the Scope by name at all (``graph.widget()`` asks the view registry instead)."""
    offenders = {}
    for path in sorted(BACKEND.rglob("*.py")):
        hits = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if UPPER_LAYER_NAME.search(line)]
        if hits:
            offenders[str(path.relative_to(PACKAGE))] = hits
    assert not offenders, f"backend files naming gemscope_widgets.widgets / .scope (file: lines): {offenders}"


def test_only_the_view_registry_imports_modules_by_name():
    offenders = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(BACKEND.rglob("*.py"))
        if (lines := _dynamic_imports(path)) and str(path.relative_to(PACKAGE)) not in DYNAMIC_IMPORTERS
    }
    assert not offenders, f"backend modules importing by a computed name (file: lines): {offenders}"


def test_the_name_scans_see_what_they_look_for(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""See :class:`~gemscope_widgets.scope.Scope`."""\nimport importlib\n'
                     'VIEW = "gemscope_widgets . widgets.circuit"\nimportlib.import_module(VIEW)\n')
    found = [bool(UPPER_LAYER_NAME.search(line)) for line in probe.read_text().splitlines()]
    assert found == [True, False, True, False]
    assert _dynamic_imports(probe) == [4]


def test_graph_widget_gets_its_view_from_the_registry_the_package_fills():
    """The circuit view is registered by the package's __init__ (the layer above), and only built when asked."""
    script = (
        "import sys\n"
        "from gemscope_widgets.backend.circuits.graph import AttributionGraph\n"
        "from gemscope_widgets.backend.views import _VIEWS, view_factory\n"
        "assert 'gemscope_widgets.widgets.circuit' not in sys.modules\n"
        "assert _VIEWS['AttributionGraph'] == 'gemscope_widgets.widgets.circuit:graph_view', _VIEWS\n"
        "from gemscope_widgets.widgets.circuit import graph_view\n"
        "assert view_factory('AttributionGraph') is graph_view\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# --- widgets are relays: no torch, no threads --------------------------------------------------------------

WIDGETS = PACKAGE / "widgets"
RELAY_FORBIDDEN = ("torch", "threading", "_thread", "concurrent")
"""A view turns backend results into traits and calls the backend: tensor maths and worker threads live there
(``backend/jobs.py`` runs background work)."""
RELAY_EXCEPTIONS: dict[str, tuple[str, str]] = {}
"""Modules that still break the rule: name -> (the forbidden import, why). Remove an entry once it is fixed."""


def test_widgets_import_neither_torch_nor_threading():
    offenders, stale = {}, []
    for path in sorted(WIDGETS.glob("*.py")):
        bad = sorted(n for n in imported_names(path) if n.split(".")[0] in RELAY_FORBIDDEN)
        allowed = RELAY_EXCEPTIONS.get(path.name, ("", ""))[0]
        if allowed and allowed not in bad:
            stale.append(path.name)
        bad = [n for n in bad if n.split(".")[0] != allowed]
        if bad:
            offenders[path.name] = bad
    assert not offenders, f"widgets modules importing tensor maths or threads (move it to the backend): {offenders}"
    assert not stale, f"these modules keep the rule now: remove them from RELAY_EXCEPTIONS: {stale}"
    assert {"feature_pane.py", "steer.py", "chat.py"} <= {p.name for p in WIDGETS.glob("*.py")}
