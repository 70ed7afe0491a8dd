"""The layering rule: the torch side (``gemscope_widgets.backend``) never reaches for a widget library.

Checked twice: by reading every module's imports (any import statement, also inside functions), and by
importing every backend module in a fresh interpreter and looking at what got loaded.
"""

from __future__ import annotations

import ast
import json
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
