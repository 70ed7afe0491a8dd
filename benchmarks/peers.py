"""The paths researchers use today, written the way each library's documentation does it.

- plain Hugging Face: a forward hook on the SAE's layer, full forward or early exit by raising from the hook;
- TransformerLens 3 + SAELens 6: ``run_with_cache(stop_at_layer=L+1)`` then ``JumpReLUSAE.encode``;
- nnsight 0.8: ``trace`` + ``.save()`` (+ ``tracer.stop()`` for early exit), generation with ``tracer.iter``.

Every "SAE" step here means encode plus the sparse extraction a widget would ship (indices + values), with
the SAE weights in the model's dtype, as in the published peer table.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import torch

TL_MODEL_NAME = "google/gemma-3-270m"


# --- plain Hugging Face -------------------------------------------------------------------------------


def load_hf(path: Path | str, dtype: torch.dtype) -> tuple[Any, Any]:
    """``AutoModelForCausalLM`` + ``AutoTokenizer`` from a local checkpoint, nothing else."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    model.requires_grad_(False)
    return model, tokenizer


class PlainSAE:
    """The Gemma Scope 2 JumpReLU encoder in ten lines, weights in the model's dtype."""

    def __init__(self, params: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        self.w_enc = params["w_enc"].to(dtype).contiguous()
        self.b_enc = params["b_enc"].to(dtype)
        self.threshold = params["threshold"].to(dtype)
        self.w_dec = params["w_dec"].to(dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = x.to(self.w_enc.dtype) @ self.w_enc + self.b_enc
        return torch.relu(pre) * (pre > self.threshold)

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sparse(self.encode(x))


def sparse(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, feature) indices and values of the firing features."""
    idx = acts.nonzero()
    return idx, acts[idx[:, 0], idx[:, 1]]


class _Stop(Exception):
    pass


def _text_model(model: Any) -> Any:
    return model.model


def hf_features(model: Any, ids: torch.Tensor, layer: int, sae: PlainSAE, mode: str) -> Any:
    """Layer-``layer`` residual of ``ids`` [1, T] -> sparse SAE acts.

    ``mode``: ``"full"`` (logits at every position), ``"last_logit"`` (``logits_to_keep=1``) or
    ``"early_exit"`` (the hook raises once the layer has run: no later layers, no lm_head).
    """
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: Any, _args: Any, output: Any) -> None:
        captured["x"] = output[0] if isinstance(output, tuple) else output
        if mode == "early_exit":
            raise _Stop

    handle = _text_model(model).layers[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            if mode == "full":
                model(input_ids=ids, use_cache=False)
            elif mode == "last_logit":
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
            else:
                with contextlib.suppress(_Stop):
                    model(input_ids=ids, use_cache=False)
            return sae.encode_sparse(captured["x"][0])
    finally:
        handle.remove()


def hf_early_exit_forward(model: Any, ids: torch.Tensor, layer: int, attention_mask: Any = None) -> torch.Tensor:
    """The bare early-exit forward (no SAE): the floor any feature extraction pays."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: Any, _args: Any, output: Any) -> None:
        captured["x"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = _text_model(model).layers[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode(), contextlib.suppress(_Stop):
            _text_model(model)(input_ids=ids, attention_mask=attention_mask, use_cache=False)
    finally:
        handle.remove()
    return captured["x"]


def steering_hook(vector: torch.Tensor) -> Any:
    def hook(_module: Any, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + vector, *output[1:])
        return output + vector

    return hook


def hf_generate(model: Any, ids: torch.Tensor, n_new: int, layer: int | None = None, vector: Any = None) -> Any:
    """Greedy ``generate`` of exactly ``n_new`` tokens with the KV cache, optionally with a steering hook."""
    handle = None
    if vector is not None:
        handle = _text_model(model).layers[layer].register_forward_hook(steering_hook(vector))
    try:
        with torch.inference_mode():
            return model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                do_sample=False,
                use_cache=True,
                pad_token_id=model.config.pad_token_id or 0,
            )
    finally:
        if handle is not None:
            handle.remove()


# --- TransformerLens + SAELens -------------------------------------------------------------------------


def load_transformer_lens(hf_model: Any, tokenizer: Any, dtype: torch.dtype) -> Any:
    """TL 3 builds Gemma 3 270M from an already loaded HF model, offline (its config is hard-coded by name)."""
    from transformer_lens import HookedTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HookedTransformer.from_pretrained_no_processing(
            TL_MODEL_NAME, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype, device="cpu"
        ).eval()


def load_saelens_sae(params: dict[str, torch.Tensor], layer: int, dtype: torch.dtype) -> Any:
    """SAELens's JumpReLUSAE on our tensors; ``apply_b_dec_to_input=False`` is what Gemma Scope needs."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, width = params["w_enc"].shape
    cfg = JumpReLUSAEConfig(
        d_in=int(d_in),
        d_sae=int(width),
        dtype=str(dtype).removeprefix("torch."),
        device="cpu",
        apply_b_dec_to_input=False,
        normalize_activations="none",
        metadata=SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post"),
    )
    sae = JumpReLUSAE(cfg)
    sae.load_state_dict(
        {
            "W_enc": params["w_enc"].to(dtype),
            "W_dec": params["w_dec"].to(dtype),
            "b_enc": params["b_enc"].to(dtype),
            "b_dec": params["b_dec"].to(dtype),
            "threshold": params["threshold"].to(dtype),
        }
    )
    return sae.eval()


def tl_features(tl: Any, sl_sae: Any, ids: torch.Tensor, layer: int) -> Any:
    hook = f"blocks.{layer}.hook_resid_post"
    with torch.inference_mode():
        _, cache = tl.run_with_cache(ids, names_filter=hook, stop_at_layer=layer + 1)
        return sparse(sl_sae.encode(cache[hook][0]))


def tl_generate(tl: Any, ids: torch.Tensor, n_new: int, layer: int, vector: torch.Tensor) -> Any:
    hook = f"blocks.{layer}.hook_resid_post"

    def steer(resid: torch.Tensor, hook: Any) -> torch.Tensor:
        return resid + vector

    with torch.inference_mode(), tl.hooks(fwd_hooks=[(hook, steer)]):
        return tl.generate(
            ids,
            max_new_tokens=n_new,
            do_sample=False,
            use_past_kv_cache=True,
            stop_at_eos=False,
            verbose=False,
        )


# --- nnsight -----------------------------------------------------------------------------------------


def load_nnsight(hf_model: Any, tokenizer: Any) -> Any:
    from nnsight import LanguageModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LanguageModel(hf_model, tokenizer=tokenizer)


def nnsight_features(lm: Any, ids: torch.Tensor, layer: int, sae: PlainSAE, stop: bool) -> Any:
    with torch.inference_mode():
        with lm.trace(ids) as tracer:
            h = lm.model.layers[layer].output.save()
            if stop:
                tracer.stop()
        x = h[0] if isinstance(h, tuple) else h
        return sae.encode_sparse(x[0])


def nnsight_generate(lm: Any, ids: torch.Tensor, n_new: int, layer: int, vector: torch.Tensor) -> Any:
    # A bounded tracer.iter[:n] (with min_new_tokens=n): code after an open tracer.all() never runs.
    with torch.inference_mode():
        with lm.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0) as tracer:
            for _ in tracer.iter[:n_new]:
                lm.model.layers[layer].output = lm.model.layers[layer].output + vector
            out = tracer.result.save()
        return out
