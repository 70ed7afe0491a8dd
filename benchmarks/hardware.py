"""This machine's measured matmul throughput and the FLOPs each case needs, for "% of the hardware limit"."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from typing import Any

import torch


def matmul_gflops(dtype: torch.dtype, n: int = 4096, repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n``×``n``×``n`` matmul (2n³ FLOPs) on the current threads."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up: kernel selection, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory and library versions, for the report header."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and cpu in ("", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in present]
                    break
    except OSError:
        pass
    mem_gb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    import transformers

    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "memory_gib": mem_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def layer_flops_per_token(cfg: Any, context: int) -> float:
    """Matmul FLOPs of one decoder layer per token, with causal attention over ``context`` tokens."""
    d = cfg.hidden_size
    heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    ff = cfg.intermediate_size
    params = d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d + 3 * d * ff
    # QK^T and AV over, on average, half of a causal context (bounded by the sliding window).
    window = min(context, getattr(cfg, "sliding_window", None) or context)
    attention = 2 * 2 * heads * head_dim * (window / 2)
    return 2 * params + attention


def forward_flops(cfg: Any, tokens: int, *, layers: int | None = None, logits_positions: int = 0) -> float:
    """FLOPs of a forward over ``tokens`` tokens through ``layers`` layers, plus the lm_head at some positions."""
    n_layers = cfg.num_hidden_layers if layers is None else layers
    body = tokens * n_layers * layer_flops_per_token(cfg, tokens)
    head = logits_positions * 2 * cfg.vocab_size * cfg.hidden_size
    return body + head


def sae_encode_flops(d_in: int, width: int, tokens: int) -> float:
    return 2.0 * d_in * width * tokens


def decode_flops_per_token(cfg: Any, context: int) -> float:
    """FLOPs to generate one token with a KV cache at a given context length (all layers + lm_head)."""
    per_layer = layer_flops_per_token(cfg, 2 * context)  # attention over the whole cache, not half of it
    return cfg.num_hidden_layers * per_layer + 2 * cfg.vocab_size * cfg.hidden_size
