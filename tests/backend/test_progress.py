"""The progress bar of long work leaves a true line in a saved notebook, never the frozen first frame."""

from __future__ import annotations

import nbformat
import pytest
from tqdm import tqdm

from gemscope_widgets.backend.progress import progress_bar

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

CELL = """\
from gemscope_widgets.backend.progress import progress_bar
for _ in progress_bar(range(5), desc="finished"):
    pass
for _ in progress_bar(range(5), desc="inner", leave=False):
    pass
bar = progress_bar(total=9, desc="cut short")
bar.update(3)
bar.close()
"""


@pytest.fixture(scope="module")
def outputs():
    nbclient = pytest.importorskip("nbclient")  # a test extra: the lowest-versions run installs only pytest
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(CELL)]
    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3").execute()
    return notebook.cells[0].outputs


def test_no_bar_output_survives_its_close(outputs):
    # A saved notebook has no widget state: an ipywidgets bar left in the outputs shows its first frame ("0/5").
    assert all(WIDGET_VIEW not in output.get("data", {}) for output in outputs), outputs
    texts = [output["data"]["text/plain"] for output in outputs]
    assert len(texts) == 3
    assert texts[0].startswith("finished: 5/5 [")
    assert texts[1] == ""  # leave=False: nothing stays
    assert texts[2].startswith("cut short: 3/9 [") and "stopped at 3 of 9" in texts[2]


def test_outside_a_kernel_it_is_plain_tqdm():


    with progress_bar(total=3, desc="plain") as bar:
        assert not hasattr(bar, "container")  # no widget outside a kernel
        bar.update(3)
    assert isinstance(bar, tqdm) and bar.n == 3
