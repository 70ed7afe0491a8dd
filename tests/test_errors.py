"""User errors read as one short line in a notebook, not a traceback through the library (real kernel)."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _run(cells: list[str], tmp_path) -> list[dict]:
    """Executes ``cells`` in a real IPython kernel (which inherits this process's environment)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    resources = {"metadata": {"path": str(tmp_path)}}
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True, resources=resources)
    client.execute()
    return [o for cell in nb.cells for o in cell.outputs if o["output_type"] == "error"]


def test_gemscope_errors_show_as_one_line_in_a_notebook(tmp_path, monkeypatch):
    monkeypatch.delenv("GEMSCOPE_TRACEBACKS", raising=False)
    errors = _run(
        [
            "from gemscope_widgets.backend.dictionaries.sae import check_feature_index\n"
            "check_feature_index(5000, 4096, 'demo')",
            "from gemscope_widgets.errors import PromptError\n"
            "def inner():\n    raise PromptError('The prompt is empty: pass some text.')\n"
            "inner()",
            "raise KeyError('an ordinary error keeps its traceback')",
        ],
        tmp_path,
    )
    assert len(errors) == 3
    feature, prompt, ordinary = errors
    for error, name in ((feature, "FeatureIndexError"), (prompt, "PromptError")):
        lines = [ANSI.sub("", line) for line in error["traceback"]]
        assert len(lines) == 1 and "\n" not in lines[0], lines
        assert lines[0].startswith(f"{name}: "), lines
        assert error["ename"] == name
    assert "4096" in ANSI.sub("", feature["traceback"][0])
    assert len("".join(ordinary["traceback"]).splitlines()) > 2  # other exceptions are untouched


def test_full_traceback_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMSCOPE_TRACEBACKS", "1")
    (error,) = _run(["from gemscope_widgets.errors import PromptError\nraise PromptError('empty')"], tmp_path)
    text = ANSI.sub("", "\n".join(error["traceback"]))
    assert "Traceback" in text or "---" in text
    assert len(text.splitlines()) > 2


@pytest.mark.parametrize("error", ["PromptError", "FeatureIndexError", "SAELoadError"])
def test_every_user_error_renders_its_name_and_message(error):
    from gemscope_widgets import errors

    exc = getattr(errors, error)("what was wrong; what to do")
    (line,) = exc._render_traceback_()
    assert ANSI.sub("", line) == f"{error}: what was wrong; what to do"
