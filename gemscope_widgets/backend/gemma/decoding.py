"""KV-cached decoding steps on a Gemma 3 model: a fresh cache, one cached decoder forward, next-token logits, and
caches of prefixes shared by many prompts (:class:`PrefixCache`).

Shared by generation (:mod:`~gemscope_widgets.backend.steering.generation`), the explainer and scorer of
:mod:`~gemscope_widgets.backend.analysis.explain` and the early-answering scores of
:mod:`~gemscope_widgets.backend.behaviour.faithfulness`. The caches are transformers' ``DynamicCache``; the decoder is
``gm.text_model`` (no ``lm_head``), so the unembedding runs only where logits are read (:func:`next_token_logits`).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch

from gemscope_widgets.backend.gemma.offload import resident

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel


def new_cache(gm: GemmaModel, *, every_position: bool = False) -> Any:
    """An empty transformers ``DynamicCache`` for ``gm`` (its config, so sliding-window layers keep only their
    window, where the installed transformers supports it). ``every_position=True``: a plain cache that keeps every
    position in every layer (the sliding-window layers' attention mask still applies the window), for callers that
    slice a prefix's keys and values out of it."""
    from transformers import DynamicCache

    # Before transformers 4.56 the cache takes no config (it then keeps every position; the sliding-window
    # layers mask what they do not attend to, so the result is the same).
    if every_position or "config" not in inspect.signature(DynamicCache.__init__).parameters:
        return DynamicCache()
    return DynamicCache(config=cast(Any, gm.model).config)


_CACHE_KEYWORDS: dict[Any, str] = {}


def cache_keyword(forward_owner: Any) -> str:
    """The decoder's keyword for the KV cache: ``cache`` in current transformers (``past_key_values`` is
    deprecated there for removal in 5.40), ``past_key_values`` in older versions (read once per class)."""
    keyword = _CACHE_KEYWORDS.get(forward_owner)
    if keyword is None:
        params = inspect.signature(forward_owner.forward).parameters
        keyword = _CACHE_KEYWORDS[forward_owner] = "cache" if "cache" in params else "past_key_values"
    return keyword


def cached_forward(gm: GemmaModel, ids: torch.Tensor, cache: Any) -> torch.Tensor:
    """One decoder forward over ``ids [B, t]`` (on ``gm.device``) after what ``cache`` holds, which it extends;
    returns the last hidden state ``[B, t, d_model]`` (after the final norm, before the unembedding)."""
    keyword = cache_keyword(type(gm.text_model))
    hidden: torch.Tensor = gm.text_model(input_ids=ids, use_cache=True, **{keyword: cache}).last_hidden_state
    return hidden


def next_token_logits(gm: GemmaModel, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``[B, vocab]`` float32 of final hidden states ``hidden [B, d_model]``: ``lm_head`` as
    ``W @ h.T`` (plus its bias, if any), then the config's ``final_logit_softcapping`` when it has one.

    On CPU BLAS a [262k, d] @ [d, 2] product reads the unembedding once, while ``linear`` with two rows
    is 2-4x slower than with one: this is what makes generation's baseline + steered pair cost about one generation.
    """
    with resident(gm.model, gm.lm_head):  # loaded for this product when accelerate offloads it
        weight = gm.lm_head.weight
        logits = torch.matmul(weight, hidden.to(weight.dtype).t()).t().float()
        if getattr(gm.lm_head, "bias", None) is not None:
            logits = logits + gm.lm_head.bias.float()
    cap = getattr(gm.text_config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


class PrefixCache:
    """KV caches of token prefixes already run on one model (e.g. delphi's system prompt and few-shot examples, the
    same for every feature): :meth:`run` continues from the longest stored prefix of the ids it is given.
    ``forwards`` counts the decoder forwards it ran."""

    def __init__(self, gm: GemmaModel) -> None:
        self.gm = gm
        self._stored: list[tuple[tuple[int, ...], Any]] = []
        self.forwards = 0

    def run(self, ids: Sequence[int], *, keep: bool = False) -> tuple[Any, torch.Tensor | None]:
        """A fresh cache holding ``ids`` (all but nothing left to run) and the last hidden state ``[1, d]`` (None
        when every id came from a stored prefix); ``keep`` stores it for later calls."""
        ids = tuple(int(i) for i in ids)
        best: tuple[tuple[int, ...], Any] | None = None
        for stored in self._stored:
            n = len(stored[0])
            if n <= len(ids) and ids[:n] == stored[0] and (best is None or n > len(best[0])):
                best = stored
        cache = copy.deepcopy(best[1]) if best is not None else new_cache(self.gm)
        done = len(best[0]) if best is not None else 0
        hidden = None
        if done < len(ids):
            hidden = cached_forward(self.gm, torch.tensor([ids[done:]], device=self.gm.device), cache)[:, -1]
            self.forwards += 1
        if keep and done < len(ids):
            self._stored.append((ids, copy.deepcopy(cache)))
        return cache, hidden
