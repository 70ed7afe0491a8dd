"""Gemma 3's attention layout: which layers see a sliding window, and how query heads share key/value heads.

Gemma 3 alternates local layers (sliding-window attention: a query at ``i`` sees keys ``j`` with
``i - j < sliding_window``, 512 in the released configs) with global ones (every earlier key), five local to one
global; the config lists them in ``layer_types`` (older transformers mark each attention module ``is_sliding``).
Attention is grouped-query: query head ``h`` reads key/value head ``h // (n_heads // n_kv)``.
"""

from __future__ import annotations

from typing import Any


def sliding_window(gm: Any, layer: int) -> int | None:
    """The sliding window of ``layer`` (keys ``j`` with ``query - j < window`` are seen), None on a global layer."""
    config = gm.text_model.config
    types = getattr(config, "layer_types", None)
    if types is not None:
        sliding = types[layer] == "sliding_attention"
    else:
        sliding = bool(getattr(gm.layers[layer].self_attn, "is_sliding", False))
    window = getattr(config, "sliding_window", None)
    return int(window) if sliding and window else None


def head_counts(gm: Any) -> tuple[int, int, int]:
    """``(n_heads, n_kv_heads, head_dim)`` of the model's attention (270M: 4 query heads, 1 key/value head, 256)."""
    config = gm.text_model.config
    n_heads = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_heads)
    return n_heads, n_kv, head_dim


def kv_head(gm: Any, head: int) -> int:
    """The key/value head that query head ``head`` reads (grouped-query attention)."""
    n_heads, n_kv, _ = head_counts(gm)
    return head // (n_heads // n_kv)


__all__ = ["head_counts", "kv_head", "sliding_window"]
