"""A tiny random Gemma 3 with a real (trained) byte-level BPE tokenizer, written as a Hugging Face checkpoint.

Both model classes: ``Gemma3ForCausalLM`` (as 270m/1b) and ``Gemma3ForConditionalGeneration`` (as 4b and
larger, decoder at ``model.language_model``). Special tokens and ids follow Gemma's (``<pad>`` 0, ``<eos>`` 1,
``<bos>`` 2, chat turn markers), so prompt, hook and SAE code paths run exactly as on the real model, in
seconds and offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

TINY_NAME = "tiny-gemma-3"
TINY_VLM_NAME = "tiny-gemma-3-vlm"
TINY_TEXT = """The quick brown fox jumps over the lazy dog. Gemma reads text and writes text.
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
Sparse autoencoders find features in the residual stream of a language model.
Paris is the capital of France. The capital of Italy is Rome. 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.
<img src=x onerror=alert(1)> & "quotes" 'single' \t tabs\nnewlines
"""
TINY_DIMS = {"d_model": 64, "n_layers": 4, "n_heads": 4, "head_dim": 24, "vocab": 512}


def build_tiny_tokenizer(texts: Sequence[str] | None = None, vocab: int = TINY_DIMS["vocab"]) -> Any:
    """A byte-level BPE tokenizer with Gemma's special tokens and ids, which adds <bos> like Gemma's does.

    Trained on ``texts`` (default: :data:`TINY_TEXT`) to a vocabulary of ``vocab`` tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(list(texts) if texts is not None else [TINY_TEXT] * 4, trainer=trainer)
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )


def tiny_text_config(vocab: int = TINY_DIMS["vocab"]) -> Any:
    """The ``Gemma3TextConfig`` of the tiny model: d_model 64, 4 layers (the last one global), 4 heads × 24."""
    from transformers import Gemma3TextConfig

    d = TINY_DIMS
    return Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=d["d_model"],
        intermediate_size=128,
        num_hidden_layers=d["n_layers"],
        num_attention_heads=d["n_heads"],
        num_key_value_heads=1,
        head_dim=d["head_dim"],
        max_position_embeddings=4096,
        sliding_window=16,
        query_pre_attn_scalar=d["head_dim"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
    )


def build_tiny_checkpoint(
    folder: Path,
    *,
    vlm: bool = False,
    seed: int = 0,
    texts: Sequence[str] | None = None,
    vocab: int = TINY_DIMS["vocab"],
    reuse: bool = False,
) -> Path:
    """Write a tiny random Gemma 3 checkpoint (``Gemma3ForCausalLM`` or ``Gemma3ForConditionalGeneration``).

    ``texts`` / ``vocab`` train its tokenizer (see :func:`build_tiny_tokenizer`). With ``reuse``, a folder
    that already holds a checkpoint is returned as it is.
    """
    import torch
    from transformers import Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, SiglipVisionConfig

    folder = Path(folder)
    if reuse and (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if vlm:
        vision = SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
            patch_size=14,
        )
        config = Gemma3Config(
            text_config=tiny_text_config(vocab).to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
            boi_token_index=500, eoi_token_index=501, image_token_index=502,
        )
        model = Gemma3ForConditionalGeneration(config)
    else:
        model = Gemma3ForCausalLM(tiny_text_config(vocab))
    # Random init leaves the RMSNorm gains at zero (gain 1) and tiny logits; spread weights so features vary.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.1)
    model.eval()
    model.save_pretrained(folder)
    build_tiny_tokenizer(texts, vocab).save_pretrained(folder)
    return folder
