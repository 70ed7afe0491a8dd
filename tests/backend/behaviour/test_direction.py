"""Difference-of-means directions, checked against hidden states read straight from the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemscope_widgets.backend.behaviour.direction import (
    MIN_PROMPTS,
    behaviour_direction,
    decompose,
    projection_track,
    refusal_direction,
)
from gemscope_widgets.backend.behaviour.prompt_sets import HARMFUL_REQUESTS, HARMLESS_REQUESTS, read_prompts
from gemscope_widgets.backend.gemma.model import BaseModelChatWarning
from gemscope_widgets.errors import DirectionError, PromptError

POS = ["The cat sat on the mat.", "Dogs bark at night.", "Birds sing in the trees.", "Fish swim in the sea.",
       "A horse runs in the field.", "The cow eats grass."]
NEG = ["def f(x): return x", "for i in range(3): pass", "import numpy as np", "x = [1, 2, 3]",
       "print('hello')", "while True: break"]


def hidden_means(gm, prompts, layer, chat, position):
    """Oracle: mean over prompts of HF's output_hidden_states[layer + 1] at the position, no hooks involved."""
    rows = []
    for p in prompts:
        messages = [{"role": "user", "content": p}] if chat else p
        ids = gm.prompt(messages).input_ids
        with torch.no_grad():
            hs = gm.model(input_ids=ids[None], output_hidden_states=True).hidden_states[layer + 1][0].double()
        rows.append(hs[-1] if position == "last_prompt_token" else hs[1:].mean(0))
    return torch.stack(rows).mean(0)


@pytest.mark.parametrize("position", ["last_prompt_token", "mean"])
def test_direction_is_difference_of_means_tiny(tiny_model, position):
    d = behaviour_direction(tiny_model, POS, NEG, layer=1, position=position, chat=False, progress=False)
    expected = hidden_means(tiny_model, POS, 1, False, position) - hidden_means(tiny_model, NEG, 1, False, position)
    torch.testing.assert_close(d.mean_difference.double(), expected, rtol=1e-5, atol=1e-5 * float(expected.norm()))
    torch.testing.assert_close(d.direction.double(), expected / expected.norm(), rtol=1e-5, atol=1e-6)
    assert d.direction.dtype == torch.float32 and d.direction.shape == (tiny_model.d_model,)
    assert d.layer == 1 and np.isfinite(d.scores[1]) and np.isnan(d.scores[0])


def test_layer_chosen_by_held_out_separation(tiny_model):
    d = behaviour_direction(tiny_model, POS, NEG, chat=False, progress=False, layers=[0, 1, 2, 3])
    assert d.held_out == 2
    assert np.all(np.isfinite(d.scores))
    assert d.layer == int(np.nanargmax(d.scores))
    # The oracle for the chosen layer's held-out score: a direction from the first 4 pairs, the last 2 projected.
    layer = d.layer
    train = hidden_means(tiny_model, POS[:4], layer, False, "last_prompt_token") - hidden_means(
        tiny_model, NEG[:4], layer, False, "last_prompt_token")
    unit = train / train.norm()

    def proj(prompts):
        out = []
        for p in prompts:
            with torch.no_grad():
                hs = tiny_model.model(input_ids=tiny_model.prompt(p).input_ids[None], output_hidden_states=True)
            out.append(float(hs.hidden_states[layer + 1][0, -1].double() @ unit))
        return np.array(out)

    p, q = proj(POS[4:]), proj(NEG[4:])
    cohen = (p.mean() - q.mean()) / np.sqrt((p.var(ddof=1) + q.var(ddof=1)) / 2)
    assert d.scores[layer] == pytest.approx(cohen, rel=1e-4)


@pytest.mark.real_model
def test_refusal_direction_real_model_matches_hidden_states(real_model, monkeypatch):
    monkeypatch.setattr(real_model, "_warned_chat", False)
    harmful, harmless = list(HARMFUL_REQUESTS[:6]), list(HARMLESS_REQUESTS[:6])
    with pytest.warns(BaseModelChatWarning):
        d = refusal_direction(real_model, harmful, harmless, layer=6, progress=False)
    expected = hidden_means(real_model, harmful, 6, True, "last_prompt_token") - hidden_means(
        real_model, harmless, 6, True, "last_prompt_token")
    rel = float((d.mean_difference.double() - expected).norm() / expected.norm())
    assert rel < 1e-5
    assert d.chat and d.label == "refusal"


def test_bad_sets_and_layers(tiny_model):
    with pytest.raises(DirectionError, match="equal size"):
        behaviour_direction(tiny_model, POS, NEG[:5], chat=False)
    with pytest.raises(DirectionError, match=f"at least {MIN_PROMPTS}"):
        behaviour_direction(tiny_model, POS[:3], NEG[:3], chat=False)
    with pytest.raises(DirectionError, match="out of range"):
        behaviour_direction(tiny_model, POS, NEG, layer=4, chat=False)
    with pytest.raises(DirectionError, match="out of range"):
        behaviour_direction(tiny_model, POS, NEG, layer=-1, chat=False)
    with pytest.raises(DirectionError, match="position"):
        behaviour_direction(tiny_model, POS, NEG, layer=1, position="first", chat=False)
    with pytest.raises(DirectionError, match="chat"):
        behaviour_direction(tiny_model, POS, NEG, layer=1, position="post_instruction", chat=False, progress=False)
    with pytest.raises(PromptError, match="empty"):
        behaviour_direction(tiny_model, [*POS[:5], " "], NEG, chat=False)


def test_prompt_sources(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("one\n\n two \nthree\n")
    assert read_prompts(path) == ["one", "two", "three"]
    assert read_prompts(str(path), limit=2) == ["one", "two"]
    assert len(HARMFUL_REQUESTS) == len(HARMLESS_REQUESTS) == 32


def test_prompts_from_a_dataset():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "y": [0, 1]})
    assert read_prompts(ds) == ["a", "b"]
    assert read_prompts(datasets.DatasetDict({"train": ds}), split="train") == ["a", "b"]
    with pytest.raises(PromptError, match="column"):
        read_prompts(ds, column="prompt")


def test_projection_track_and_decomposition(tiny_model, gemma_scope_folders):
    from gemscope_widgets.backend.dictionaries.loading import load_sae

    d = behaviour_direction(tiny_model, POS, NEG, layer=1, chat=False, progress=False)
    track = projection_track(tiny_model, "The cat barks.", d)
    assert track.values.shape == (tiny_model.n_layers, len(track.tokens))
    with torch.no_grad():
        hs = tiny_model.model(input_ids=tiny_model.prompt("The cat barks.").input_ids[None], output_hidden_states=True)
    np.testing.assert_allclose(track.at(2), (hs.hidden_states[3][0] @ d.direction).numpy(), rtol=1e-5, atol=1e-5)

    sae = load_sae(gemma_scope_folders["resid_post"])  # layer 1 resid_post
    dec = decompose(d, sae, gm=tiny_model, prompts=POS[:3], k=5)
    w = sae.w_dec.float()
    cos = (w @ d.direction) / w.norm(dim=-1)
    assert dec.features[0] == int(cos.abs().argmax())
    np.testing.assert_allclose(dec.cosine, cos[dec.features].numpy(), rtol=1e-5)
    # Contribution oracle: mean over unmasked tokens of a_f * (w_dec[f] . r)
    acts = []
    for p in POS[:3]:
        x = tiny_model.model(input_ids=tiny_model.prompt(p).input_ids[None], output_hidden_states=True).hidden_states[2]
        acts.append(sae.encode(x[0, 1:]))
    a = torch.cat(acts)
    contrib = (a * (w @ d.direction)).mean(0)
    assert dec.explaining[0] == int(contrib.abs().argmax())
    np.testing.assert_allclose(dec.contribution, contrib[dec.explaining].detach().numpy(), rtol=1e-4, atol=1e-6)
