"""Every notebook in examples/ (found, not listed) runs top to bottom (headless, nbclient) without an error."""

from __future__ import annotations

import os
import re
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


def widget_outputs(nb: nbformat.NotebookNode) -> list:
    return [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in
            o.get("data", {})]


def run_gemma_scope_2(path: Path, tiny_model_path: Path, tmp_path: Path) -> None:
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
        path,
        parameters=(
            'SAE_FOLDERS = ["resid_post/layer_1_width_16k_l0_medium", "resid_post/layer_2_width_16k_l0_medium"]\n'
            'DEVICE = "cpu"\nMAX_NEW_TOKENS = 6'
        ),
        env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(EXAMPLES.parent)},
    )
    text = outputs_text(nb)
    assert "on harmful requests" in text
    assert "baseline:" in text and "steered:" in text
    assert len(widget_outputs(nb)) >= 3, "heatmap, feature pane and steering widgets should be displayed"


def run_on_the_embedded_default(path: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    """A notebook that needs no stand-ins: it runs on the embedded 270M and shows its widgets."""
    nb = execute(path, env={"PYTHONPATH": str(EXAMPLES.parent)})
    assert widget_outputs(nb), f"{path.name} displays no widget"


def run_chat_behaviour(path: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    """The behaviour workflow on the real 270M; a random SAE of its shape stands in for the demo SAE (no training)."""
    sae = write_gemma_scope_sae(
        tmp_path / "resid_post/layer_6_width_16k_l0_medium", kind="sae", site="resid_post", layer=6, d_in=640,
        width=512, model_name="google/gemma-3-270m", seed=3,
    )
    nb = execute(path, parameters=f"SAE_PATH = {str(sae)!r}", env={"PYTHONPATH": str(EXAMPLES.parent)})
    text = outputs_text(nb)
    assert "<- chosen" in text and "refusal rate" in text and "steps kept" in text
    assert "'role': 'assistant'" in text
    assert len(widget_outputs(nb)) >= 3, "two contrasts and the conversation should be displayed"


def run_circuits(path: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    """The circuits walkthrough on the real 270M and the cached demo transcoder set: what its text says holds.

    Each traced path is a source at the name's token (the token itself, or an earlier-layer feature there) ->
    a feature at that same position -> the top logit at the last position;
    clamping the path's feature to 0 lowers the top logit's probability, and clamping the control (a feature of
    little influence at the same token) changes it far less.
    """
    nb = execute(path, env={"PYTHONPATH": str(EXAMPLES.parent)})
    text = outputs_text(nb)
    source, feature = r"^(?:token|L\d+ #\d+) @(\d+) .*\n", r"\s+--[-+.\d]+-->  L\d+ #\d+ @(\d+) .*\n"
    paths = re.findall(source + feature + r"\s+--([-+.\d]+)-->  logit ", text, flags=re.M)
    n_pos = [int(n) for n in re.findall(r"^AttributionGraph\(.*?, (\d+) positions", text, flags=re.M)]
    assert len(paths) == len(n_pos) == 2, f"two graphs, two source -> feature -> logit paths expected:\n{text}"
    for (token_pos, feature_pos, weight), n in zip(paths, n_pos):
        assert token_pos == feature_pos and int(feature_pos) < n - 1 and float(weight) > 0, text
    drops = {
        name: [float(b) - float(a) for b, a in re.findall(rf"^{name}: clamp to 0: .* ([.\d]+) -> ([.\d]+)$", text,
                                                          flags=re.M)]
        for name in ("path", "control")
    }
    assert len(drops["path"]) == len(drops["control"]) == 2, text
    for path_drop, control_drop in zip(drops["path"], drops["control"]):
        assert path_drop > 0.1 and abs(control_drop) < path_drop / 4, text
    # With every layer constrained the real model moves each target's input by the graph's edge weight.
    frozen = re.search(r"targets moved by their edge weights, max relative error ([-+.\de]+)$", text, flags=re.M)
    assert frozen and float(frozen.group(1)) < 1e-4, text
    assert re.search(r"^group clamped to 0: +'", text, flags=re.M), text
    # The head that carries the name to the last position: removing its attention edge to the name moves the top
    # logit far more than the same ablation on the layer's other heads or at the control key.
    rows = re.findall(r"^  L\d+\.H\d+ key \d+ \((ablated|control head|control key)\) +A=[.\d]+ +([-+.\d]+)$", text,
                      flags=re.M)
    ablated = [float(d) for what, d in rows if what == "ablated"]
    controls = [abs(float(d)) for what, d in rows if what != "ablated"]
    assert len(ablated) == 1 and len(controls) >= 3, text
    assert ablated[0] < 0 and max(controls) < abs(ablated[0]) / 4, text
    assert re.search(r"^QKAttribution\(layer \d+ head \d+, query \d+ -> key \d+: score", text, flags=re.M), text
    assert len(re.findall(r"^(?:key-side feature|  its control   ) .* set to 0: .* => [.\d]+$", text, flags=re.M)) >= 2
    assert len(widget_outputs(nb)) >= 2, "both circuits should be displayed"


def run_behaviour_evidence(path: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    """The evidence workflow on the embedded 270M and demo SAE, on small sets: every part prints its result."""
    nb = execute(path, parameters="N_PER_SET = 8\nMAX_NEW_TOKENS = 4\nENTITIES_PER_TYPE = 3",
                 env={"PYTHONPATH": str(EXAMPLES.parent)})
    text = outputs_text(nb)
    assert "held-out AUROC" in text and "learning curve" in text, text
    assert "Causal check:" in text and "random, matched density" in text, text
    assert "Topic control:" in text and "sycophancy: causal check" in text, text
    known = re.search(r"The 270M knows (\d+) of the (\d+) real entities", text)
    assert known and int(known.group(2)) == 9 and 0 <= int(known.group(1)) <= 9, text
    # The probe view (its steering widget joins the panel when a latent is picked; tests/widgets cover that).
    shown = [o["data"]["text/plain"] for o in widget_outputs(nb)]
    assert [t for t in shown if t.startswith("ProbePanel(")], f"the probe view should be displayed: {shown}"


# Notebooks with their own runner: stand-ins (tiny model, a populated hub cache) instead of the embedded default,
# or checks that what the notebook's text says is what its outputs show.
STAND_INS = {
    "gemma-scope-2.ipynb": run_gemma_scope_2,
    "chat-behaviour.ipynb": run_chat_behaviour,
    "circuits.ipynb": run_circuits,
    "behaviour-evidence.ipynb": run_behaviour_evidence,
}
# Those that still run the real embedded 270M (at most the SAE is stood in for).
ON_THE_REAL_MODEL = {"chat-behaviour.ipynb", "circuits.ipynb", "behaviour-evidence.ipynb"}
SLOW = {"circuits.ipynb", "behaviour-evidence.ipynb"}
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def _case(path: Path):
    if path.name in STAND_INS:
        marks = [pytest.mark.real_model] if path.name in ON_THE_REAL_MODEL else []
        marks += [pytest.mark.slow] if path.name in SLOW else []
        return pytest.param(path, id=path.stem, marks=marks)
    return pytest.param(path, id=path.stem, marks=[pytest.mark.real_model, pytest.mark.slow])


def test_examples_are_found():
    assert NOTEBOOKS, f"no notebook found in {EXAMPLES}"
    assert set(STAND_INS) <= {p.name for p in NOTEBOOKS}, "a stand-in is registered for a notebook that is gone"


@pytest.mark.parametrize("path", [_case(p) for p in NOTEBOOKS])
def test_example_notebook_runs(path: Path, tiny_model_path, tmp_path):
    STAND_INS.get(path.name, run_on_the_embedded_default)(path, tiny_model_path, tmp_path)
