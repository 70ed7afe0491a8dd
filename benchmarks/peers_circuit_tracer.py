"""Peer check of attribution graphs: circuit-tracer 0.5.0 against ``attribute`` on the same model and files.

circuit-tracer pins ``transformers<=4.57.3`` and ``huggingface-hub<1``, so it runs in its own environment built
by ``benchmarks/circuit_tracer_venv.sh`` (``.cache/venv-ct``), in a subprocess that sees only the files written
here: a small random Gemma 3 checkpoint (norm gains spread so they matter) and per-layer transcoders in the exact
Gemma Scope 2 layout (``transcoder_all/layer_{L}_width_{W}_l0_small[_affine]/{config.json,params.safetensors}``),
loaded on that side with circuit-tracer's own ``load_gemma_scope_2_transcoder`` and its nnsight backend.

Run::

    bash benchmarks/circuit_tracer_venv.sh
    python -m benchmarks.peers_circuit_tracer [--out DIR] [--venv .cache/venv-ct]

Compared: active features (same rows in the same order), activations, logit tokens and probabilities, and the
adjacency matrix block by block (feature, error and token columns), as ``max |ours - theirs| / max |ours|``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is Paris, and the capital of Italy is"


# ---------------------------------------------------------------------------------------------------------------
# circuit-tracer side (runs inside the peer environment: torch, safetensors and circuit_tracer only)


def ct_side(spec: dict[str, Any]) -> None:
    """Build circuit-tracer's graph from the files in ``spec`` and write its tensors to ``spec["out"]``."""
    import circuit_tracer
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.transcoder.single_layer_transcoder import TranscoderSet, load_gemma_scope_2_transcoder
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    transcoders = {
        int(layer): load_gemma_scope_2_transcoder(str(Path(folder) / "params.safetensors"), int(layer), device=cpu,
                                                  dtype=torch.float32)
        for layer, folder in spec["folders"].items()
    }
    tset = TranscoderSet(transcoders, feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out",
                         scan="peer-check")
    model = ReplacementModel.from_pretrained_and_transcoders(
        spec["model"], tset, backend="nnsight", device=cpu, dtype=torch.float32
    )
    ids = torch.tensor(spec["ids"], dtype=torch.long)
    graph = attribute(ids, model, max_n_logits=spec["max_logits"], desired_logit_prob=spec["logit_probability"],
                      batch_size=spec["batch_size"], max_feature_nodes=None)
    tensors = {
        "adjacency_matrix": graph.adjacency_matrix.float().contiguous(),
        "active_features": graph.active_features.long().contiguous(),
        "activation_values": graph.activation_values.float().contiguous(),
        "selected_features": graph.selected_features.long().contiguous(),
        "logit_tokens": torch.tensor([t.vocab_idx for t in graph.logit_targets], dtype=torch.long),
        "logit_probabilities": graph.logit_probabilities.float().contiguous(),
        "input_tokens": graph.input_tokens.long().contiguous(),
    }
    import transformers

    save_file(tensors, spec["out"], metadata={
        "circuit_tracer": getattr(circuit_tracer, "__version__", "0.5.0"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    })


# ---------------------------------------------------------------------------------------------------------------
# our side


def build_model(folder: Path) -> Path:
    """The benchmarks' tiny Gemma 3 (4 layers, d_model 64) with RMSNorm gains drawn N(0, 0.3), saved to ``folder``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.tiny import build_tiny_checkpoint

    base = build_tiny_checkpoint(folder.parent / "tiny-base")
    if (folder / "config.json").is_file():
        return folder
    model = AutoModelForCausalLM.from_pretrained(str(base))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(folder)
    return folder


def compare(ours: Any, theirs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Differences between our graph and circuit-tracer's tensors (relative to the largest entry of each block)."""
    out: dict[str, Any] = {}
    same_feats = ours.active_features.shape == theirs["active_features"].shape and torch.equal(
        ours.active_features, theirs["active_features"]
    )
    out["same_active_features"] = bool(same_feats)
    out["n_active"] = [int(ours.n_active), int(theirs["active_features"].shape[0])]
    out["same_logit_tokens"] = bool(torch.equal(ours.logit_tokens, theirs["logit_tokens"]))
    out["same_input_tokens"] = bool(torch.equal(ours.input_tokens, theirs["input_tokens"]))
    if not (same_feats and out["same_logit_tokens"]):
        return out
    out["activation_rel"] = _rel(ours.activation_values, theirs["activation_values"])
    out["logit_probability_rel"] = _rel(ours.logit_probabilities, theirs["logit_probabilities"])
    a, b = ours.adjacency_matrix, theirs["adjacency_matrix"]
    out["adjacency_shape"] = [list(a.shape), list(b.shape)]
    if a.shape != b.shape:
        return out
    blocks = {"features": ours.feature_slice, "errors": ours.error_slice, "tokens": ours.token_slice}
    for name, cols in blocks.items():
        out[f"adjacency_rel_{name}"] = _rel(a[:, cols], b[:, cols])
    out["adjacency_rel"] = _rel(a, b)
    # Token columns: circuit-tracer dots the gradient at the scaled embedding with the unscaled embedding row.
    scale = float(theirs.get("embed_scale", torch.tensor(0.0)))
    if scale:
        out["adjacency_rel_tokens_times_embed_scale"] = _rel(a[:, ours.token_slice], b[:, ours.token_slice] * scale)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / a.double().abs().max().clamp(min=1e-30))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "peer-circuit-tracer")
    parser.add_argument("--venv", type=Path, default=Path(os.environ.get("CT_VENV", ROOT / ".cache" / "venv-ct")))
    parser.add_argument("--ct-side", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ct_side:
        ct_side(json.loads(args.ct_side.read_text()))
        return 0

    from safetensors.torch import load_file

    from benchmarks.transcoder_fixture import write_calibrated_set
    from gemscope_widgets.backend.circuits.attribution import attribute
    from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
    from gemscope_widgets.backend.gemma.model import load_model

    python = args.venv / "bin" / "python"
    if not python.is_file():
        print(f"No circuit-tracer environment at {args.venv}: run bash benchmarks/circuit_tracer_venv.sh first.")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(args.out / "model")
    gm = load_model(model_dir, device="cpu", dtype="float32", name="tiny-gemma-3")
    ids = gm.prompt(PROMPT).input_ids
    report: dict[str, Any] = {"prompt": PROMPT, "n_tokens": len(ids)}
    for affine in (True, False):
        name = "affine" if affine else "plain"
        root = args.out / f"transcoders-{name}"
        if not root.exists():
            write_calibrated_set(gm, root, width=256, l0=10, affine=affine, seed=7 if affine else 8)
        tset = load_transcoders(root, affine=affine)
        ours = attribute(gm, tset, ids, max_feature_nodes=None, batch_size=64, progress=False)
        spec = {
            "model": str(model_dir),
            "folders": {str(layer): str(Path(tset.by_layer[layer].config.path)) for layer in tset.layers},
            "ids": ids.tolist(),
            "max_logits": 10,
            "logit_probability": 0.95,
            "batch_size": 64,
            "out": str(args.out / f"ct-{name}.safetensors"),
        }
        spec_path = args.out / f"spec-{name}.json"
        spec_path.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--ct-side", str(spec_path)],
                              capture_output=True, text=True, env=env, cwd=str(args.out))
        if proc.returncode != 0:
            report[name] = {"error": proc.stderr[-4000:]}
            print(f"[{name}] circuit-tracer failed:\n{proc.stderr[-4000:]}")
            continue
        theirs = load_file(spec["out"])
        theirs["embed_scale"] = torch.tensor(float(gm.embed.embed_scale))
        report[name] = compare(ours, theirs)
        print(f"[{name}]", json.dumps(report[name], indent=1))
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
