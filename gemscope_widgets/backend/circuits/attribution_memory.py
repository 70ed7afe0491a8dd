"""How much memory ``attribute`` needs for a prompt, before the work, and the settings that would fit.

Attribution's memory grows with the prompt: every token adds its active features (a few hundred across the
layers of a transcoder set), and the edge matrix has one column per active feature for every feature row it
computes. The parts, in float32 bytes (``T`` tokens, ``L`` layers, ``d`` model width, ``H`` heads, ``A`` active
features, ``F = min(max_feature_nodes, A)`` feature rows, ``K`` logits, ``B`` batch size,
``C = A + (L + 1)·T + K`` columns):

- ``runtime``: a constant for first calls of torch kernels and allocator slack;
- ``model``: the model's weights in CPU memory that are not resident yet. A checkpoint loads memory-mapped, so
  its pages join the process's memory only when a forward pass first reads them: the first call after loading
  grows by the whole model, a later call by nothing (the 270M in float32: a first forward + backward at
  16 tokens adds 1,081 MB to the RSS after loading, 1,021 MB of it these pages, 60 MB activations and kernels);
- ``transcoders``: the same for the set's weights (memory-mapped too, resident once the encoders first run);
- ``forward``: the frozen forward pass (residuals, norm scales, MLP inputs and outputs, ``~16·L·T·d``), its
  attention patterns (``2·L·H·T²``) and one layer's encoding or MLP at a time (``3·T·max(d_ff, W)``);
- ``nodes``: each active feature's decoder vector where it writes (``A·d`` per target layer), its bookkeeping,
  and the error and constant terms (``2·L·T·d``);
- ``edges``: the edge matrix, ``(F + K)·C`` (the dominant term for long prompts);
- ``ranking``: the normalised copy the influence ranking uses, at most :data:`RANKING_CHUNK_BYTES` (a larger
  matrix is ranked through one buffer of that size, chunk of rows by chunk of rows; the unselected columns' sums
  too);
- ``batch``: one pull-back, ``B·T`` gradients a few times over and ``B·C`` rows;
- ``graph``: the final graph's adjacency ``(F + (L + 1)·T + K)²`` and the kept columns, while the edge matrix
  is still held.

``model`` and ``transcoders`` are read, before any work, from which of the weights' pages are in the process's
resident set (:func:`~gemscope_widgets.backend.memory.absent_bytes`); where that cannot be read (not Linux) the
model counts as resident and the whole set as not. They are pages of files the kernel can drop again, so on a
machine short of memory they are the estimate's cautious part.

``A`` is unknown before the forward pass; :func:`active_per_token` gives a prior from the set's L0 (each
dictionary's ``config.l0``), and ``attribute`` checks again with the exact count before the rows. The
benchmark ``python -m benchmarks.memory_case`` compares the estimate with the measured peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from gemscope_widgets.backend.circuits.transcoder_set import TranscoderSet, load_transcoders
from gemscope_widgets.backend.memory import absent_bytes, format_bytes, tensor_ranges
from gemscope_widgets.errors import AttributionMemoryError

FLOAT = 4
RANKING_CHUNK_BYTES = 64 << 20  # the influence ranking's and the unselected sums' working copy, at most
RUNTIME_BYTES = 64 << 20  # first calls of torch kernels, allocator slack, lazily imported modules
FALLBACK_ACTIVE_PER_TOKEN = 700.0  # a 16k-wide Gemma Scope 2 set on Gemma 3 (about 685 measured) when no L0 is known


@dataclass(frozen=True)
class AttributionMemory:
    """An estimate of ``attribute``'s peak memory above what the process already holds (bytes per part)."""

    n_tokens: int
    active_per_token: float
    n_active: int
    feature_rows: int
    batch_size: int
    max_logits: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.parts.values())

    def __str__(self) -> str:
        return f"≈{format_bytes(self.total_bytes)}"


@dataclass(frozen=True)
class _Shape:
    n_layers: int
    d_model: int
    n_heads: int
    head_dim: int
    d_ff: int
    targets_per_feature: float
    max_logits: int
    width: int


def _shape(gm: Any, tset: Any, max_logits: int) -> _Shape:
    cfg = gm.text_config
    n_heads = int(getattr(cfg, "num_attention_heads", 1))
    head_dim = int(getattr(cfg, "head_dim", None) or gm.d_model // n_heads)
    targets = [len(tset.target_layers(layer)) for layer in tset.layers]
    return _Shape(
        n_layers=int(gm.n_layers), d_model=int(gm.d_model), n_heads=n_heads, head_dim=head_dim,
        d_ff=int(getattr(cfg, "intermediate_size", 4 * gm.d_model)),
        targets_per_feature=sum(targets) / max(len(targets), 1), max_logits=int(max_logits),
        width=max(tset.layer_widths.values()),
    )


def weights_not_resident(gm: Any, tset: Any) -> dict[str, int]:
    """``{"model": bytes, "transcoders": bytes}`` of the model's and the set's CPU weights that are not in this
    process's resident set yet (module docstring), the parts a first forward pass adds."""
    model = tensor_ranges([*gm.model.parameters(), *gm.model.buffers()])
    dictionaries = tensor_ranges([b for d in tset.dictionaries for b in d.buffers()])
    model_bytes, set_bytes = absent_bytes(model), absent_bytes(dictionaries)
    return {
        "model": 0 if model_bytes is None else model_bytes,
        "transcoders": sum(n for _, n in dictionaries) if set_bytes is None else set_bytes,
    }


def active_per_token(tset: Any) -> float:
    """Prior for active features per token: the sum of the set's dictionaries' L0 (``config.l0``), or
    :data:`FALLBACK_ACTIVE_PER_TOKEN` when a dictionary does not state one."""
    l0s = [float(getattr(d.config, "l0", 0) or 0) for d in tset.dictionaries]
    if not l0s or min(l0s) <= 0:
        return FALLBACK_ACTIVE_PER_TOKEN
    return sum(l0s)


def _parts(
    s: _Shape, weights: dict[str, int], t: int, a: int, max_feature_nodes: int | None, b: int
) -> tuple[int, dict[str, int]]:
    L, d, H = s.n_layers, s.d_model, s.n_heads  # noqa: N806 (the shapes' own letters)
    k = s.max_logits
    f = a if max_feature_nodes is None else min(int(max_feature_nodes), a)
    cols = a + (L + 1) * t + k
    edges = (f + k) * cols * FLOAT
    kept = f + (L + 1) * t + k
    parts = {
        "runtime": RUNTIME_BYTES,
        "model": weights["model"],
        "transcoders": weights["transcoders"],
        "forward": FLOAT * (16 * L * t * d + 2 * L * H * t * t + 3 * t * max(s.d_ff, s.width)),
        "nodes": int(a * (FLOAT * d * s.targets_per_feature + 48)) + FLOAT * 2 * L * t * d,
        "edges": edges,
        "ranking": min(edges, RANKING_CHUNK_BYTES) if f < a else 0,
        "batch": FLOAT * (b * t * (4 * d + 3 * H * s.head_dim) + 2 * b * cols),
    }
    graph = FLOAT * (kept * kept + (f + k) * kept)
    # The graph is assembled after the rows: its buffers replace the ranking copy and the batch's.
    parts["graph"] = max(0, graph - parts["ranking"] - parts["batch"])
    return f, parts


def estimate_attribution_memory(
    model: Any,
    transcoders: Any,
    n_tokens: int,
    *,
    max_feature_nodes: int | None = 4096,
    batch_size: int = 256,
    max_logits: int = 10,
    n_active: int | None = None,
) -> AttributionMemory:
    """Estimate ``attribute``'s peak memory (bytes above what the process holds) for an ``n_tokens`` prompt.

    ``n_active`` is the exact number of active features when known (after the forward pass); otherwise
    ``n_tokens × active_per_token(transcoders)``. The other arguments are ``attribute``'s. See the module
    docstring for the parts.
    """
    tset = transcoders if isinstance(transcoders, TranscoderSet) else load_transcoders(transcoders)
    s = _shape(model, tset, max_logits)
    per_token = active_per_token(tset) if n_active is None else n_active / max(n_tokens, 1)
    a = int(n_active) if n_active is not None else round(per_token * n_tokens)
    f, parts = _parts(s, weights_not_resident(model, tset), int(n_tokens), a, max_feature_nodes, int(batch_size))
    return AttributionMemory(int(n_tokens), per_token, a, f, int(batch_size), int(max_logits), parts)


def _weights_of(est: AttributionMemory) -> dict[str, int]:
    return {"model": est.parts.get("model", 0), "transcoders": est.parts.get("transcoders", 0)}


def _largest(fits: Any, low: int, high: int) -> int:
    """The largest ``v`` in ``[low, high]`` with ``fits(v)`` (``fits`` monotone decreasing), or ``low − 1``."""
    if high < low or not fits(low):
        return low - 1
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def check_fits(
    model: Any, transcoders: Any, est: AttributionMemory, budget: int, *, max_feature_nodes: int | None
) -> None:
    """Raise :class:`AttributionMemoryError` when ``est`` exceeds ``budget`` bytes, naming a shorter prompt, a
    smaller ``max_feature_nodes`` or a smaller ``batch_size`` that would fit."""
    if est.total_bytes <= budget:
        return
    s = _shape(model, transcoders, est.max_logits)
    per_token, b = est.active_per_token, est.batch_size
    weights = _weights_of(est)

    def total(t: int, f: int | None, bb: int) -> int:
        return sum(_parts(s, weights, t, round(per_token * t), f, bb)[1].values())

    ideas = []
    tokens = _largest(lambda t: total(t, max_feature_nodes, b) <= budget, 1, est.n_tokens - 1)
    if tokens >= 1:
        ideas.append(f"a prompt of at most {tokens} tokens")
    rows = _largest(lambda f: total(est.n_tokens, f, b) <= budget, 0, est.feature_rows - 1)
    if rows >= 0:
        ideas.append(f"max_feature_nodes={rows}")
    batch = _largest(lambda bb: total(est.n_tokens, max_feature_nodes, bb) <= budget, 1, b - 1)
    if batch >= 1:
        ideas.append(f"batch_size={batch}")
    fix = ("Settings that fit: " + ", or ".join(ideas) + ".") if ideas else "Free memory or use a larger machine."
    raise AttributionMemoryError(
        f"attribute needs {est} for this {est.n_tokens}-token prompt ({est.n_active:,} active features, "
        f"{est.feature_rows:,} feature rows), more than the {format_bytes(budget)} available. {fix}"
    )


def with_active(
    est: AttributionMemory, model: Any, transcoders: Any, n_active: int, max_feature_nodes: int | None
) -> AttributionMemory:
    """``est`` recomputed for the exact number of active features; the weights' parts stay those measured before
    the call's forward pass (which made them resident), so the estimate is still of the call's whole peak."""
    s = _shape(model, transcoders, est.max_logits)
    f, parts = _parts(s, _weights_of(est), est.n_tokens, int(n_active), max_feature_nodes, est.batch_size)
    return replace(est, n_active=int(n_active), active_per_token=n_active / max(est.n_tokens, 1),
                   feature_rows=f, parts=parts)
