"""Every notebook in examples/ runs top to bottom (headless, nbclient) without an error."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.fixtures.gemma_scope_files import add_to_hub_cache, write_gemma_scope_sae

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def execute(path: Path, parameters: str | None = None, env: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """Run a notebook; ``parameters`` is injected after the cell tagged ``parameters`` (as papermill does)."""
    nb = nbformat.read(path, as_version=4)
    if parameters:
        index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        nb.cells.insert(index + 1, nbformat.v4.new_code_cell(parameters))
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def outputs_text(nb: nbformat.NotebookNode) -> str:
    return "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


def test_every_example_is_covered():
    assert {p.name for p in EXAMPLES.glob("*.ipynb")} == {"quickstart.ipynb", "gemma-scope-2.ipynb",
                                                          "chat-behaviour.ipynb"}


def test_gemma_scope_2_notebook_runs_on_a_populated_hub_cache(tiny_model_path, tmp_path):
    """The real-workflow notebook, with a tiny -it model and Gemma Scope 2 files standing in on the hub cache."""
    cache = tmp_path / "hub"
    commit = "1" * 40
    add_to_hub_cache(cache, "google/gemma-3-1b-it", "", tiny_model_path, commit)
    for layer in (1, 2):
        folder = f"resid_post/layer_{layer}_width_16k_l0_medium"
        src = write_gemma_scope_sae(
            tmp_path / "src" / folder, kind="sae", site="resid_post", layer=layer, width=256,
            model_name="google/gemma-3-1b-it", seed=layer,
        )
        add_to_hub_cache(cache, "google/gemma-scope-2-1b-it", folder, src, commit)
    nb = execute(
        EXAMPLES / "gemma-scope-2.ipynb",
        parameters=(
            'SAE_FOLDERS = ["resid_post/layer_1_width_16k_l0_medium", "resid_post/layer_2_width_16k_l0_medium"]\n'
            'DEVICE = "cpu"\nMAX_NEW_TOKENS = 6'
        ),
        env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(EXAMPLES.parent)},
    )
    text = outputs_text(nb)
    assert "on harmful requests" in text
    assert "baseline:" in text and "steered:" in text
    widgets = [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in
               o.get("data", {})]
    assert len(widgets) >= 3, "heatmap, feature pane and steering widgets should be displayed"


@pytest.mark.real_model
@pytest.mark.slow
def test_quickstart_notebook_runs_on_the_embedded_default():
    nb = execute(EXAMPLES / "quickstart.ipynb", env={"PYTHONPATH": str(EXAMPLES.parent)})
    widgets = [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in
               o.get("data", {})]
    assert len(widgets) >= 3



@pytest.mark.real_model
def test_chat_behaviour_notebook_runs_on_the_embedded_model(tmp_path):
    """The behaviour workflow on the real 270M; a random SAE of its shape stands in for the demo SAE (no training)."""
    sae = write_gemma_scope_sae(
        tmp_path / "resid_post/layer_6_width_16k_l0_medium", kind="sae", site="resid_post", layer=6, d_in=640,
        width=512, model_name="google/gemma-3-270m", seed=3,
    )
    nb = execute(
        EXAMPLES / "chat-behaviour.ipynb",
        parameters=f"SAE_PATH = {str(sae)!r}",
        env={"PYTHONPATH": str(EXAMPLES.parent)},
    )
    text = outputs_text(nb)
    assert "<- chosen" in text and "refusal rate" in text and "steps kept" in text
    assert "'role': 'assistant'" in text
    widgets = [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in
               o.get("data", {})]
    assert len(widgets) >= 3, "two contrasts and the conversation should be displayed"
