"""Many short prompts through the model in padded batches: SAE inputs at chosen tokens, and greedy answers.

The behaviour tools read one or a few tokens of hundreds of short prompts. One forward pass per prompt leaves most
of a CPU's matrix throughput unused, so prompts of similar length are grouped (``stats.corpus.plan_batches``) and
run together. Reading the SAE input, prompts are right-padded with an attention mask: a causal model's activations
at a prompt's own tokens do not depend on the padding after them. Generating, prompts are left-padded (Hugging
Face ``generate`` takes the position ids from the mask), so every row's next token follows its last prompt token.
Results equal one prompt at a time up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from transformers import StoppingCriteriaList, StopStringCriteria

from gemscope_widgets.backend.analysis.features import sae_inputs
from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.stats.corpus import pad_batch, plan_batches

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel
    from gemscope_widgets.backend.gemma.prompts import Prompt

BATCH_SIZE = 32
"""Prompts per forward pass or ``generate`` call. On the 270M (one CPU thread, 512 prompts of 10-23 tokens) the
forwards to layer 6 took 7.0 / 6.7 / 6.5 CPU s in batches of 16 / 32 / 64; generating, every new token reads the
whole unembedding (262k x d_model) once per batch, so 32 reads it half as often as 16."""
BATCH_TOKENS = 4096
"""Padded tokens per forward pass at most (bounds the activations held at once)."""


def sae_inputs_at(
    gm: GemmaModel, sae: Any, prompts: Sequence[Prompt], positions: Sequence[torch.Tensor], *,
    batch_size: int = BATCH_SIZE, step: Callable[[int], Any] | None = None,
) -> list[torch.Tensor]:
    """Each prompt's SAE input at its ``positions`` (token indices ``[P_i]``): a list of ``[P_i, d_in]`` tensors
    on the model's device, in the prompts' order. One forward pass per batch, stopped after the SAE's layer.
    ``step(n)`` is called after each batch with its number of prompts (a progress bar's ``update``)."""
    ids = [p.input_ids.tolist() for p in prompts]
    out: list[torch.Tensor | None] = [None] * len(ids)
    for group in plan_batches([len(x) for x in ids], batch_size, BATCH_TOKENS):
        batch, mask = pad_batch([ids[i] for i in group], gm.tokenizer.pad_token_id)
        with torch.inference_mode():
            captured = capture(gm, batch, sae.config.hook_points_in, attention_mask=mask)
            x = sae_inputs(sae, captured)
        for row, i in enumerate(group):
            out[i] = x[row, positions[i].to(x.device)]
        if step is not None:
            step(len(group))
    return cast(list[torch.Tensor], out)


def greedy_answers(
    gm: GemmaModel, texts: Sequence[str], max_new_tokens: int, *, stop: str = "\n",
    batch_size: int = BATCH_SIZE, step: Callable[[int], Any] | None = None,
) -> list[str]:
    """The model's greedy continuation of each text (``max_new_tokens`` at most), up to the first ``stop``.

    Left-padded batches through Hugging Face ``generate`` (KV cache); a batch ends when every row has written
    ``stop`` (transformers' ``StopStringCriteria``, built once per call: building it scans the whole vocabulary)
    or ``max_new_tokens``. ``step`` as :func:`sae_inputs_at`.
    """
    ids = [gm.prompt(t).input_ids.tolist() for t in texts]
    pad = int(gm.tokenizer.pad_token_id)
    out = [""] * len(ids)
    stopping = StoppingCriteriaList([StopStringCriteria(gm.tokenizer, [stop])])
    for group in plan_batches([len(x) for x in ids], batch_size, BATCH_TOKENS):
        width = max(len(ids[i]) for i in group)
        batch = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for row, i in enumerate(group):
            batch[row, width - len(ids[i]):] = torch.as_tensor(ids[i])
            mask[row, width - len(ids[i]):] = 1
        with torch.inference_mode():
            generated = cast(Any, gm.model).generate(
                input_ids=batch.to(gm.device), attention_mask=mask.to(gm.device), max_new_tokens=max_new_tokens,
                do_sample=False, top_p=None, top_k=None, pad_token_id=pad, stopping_criteria=stopping,
            )
        for row, i in enumerate(group):
            text = str(gm.tokenizer.decode(generated[row, width:].tolist(), skip_special_tokens=True))
            out[i] = text.split(stop, 1)[0].strip()
        if step is not None:
            step(len(group))
    return out
