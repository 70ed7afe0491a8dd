"""Rules that keep the package one door with one meaning per name, read from the files themselves.

* The README and every notebook import only from ``gemscope_widgets`` (its code blocks and code cells, parsed),
  and every name they import is one of its public names.
* Every ``GemscopeError`` subclass is defined in ``gemscope_widgets/errors.py``.
* Numbers shown by a view are formatted by ``js/lib/format.ts`` only: no ``toFixed`` / ``toPrecision`` anywhere
  else, drawing coordinates and internal values aside (listed below with why).
* The backend imports the package's own modules at module top (ruff's PLC0415 for our modules); the files that
  may not are listed below with why.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from pathlib import Path

import pytest

import gemscope_widgets

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gemscope_widgets"


# --- one door -------------------------------------------------------------------------------------------------

def readme_code() -> list[tuple[str, str]]:
    """``(where, code)`` of every python code block in README.md."""
    text = (ROOT / "README.md").read_text()
    return [(f"README.md block {i}", m.group(1))
            for i, m in enumerate(re.finditer(r"```python\n(.*?)```", text, re.S))]


def notebook_code() -> list[tuple[str, str]]:
    """``(where, code)`` of every code cell of every notebook in examples/ (IPython magics left out)."""
    out = []
    for path in sorted((ROOT / "examples").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                source = "".join(cell["source"])
                source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))
                out.append((f"{path.name} cell {i}", source))
    return out


def package_imports(code: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import of the package in ``code``."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gemscope_widgets":
            found.append((node.module or "", [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "gemscope_widgets"]
    return found


def test_readme_and_notebooks_import_only_from_the_top_level_package():
    sources = readme_code() + notebook_code()
    assert len(sources) > 20 and any("from gemscope_widgets import" in code for _, code in sources)
    wrong, unknown = [], []
    for where, code in sources:
        for module, names in package_imports(code):
            if module != "gemscope_widgets":
                wrong.append(f"{where}: {module}")
            unknown += [f"{where}: {name}" for name in names if name not in gemscope_widgets.__all__]
    assert not wrong, f"import these from gemscope_widgets instead: {wrong}"
    assert not unknown, f"not public names of gemscope_widgets (add them to _EXPORTS): {unknown}"


def test_the_import_scan_sees_every_form():
    code = ("import gemscope_widgets.backend.x\nfrom gemscope_widgets.backend.y import a\n"
            "def f():\n    from gemscope_widgets import b, c\nimport numpy\n")
    assert package_imports(code) == [("gemscope_widgets.backend.x", []), ("gemscope_widgets.backend.y", ["a"]),
                                     ("gemscope_widgets", ["b", "c"])]


def test_every_public_name_resolves():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        missing = [name for name in gemscope_widgets.__all__ if getattr(gemscope_widgets, name, None) is None]
    assert not missing


def test_a_renamed_public_name_still_works_with_a_deprecation_warning():
    from gemscope_widgets.backend.behaviour.contrast import contrast

    assert gemscope_widgets.contrast_features is contrast
    with pytest.warns(DeprecationWarning, match="contrast_features .*Scope.contrast is the view"):
        assert gemscope_widgets.contrast is contrast
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gemscope_widgets.nope  # noqa: B018


# --- errors defined once --------------------------------------------------------------------------------------

def error_classes_outside_errors_py() -> dict[str, str]:
    """Classes deriving (by name, transitively) from an error class of errors.py, defined in another module."""
    errors_tree = ast.parse((PACKAGE / "errors.py").read_text())
    known = {"GemscopeError"}
    for node in errors_tree.body:
        if isinstance(node, ast.ClassDef):
            known.add(node.name)
    found: dict[str, str] = {}
    changed = True
    trees = {p: ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py") if p.name != "errors.py"}
    while changed:
        changed = False
        for path, tree in trees.items():
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef) or node.name in found:
                    continue
                bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}
                if bases & known:
                    found[node.name] = str(path.relative_to(ROOT))
                    known.add(node.name)
                    changed = True
    return found


def test_every_gemscope_error_is_defined_in_errors_py():
    assert error_classes_outside_errors_py() == {}


def test_errors_keep_their_old_import_paths():
    from gemscope_widgets import errors
    from gemscope_widgets.backend.circuits.attribution import AttributionError
    from gemscope_widgets.backend.circuits.attribution_memory import AttributionMemoryError
    from gemscope_widgets.backend.circuits.replacement import ReplacementError
    from gemscope_widgets.backend.circuits.transcoder_set import TranscoderSetError
    from gemscope_widgets.backend.stats.importers.gemma_scope_examples import ExamplesFormatError
    from gemscope_widgets.backend.stats.importers.neuronpedia import NeuronpediaImportError
    from gemscope_widgets.widgets.circuit_payload import CircuitError
    from gemscope_widgets.widgets.messages import ViewMessageError

    moved = [AttributionError, AttributionMemoryError, ReplacementError, TranscoderSetError, ExamplesFormatError,
             NeuronpediaImportError, CircuitError, ViewMessageError]
    assert all(getattr(errors, c.__name__) is c and issubclass(c, errors.GemscopeError) for c in moved)
    assert issubclass(TranscoderSetError, errors.SAELoadError)


# --- one number format ----------------------------------------------------------------------------------------

NUMBER_METHODS = re.compile(r"\.(toFixed|toPrecision)\(")
NOT_SHOWN = {
    "js/lib/format.ts": "the one number format itself",
    "js/lib/histogram.ts": "SVG coordinates of the histogram's bars (drawing, not text)",
    "js/lib/keys.ts": "rounds a slider value to the step grid (a value sent to the kernel, not text)",
    "js/circuit.ts:lastDrawMs": "the last draw's time in a data attribute for the browser tests (not shown)",
}


def number_formatting_outside_format_ts() -> list[str]:
    hits = []
    for path in sorted((ROOT / "js").rglob("*.ts")):
        rel = str(path.relative_to(ROOT))
        if rel.endswith(".test.ts") or rel in NOT_SHOWN:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if NUMBER_METHODS.search(line) and not any(
                key.startswith(f"{rel}:") and key.split(":", 1)[1] in line for key in NOT_SHOWN
            ):
                hits.append(f"{rel}:{i}: {line.strip()}")
    return hits


def test_shown_numbers_are_formatted_by_format_ts_only():
    hits = number_formatting_outside_format_ts()
    assert not hits, "format shown numbers with formatValue / formatPercent (js/lib/format.ts):\n" + "\n".join(hits)


def test_the_number_scan_sees_a_stray_format():
    assert NUMBER_METHODS.search("`${(100 * p).toFixed(1)}%`") and NUMBER_METHODS.search("x.toPrecision(2)")
    assert not NUMBER_METHODS.search("formatValue(x)")


# --- imports at module top in the backend ---------------------------------------------------------------------

LOCAL_IMPORTS_ALLOWED = {
    "backend/stats/feature_stats.py": "import loop: FeatureStats.scan / load delegate to scan.py and store.py, "
                                      "which build FeatureStats",
    "backend/stats/scan.py": "import loop: the scan builds FeatureStats (feature_stats.py imports the scanner)",
    "backend/stats/store.py": "import loop: the store reads and writes FeatureStats (feature_stats.py loads "
                              "through it)",
    "backend/circuits/graph.py": "import loop: the graph's Neuronpedia and supernode methods delegate to "
                                 "neuronpedia_json.py (supernodes.py imports it), which builds AttributionGraphs",
    "backend/default.py": "the embedded default builds each part on first use only: model conversion, training, "
                          "scans and evaluation load when a part is missing",
    "backend/default_transcoders.py": "as default.py: the demo transcoder set's training loads only when it is "
                                      "missing",
}


def local_own_imports(path: Path) -> list[int]:
    """Lines of imports of the package's own modules inside functions (``if TYPE_CHECKING`` is top level)."""
    lines = []
    for fn in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                own_from = isinstance(node, ast.ImportFrom) and (
                    node.level > 0 or (node.module or "").split(".")[0] == "gemscope_widgets")
                own = isinstance(node, ast.Import) and any(a.name.split(".")[0] == "gemscope_widgets"
                                                           for a in node.names)
                if own_from or own:
                    lines.append(node.lineno)
    return lines


def test_the_backend_imports_its_own_modules_at_module_top():
    offenders = {}
    for path in sorted((PACKAGE / "backend").rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        if rel not in LOCAL_IMPORTS_ALLOWED and (lines := local_own_imports(path)):
            offenders[rel] = lines
    assert not offenders, f"function-local imports of the package's modules (file: lines): {offenders}"
    stale = [rel for rel in LOCAL_IMPORTS_ALLOWED if not local_own_imports(PACKAGE / rel)]
    assert not stale, f"listed as exceptions but import at module top now: {stale}"


def test_the_local_import_scan_sees_them(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import gemscope_widgets.errors\n\ndef f():\n    from gemscope_widgets.backend import x\n"
                     "    import json\n    from . import y\n    import gemscope_widgets.cache as c\n")
    assert local_own_imports(probe) == [4, 6, 7]
