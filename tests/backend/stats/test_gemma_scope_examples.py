"""Gemma Scope 2 ``examples.safetensors`` written in the reported layout, read lazily as FeatureStats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.backend.stats.importers.gemma_scope_examples import (
    ExamplesFormatError,
    find_examples_file,
    load_examples_safetensors,
)
from gemscope_widgets.widgets.feature_pane import FeaturePane
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae

W, K, SEQ = 16, 6, 20
TEXTS = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1)",
    "Sparse autoencoders find features in the residual stream of a language model.",
]


def corpus_tokens(tokenizer) -> torch.Tensor:
    rows = []
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"][:SEQ]
        rows.append(ids + [tokenizer.pad_token_id] * (SEQ - len(ids)))
    return torch.tensor(rows, dtype=torch.int32)


def example_tensors(tokenizer) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    acts = torch.zeros(W, K)
    seqs = torch.full((W, K), -1, dtype=torch.int32)
    pos = torch.full((W, K), -1, dtype=torch.int32)
    # Feature 3: three hits, stored out of order, then padding.
    acts[3, :3] = torch.tensor([4.0, 7.0, 2.0])
    seqs[3, :3] = torch.tensor([1, 0, 1], dtype=torch.int32)
    pos[3, :3] = torch.tensor([5, 2, 7], dtype=torch.int32)
    acts[8, 0], seqs[8, 0], pos[8, 0] = 1.5, 2, 19
    return {
        "activations": acts,
        "seq_ids": seqs,
        "positions": pos,
        "tokens": corpus_tokens(tokenizer),
        "feature_frequencies": torch.rand(W, generator=gen) * 0.01,
        "top_tokens": torch.randint(6, 500, (W, 10), generator=gen, dtype=torch.int32),
        "top_logits": torch.sort(torch.rand(W, 10, generator=gen), descending=True).values,
        "bottom_tokens": torch.randint(6, 500, (W, 10), generator=gen, dtype=torch.int32),
        "bottom_logits": -torch.rand(W, 10, generator=gen),
    }


@pytest.fixture
def sae_with_examples(tmp_path, tiny_model):
    folder = write_gemma_scope_sae(tmp_path / "resid_post/layer_1_width_16k_l0_medium", kind="sae", layer=1,
                                   width=W, seed=4)
    tensors = example_tensors(tiny_model.tokenizer)
    save_file(tensors, str(folder / "examples.safetensors"))
    return load_sae_folder(folder), tensors


def test_examples_file_reads_as_feature_stats(sae_with_examples, tiny_model):
    sae, t = sae_with_examples
    tok = tiny_model.tokenizer
    assert find_examples_file(sae) is not None
    stats = load_examples_safetensors(sae.config.path, tok, sae, window=(2, 1))
    assert stats.width == W and stats.n_tokens == len(TEXTS) * SEQ
    np.testing.assert_allclose(stats.density.numpy(), t["feature_frequencies"].numpy())
    assert float(stats.max_act[3]) == pytest.approx(7.0) and float(stats.max_act[0]) == 0.0
    assert stats.n_examples(3) == 3 and stats.n_examples(3, "quantile") == 0 and stats.n_examples(0) == 0
    first, second, third = stats.examples(3, count=10)
    ids = t["tokens"]
    assert first.value == pytest.approx(7.0) and (first.doc, first.position) == (0, 2)
    assert first.tokens == token_strings(tok, ids[0, 0:4].tolist())
    assert first.peak == 2 and first.values[2] == pytest.approx(7.0)
    # Two hits share sequence 1: each window shows the other's exact value too.
    assert second.tokens == token_strings(tok, ids[1, 3:7].tolist())
    assert second.values == pytest.approx([0.0, 0.0, 4.0, 0.0])
    assert third.values == pytest.approx([4.0, 0.0, 2.0, 0.0])
    assert stats.examples(3, start=2, count=5) == [third]
    last = stats.examples(8)[0]
    assert last.tokens == token_strings(tok, ids[2, 17:20].tolist())  # clipped at the sequence end
    top, bottom = stats.stored_logits(3)
    assert [s for s, _ in top] == token_strings(tok, t["top_tokens"][3].tolist())
    np.testing.assert_allclose([v for _, v in bottom], t["bottom_logits"][3].numpy(), rtol=1e-6)
    assert stats.histogram(3) is None
    stats.label(3, "French things")
    assert stats.explanation(3) == "French things"


def test_examples_file_loads_into_the_pane(sae_with_examples, tiny_model):
    sae, t = sae_with_examples
    stats = load_examples_safetensors(sae.config.path, tiny_model.tokenizer, sae)
    pane = FeaturePane(tiny_model, sae, stats, feature=3, page_size=2)
    assert pane.info["source"] == "gemma-scope-examples"
    assert pane.info["max_act"] == pytest.approx(7.0)
    assert pane.examples["total"] == 3 and len(pane.examples["items"]) == 2
    assert np.frombuffer(pane.examples["items"][0]["values"], "<f4").max() == pytest.approx(7.0)
    assert [s for s, _ in pane.logits["top"]] == token_strings(tiny_model.tokenizer, t["top_tokens"][3].tolist())
    pane.page("top", 2)
    assert pane.examples["start"] == 2 and len(pane.examples["items"]) == 1


def test_examples_file_layout_errors(tmp_path, tiny_model):
    tok = tiny_model.tokenizer
    good = example_tensors(tok)

    def write(**changes):
        tensors = {**good, **changes}
        tensors = {k: v for k, v in tensors.items() if v is not None}
        path = tmp_path / "examples.safetensors"
        save_file(tensors, str(path))
        return path

    with pytest.raises(ExamplesFormatError, match=r"lacks seq_ids.*it holds: activations \[16, 6\]"):
        load_examples_safetensors(write(seq_ids=None), tok)
    with pytest.raises(ExamplesFormatError, match="share one"):
        load_examples_safetensors(write(positions=torch.zeros(W, K + 1, dtype=torch.int32)), tok)
    with pytest.raises(ExamplesFormatError, match="feature_frequencies has 3 rows"):
        load_examples_safetensors(write(feature_frequencies=torch.zeros(3)), tok)
    with pytest.raises(ExamplesFormatError, match="must come together"):
        load_examples_safetensors(write(top_logits=None), tok)
    with pytest.raises(ExamplesFormatError, match="describes 16 features but the SAE has 32"):
        load_examples_safetensors(write(), tok, width=32)
    (tmp_path / "junk" / "examples.safetensors").parent.mkdir()
    (tmp_path / "junk" / "examples.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad header}")
    with pytest.raises(ExamplesFormatError, match="not a readable safetensors"):
        load_examples_safetensors(tmp_path / "junk", tok)
    with pytest.raises(ExamplesFormatError, match="No examples.safetensors"):
        load_examples_safetensors(tmp_path / "nowhere", tok)
    stats = load_examples_safetensors(write(), tok)
    from gemscope_widgets.errors import FeatureIndexError

    with pytest.raises(FeatureIndexError):
        stats.examples(W)
