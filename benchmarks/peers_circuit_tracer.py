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
    from circuit_tracer.transcoder.cross_layer_transcoder import load_gemma_scope_2_clt
    from circuit_tracer.transcoder.single_layer_transcoder import TranscoderSet, load_gemma_scope_2_transcoder
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    hooks = {"feature_input_hook": "mlp.hook_in", "feature_output_hook": "hook_mlp_out"}
    if spec.get("clt"):
        folder = Path(spec["clt"])
        files = sorted(folder.glob("params_layer_*.safetensors"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        paths = {i: str(p) for i, p in enumerate(files)}
        # load_gemma_scope_2_clt reads range(max(paths)), i.e. it drops the last layer; one extra key makes it
        # read them all.
        paths[len(files)] = str(files[-1])
        tset = load_gemma_scope_2_clt(paths, scan="peer-check", device=cpu, dtype=torch.float32, **hooks)
    else:
        transcoders = {
            int(layer): load_gemma_scope_2_transcoder(str(Path(folder) / "params.safetensors"), int(layer),
                                                      device=cpu, dtype=torch.float32)
            for layer, folder in spec["folders"].items()
        }
        tset = TranscoderSet(transcoders, scan="peer-check", **hooks)
    model = ReplacementModel.from_pretrained_and_transcoders(
        spec["model"], tset, backend="nnsight", device=cpu, dtype=torch.float32
    )
    ids = torch.tensor(spec["ids"], dtype=torch.long)
    graph = attribute(ids, model, max_n_logits=spec["max_logits"], desired_logit_prob=spec["logit_probability"],
                      batch_size=spec["batch_size"], max_feature_nodes=spec.get("max_feature_nodes"))
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


def ct_time(spec: dict[str, Any]) -> None:
    """Time circuit-tracer's ``attribute`` + ``prune_graph`` on the model and transcoder folders of ``spec``; print
    one JSON line (seconds, peak RSS above the RSS after loading, graph sizes, logit tokens for the sanity check).
    """
    import resource
    import time

    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import prune_graph
    from circuit_tracer.transcoder.single_layer_transcoder import TranscoderSet, load_gemma_scope_2_transcoder

    torch.manual_seed(0)
    torch.set_num_threads(int(spec["threads"]))
    cpu = torch.device("cpu")
    transcoders = {
        int(layer): load_gemma_scope_2_transcoder(str(Path(folder) / "params.safetensors"), int(layer),
                                                  device=cpu, dtype=torch.float32)
        for layer, folder in spec["folders"].items()
    }
    tset = TranscoderSet(transcoders, scan="benchmark", feature_input_hook="mlp.hook_in",
                         feature_output_hook="hook_mlp_out")
    model = ReplacementModel.from_pretrained_and_transcoders(
        spec["model"], tset, backend="nnsight", device=cpu, dtype=torch.float32
    )
    ids = torch.tensor(spec["ids"], dtype=torch.long)
    with open("/proc/self/statm") as fh:
        rss0 = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    graph = attribute(ids, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=spec["batch_size"],
                      max_feature_nodes=spec["max_feature_nodes"], verbose=False)
    pruned = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss / 1024
    print(json.dumps({
        "kind": "circuit_tracer", "tokens": len(spec["ids"]), "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu0,
        "peak_mb_above_loaded": max(0.0, peak - max(peak0, rss0)),
        "n_active": int(graph.active_features.shape[0]), "n_selected": int(graph.selected_features.numel()),
        "n_nodes": int(graph.adjacency_matrix.shape[0]), "kept_nodes": int(pruned.node_mask.sum()),
        "kept_edges": int(pruned.edge_mask.sum()),
        "logit_tokens": [int(t.vocab_idx) for t in graph.logit_targets],
        "logit_probabilities": [float(p) for p in graph.logit_probabilities],
        "selected": graph.active_features[graph.selected_features].tolist(),
    }))


def peer_readable(folder: Path) -> Path:
    """Make a checkpoint written by transformers 5 readable by transformers 4.57 (circuit-tracer's side), in place.

    The tokenizer config: transformers 5 writes the class "TokenizersBackend" (or "GemmaTokenizer", whose 4.57
    class needs a SentencePiece file) and a list of extra_special_tokens; the fast-tokenizer class and
    additional_special_tokens read the same tokenizer.json in both. The model config: 4.57 reads the rotary bases
    from ``rope_theta`` / ``rope_local_base_freq``, transformers 5 writes ``rope_parameters`` per layer type.
    """
    tok_cfg = folder / "tokenizer_config.json"
    cfg = json.loads(tok_cfg.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = cfg.pop("extra_special_tokens", None)
    if isinstance(extra, list) and extra:
        cfg["additional_special_tokens"] = extra
    tok_cfg.write_text(json.dumps(cfg, indent=2))
    model_cfg = folder / "config.json"
    cfg = json.loads(model_cfg.read_text())
    rope = cfg.get("rope_parameters") or {}
    if "full_attention" in rope:
        cfg.setdefault("rope_theta", rope["full_attention"].get("rope_theta"))
    if "sliding_attention" in rope:
        cfg.setdefault("rope_local_base_freq", rope["sliding_attention"].get("rope_theta"))
    model_cfg.write_text(json.dumps(cfg, indent=2))
    return folder


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
    peer_readable(folder)
    return folder


def compare(ours: Any, theirs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Differences between our graph and circuit-tracer's tensors (relative to the largest entry of each block)."""
    out: dict[str, Any] = {}
    out["same_selected_features"] = bool(torch.equal(ours.selected_features, theirs["selected_features"]))
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
    if not out["same_selected_features"]:
        # With a feature budget the incremental influence ranking picks the same features up to near-ties at the
        # cut-off (rows agree to float32 rounding, so a tie can break either way): compare on the common ones.
        ours_sel, their_sel = ours.selected_features.tolist(), theirs["selected_features"].tolist()
        common = sorted(set(ours_sel) & set(their_sel))
        out["selected_overlap"] = [len(common), len(ours_sel)]
        rest = torch.arange(len(ours_sel), a.shape[0])
        ia = torch.cat([torch.tensor([ours_sel.index(i) for i in common]), rest])
        ib = torch.cat([torch.tensor([their_sel.index(i) for i in common]), rest])
        a, b = a[ia][:, ia], b[ib][:, ib]
        k = len(common)
        blocks = {"features": slice(0, k), "errors": slice(k, k + ours.n_layers * ours.n_pos),
                  "tokens": slice(k + ours.n_layers * ours.n_pos, k + (ours.n_layers + 1) * ours.n_pos)}
    else:
        blocks = {"features": ours.feature_slice, "errors": ours.error_slice, "tokens": ours.token_slice}
    for name, cols in blocks.items():
        out[f"adjacency_rel_{name}"] = _rel(a[:, cols], b[:, cols])
    out["adjacency_rel"] = _rel(a, b)
    # Token columns: circuit-tracer dots the gradient at the scaled embedding with the unscaled embedding row.
    scale = float(theirs.get("embed_scale", torch.tensor(0.0)))
    if scale:
        out["adjacency_rel_tokens_times_embed_scale"] = _rel(a[:, blocks["tokens"]], b[:, blocks["tokens"]] * scale)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / a.double().abs().max().clamp(min=1e-30))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "peer-circuit-tracer")
    parser.add_argument("--venv", type=Path, default=Path(os.environ.get("CT_VENV", ROOT / ".cache" / "venv-ct")))
    parser.add_argument("--record", action="store_true", help="also write benchmarks/results/circuit_tracer_peer.json")
    parser.add_argument("--ct-side", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ct-time", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ct_side:
        ct_side(json.loads(args.ct_side.read_text()))
        return 0
    if args.ct_time:
        ct_time(json.loads(args.ct_time.read_text()))
        return 0

    from safetensors import safe_open
    from safetensors.torch import load_file

    from gemscope_widgets.backend.circuits.attribution import attribute
    from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
    from gemscope_widgets.backend.gemma.model import load_model
    from gemscope_widgets.testing.transcoders import write_calibrated_set

    python = args.venv / "bin" / "python"
    if not python.is_file():
        print(f"No circuit-tracer environment at {args.venv}: run bash benchmarks/circuit_tracer_venv.sh first.")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(args.out / "model")
    gm = load_model(model_dir, device="cpu", dtype="float32", name="tiny-gemma-3")
    ids = gm.prompt(PROMPT).input_ids
    report: dict[str, Any] = {"prompt": PROMPT, "n_tokens": len(ids)}
    cases = {
        "affine": {"kind": "transcoder", "affine": True, "seed": 7},
        "plain": {"kind": "transcoder", "affine": False, "seed": 8},
        "clt": {"kind": "clt", "affine": False, "seed": 9},
        "affine-256-features": {"kind": "transcoder", "affine": True, "seed": 7, "max_feature_nodes": 256},
    }
    for name, case in cases.items():
        root = args.out / f"transcoders-{case['kind']}-{'affine' if case['affine'] else 'plain'}"
        if not root.exists():
            write_calibrated_set(gm, root, width=256, l0=10, affine=case["affine"], kind=case["kind"],
                                 seed=case["seed"])
        site = "clt" if case["kind"] == "clt" else "transcoder_all"
        tset = load_transcoders(root, site, affine=case["affine"])
        budget = case.get("max_feature_nodes")
        ours = attribute(gm, tset, ids, max_feature_nodes=budget, batch_size=64, progress=False)
        spec = {
            "model": str(model_dir),
            "ids": ids.tolist(),
            "max_logits": 10,
            "logit_probability": 0.95,
            "batch_size": 64,
            "max_feature_nodes": budget,
            "out": str(args.out / f"ct-{name}.safetensors"),
        }
        if tset.clt is not None:
            spec["clt"] = tset.clt.config.path
        else:
            spec["folders"] = {str(layer): str(tset.by_layer[layer].config.path) for layer in tset.layers}
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
        with safe_open(spec["out"], framework="pt") as f:
            report["peer_versions"] = f.metadata()
        theirs["embed_scale"] = torch.tensor(float(gm.embed.embed_scale))
        report[name] = compare(ours, theirs)
        print(f"[{name}]", json.dumps({k: v for k, v in report[name].items() if k != "adjacency_shape"}))
    import time

    import transformers

    report["ours_versions"] = {"transformers": transformers.__version__, "torch": torch.__version__}
    report["date"] = time.strftime("%Y-%m-%d")
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    if args.record:
        (ROOT / "benchmarks" / "results" / "circuit_tracer_peer.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
