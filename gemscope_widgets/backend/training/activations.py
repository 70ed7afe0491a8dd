"""What an SAE is trained on: token windows cut from a corpus, and the activations at one hook point.

Training texts are the offline default corpus minus a held-out tenth (every tenth document), so the
demo SAE's card is measured on text it never saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.stats.corpus import default_corpus
from gemscope_widgets.errors import TrainingError


def token_windows(tokenizer: Any, texts: Iterable[str], ctx: int, max_windows: int | None = None) -> torch.Tensor:
    """Cut the concatenated texts into ``[N, ctx]`` windows, each starting with one BOS.

    Concatenation (rather than one padded row per document) wastes no compute on padding.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        raise TrainingError("the tokenizer has no BOS token; Gemma 3 needs one at the start of every window.")
    step = ctx - 1
    windows: list[torch.Tensor] = []
    buf: list[int] = []
    for text in texts:
        if not text.strip():
            continue
        buf.extend(tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"])
        while len(buf) >= step:
            windows.append(torch.tensor([bos, *buf[:step]], dtype=torch.long))
            buf = buf[step:]
            if max_windows is not None and len(windows) >= max_windows:
                return torch.stack(windows)
    if not windows:
        raise TrainingError(f"the corpus holds fewer than {step} tokens; give train_sae more text.")
    return torch.stack(windows)


@torch.no_grad()
def collect_activations(
    gm: Any,
    point: str,
    windows: torch.Tensor,
    *,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Activations ``[N, d]`` (float32, CPU) at ``point`` for every non-special token of ``windows``.

    The forward pass stops after the hooked layer. BOS and other special tokens are dropped: their
    residual norms are orders of magnitude larger and GS2 dashboards mask them too.
    """
    special = torch.tensor(sorted(set(gm.tokenizer.all_special_ids)), dtype=torch.long)
    device = next(gm.model.parameters()).device
    chunks: list[torch.Tensor] = []
    total = 0
    available = int((~torch.isin(windows, special)).sum())
    want = min(max_tokens, available) if max_tokens is not None else available
    bar = progress_bar(total=want, desc=f"activations {point}", unit="tok", disable=not progress)
    for start in range(0, len(windows), batch_size):
        ids = windows[start : start + batch_size]
        acts = capture(gm, ids.to(device), [point], stop_early=True)[point]
        keep = ~torch.isin(ids, special)
        chunk = acts.float().cpu()[keep]
        chunks.append(chunk)
        total += len(chunk)
        bar.update(len(chunk))
        if total >= want:
            break
    bar.close()
    out = torch.cat(chunks)
    return out[:want] if max_tokens is not None else out


def split_corpus(texts: Sequence[str], every: int = 10) -> tuple[list[str], list[str]]:
    """Deterministic train / held-out split: every ``every``-th document is held out."""
    train = [t for i, t in enumerate(texts) if i % every != every - 1]
    held = [t for i, t in enumerate(texts) if i % every == every - 1]
    return train, held


def default_training_texts() -> list[str]:
    """The offline default corpus minus its held-out tenth."""
    return split_corpus(default_corpus(max_docs=None))[0]


def held_out_texts(max_docs: int | None = None) -> list[str]:
    """The held-out tenth of the offline default corpus (never seen in training)."""
    held = split_corpus(default_corpus(max_docs=None))[1]
    return held if max_docs is None else held[:max_docs]
