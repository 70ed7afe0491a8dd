"""A notebook saved with JupyterLab's default settings (widget state not saved) shows each widget's static
rendering when its widget models are gone: reopened with no kernel (an untrusted copy: JupyterLab shows the
``text/html``), and reopened with its kernel or reloaded (trusted: the package's JupyterLab plugin,
js/labextension/plugin.ts, shows the ``text/html`` where the widget view would say "model not found"). The heatmap's
colours, the pane's summary, the steering texts, the circuit's drawn graph with its pinned node; token and label
text stays text (no element, no script from it)."""

from __future__ import annotations

import json
import re

import nbformat
import pytest

from tests.fixtures.tiny_scope import KERNEL_SETUP

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
SETUP = KERNEL_SETUP
HEATMAP = f'hm = scope.heatmap("Paris is the capital. {XSS}", top_n=6, progress=False)\nhm'
PANE = "pane = scope.feature(hm.top_features(0)[0])\npane"
STEER = 'w = scope.steer("The quick brown fox", {3: 30.0}, max_new_tokens=5, stop_at_eos=False)\nw'
# A graph whose tokens, feature labels and logits are markup (XSS probes), with its top feature pinned at a node
# threshold that would hide it otherwise.
CIRCUIT = """from tests.fixtures.graphs import synthetic_graph
from gemscope_widgets.widgets.circuit import Circuit
g = synthetic_graph(n_features=60, n_edges=600, seed=3)
cw = Circuit.build(g, node_threshold=0.0)
top = int(g.node_influence()[: g.n_selected].argmax())
cw.pinned = [top]
cw"""

_SAVE = "await window.jupyterapp.commands.execute('docmanager:save'); return true;"


def test_saved_without_widget_state_reopens_with_static_views(lab_server, page):
    from playwright.sync_api import expect

    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    path = lab_server.open_and_run(page, "saved.ipynb", [SETUP, HEATMAP, PANE, STEER, CIRCUIT])
    expect(page.locator(".gs-steered .gs-token")).to_have_count(5, timeout=60_000)
    steered = json.loads(lab_server.run_code(page, "import json; print(json.dumps(w.steered_tokens))"))
    feature = int(lab_server.run_code(page, "print(pane.feature)"))
    pinned = lab_server.run_code(page, "print('L{0} #{2} @{1}'.format(*g.selected_active_features[top].tolist()))")
    lab_server._execute(page, _SAVE, {}, 60_000, "save the notebook")

    # Saved as JupyterLab saves by default: the widget views without their state, and our static HTML.
    nb = nbformat.read(path, as_version=4)
    assert not nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state")
    data = [o["data"] for c in nb.cells[1:5] for o in c.outputs if o.get("output_type") == "execute_result"]
    assert len(data) == 4 and all("text/html" in d and "application/vnd.jupyter.widget-view+json" in d for d in data)

    # Reopen with no kernel: a kernel name and language that do not exist (JupyterLab would start any kernel of the
    # notebook's language), and "No Kernel" chosen.
    nb.metadata["kernelspec"] = {"name": "no-such-kernel", "display_name": "none", "language": "no-such-language"}
    nb.metadata["language_info"] = {"name": "no-such-language"}
    nbformat.write(nb, lab_server.root_dir / "reopened.ipynb")
    lab_server.shutdown_kernels()
    page.goto(f"{lab_server.url}/lab/workspaces/reopen/tree/reopened.ipynb?reset&token={lab_server.token}")
    statics = page.locator(".jp-OutputArea-output .gs-static")
    expect(statics).to_have_count(4, timeout=120_000)
    page.locator(".jp-Dialog button:has-text('No Kernel')").click(timeout=60_000)

    heatmap, pane, steer, circuit = statics.nth(0), statics.nth(1), statics.nth(2), statics.nth(3)
    # Heatmap: the text coloured by its strongest feature, a shaded grid, the XSS token as plain text.
    shaded = heatmap.locator("span[style*='background-color'], td[style*='background-color']")
    assert shaded.count() >= 5
    tokens = heatmap.locator("div[style*='pre-wrap']").first  # inline styles survive the notebook's sanitiser
    assert tokens.evaluate("e => getComputedStyle(e).whiteSpace") == "pre-wrap"
    strongest = shaded.first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert strongest.startswith("rgba(244, 81, 30")
    assert XSS in heatmap.text_content()
    assert page.locator(".jp-OutputArea img").count() == 0
    # Pane: its feature and logit lists.
    expect(pane).to_contain_text(f"Feature {feature}")
    expect(pane).to_contain_text("Promotes")
    # Steering: both texts as the kernel had them.
    expect(steer).to_contain_text("baseline")
    assert "".join(steered).replace("\n", "↵\n") in steer.text_content()
    # Circuit: what the view drew (only tokens, logits and the pin at node threshold 0), the pin marked, every
    # token, label and logit string as text.
    expect(circuit).to_contain_text("Most influential nodes")
    expect(circuit).to_contain_text(pinned.strip())
    expect(circuit).to_contain_text("pinned")
    circuit_text = circuit.text_content()
    probes = ["<img src=x onerror=alert(1)>", "</script><script>alert(2)</script>", "<script>alert('label')</script>"]
    assert all(probe in circuit_text for probe in probes)
    assert circuit.locator("script, img, iframe").count() == 0
    # Nothing falls back to the object repr.
    assert "object at 0x" not in page.locator(".jp-Notebook").text_content()
    assert alerts == []
    page.locator(".jp-Notebook").scroll_into_view_if_needed()
    lab_server.screenshot(page, "saved_notebook_static")

    # Trusted, still with no kernel: JupyterLab now prefers the widget views, which wait for a widget manager that
    # never comes ("Loading widget..."); the package's plugin shows the same static renderings, saying why.
    assert page.evaluate("() => !window.jupyterapp.shell.currentWidget.sessionContext.session")
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:trust'); }")
    page.locator(".jp-Dialog button.jp-mod-accept").click()
    notes = page.locator(".jp-OutputArea-output .gs-saved-note")
    expect(notes).to_have_count(4, timeout=30_000)
    expect(notes.first).to_have_text(re.compile(r"^Saved rendering: no kernel is connected"))
    expect(statics).to_have_count(4)
    expect(statics.nth(2)).to_contain_text("baseline")
    _no_model_errors(page, range(1, 5))
    assert page.locator(".jp-OutputArea img, .jp-OutputArea script").count() == 0 and alerts == []


def _no_model_errors(page, cells: range) -> None:
    """The views' cells say nothing of a missing model (the set-up cell's progress bars are ipywidgets of their own:
    without state they do)."""
    for i in cells:
        text = page.locator(".jp-Notebook .jp-Cell").nth(i).locator(".jp-OutputArea").text_content()
        assert "model not found" not in text and "Loading widget" not in text, f"cell {i}: {text[:200]}"


def test_saved_notebook_reopened_with_its_kernel_shows_saved_renderings(lab_server, page):
    """The normal case: saved with JupyterLab's defaults (a trusted notebook, no widget state), closed, its kernel
    shut down, reopened with the default kernel, then reloaded. The widget views' models are gone from the new
    kernel; each output shows its static rendering under the saved-rendering line, never "model not found"."""
    from playwright.sync_api import expect

    path = lab_server.open_and_run(page, "reopen.ipynb", [SETUP, HEATMAP, STEER])
    expect(page.locator(".gs-steered .gs-token")).to_have_count(5, timeout=60_000)
    steered = "".join(json.loads(lab_server.run_code(page, "import json; print(json.dumps(w.steered_tokens))")))
    lab_server._execute(page, _SAVE, {}, 60_000, "save the notebook")
    nb = nbformat.read(path, as_version=4)
    assert not nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state")
    lab_server.close_notebook(page)
    lab_server.shutdown_kernels()

    lab_server.open_notebook(page, "reopen.ipynb")  # a new kernel, none of the widget models
    for when in ("reopened", "reloaded"):
        statics = page.locator(".jp-OutputArea-output .gs-static")
        expect(statics).to_have_count(2, timeout=60_000)
        notes = page.locator(".jp-OutputArea-output .gs-saved-note")
        expect(notes).to_have_count(2)
        expect(notes.first).to_have_text(re.compile(r"^Saved rendering: the live widget was not saved"))
        heatmap, steer = statics.nth(0), statics.nth(1)
        expect(heatmap).to_contain_text("Feature heatmap")
        assert heatmap.locator("span[style*='background-color']").count() >= 1
        assert XSS in heatmap.text_content() and page.locator(".jp-OutputArea img").count() == 0
        expect(steer).to_contain_text("baseline")
        assert steered.replace("\n", "↵\n") in steer.text_content()
        _no_model_errors(page, range(1, 3))
        lab_server.screenshot(page, f"saved_notebook_{when}")
        if when == "reopened":
            lab_server.reload_notebook(page, "reopen.ipynb")

    # Running a view's cell again gives the live view in place of the saved rendering.
    lab_server.run_cell(page, 0)
    lab_server.run_cell(page, 1)
    heatmap_cell = page.locator(".jp-Notebook .jp-Cell").nth(1)
    expect(heatmap_cell.locator(".gs-root")).to_have_count(1, timeout=60_000)
    expect(heatmap_cell.locator(".gs-saved-note, .gs-static")).to_have_count(0)
    expect(page.locator(".jp-OutputArea-output .gs-saved-note")).to_have_count(1)
