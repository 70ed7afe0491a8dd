"""Refusal scores by opening phrase, and the ablation sweep built on the steering backend's direction modes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gemscope_widgets.backend.behaviour.conversation import stopping_at_end_of_turn
from gemscope_widgets.backend.behaviour.direction import behaviour_direction
from gemscope_widgets.backend.behaviour.refusal import REFUSAL_PHRASES, refusal_score, refusal_sweep
from gemscope_widgets.errors import DirectionError


def test_refusal_score_openings():
    assert refusal_score("I'm sorry, but I can't help with that.") == 1.0
    assert refusal_score("  **I cannot** do that") == 1.0
    assert refusal_score("I\u2019m not able to assist.") == 1.0  # curly apostrophe
    assert refusal_score("As an AI, I must decline.") == 1.0
    assert refusal_score("Sure! Here is how to fix the lock.") == 0.0
    assert refusal_score("Here is why I cannot stress this enough.") == 0.0  # not at the start
    assert refusal_score("Nope, not doing that.", extra=["Nope"]) == 1.0
    assert refusal_score("I'm sorry to hear that.", phrases=["No"]) == 0.0
    assert "I cannot" in REFUSAL_PHRASES
    with pytest.raises(DirectionError):
        refusal_score(None)  # type: ignore[arg-type]


def test_sweep_equals_direct_steered_generation(tiny_model):
    from gemscope_widgets.backend.steering.generation import generate
    from gemscope_widgets.backend.steering.spec import DirectionSpec

    pos = ["The fox runs.", "A fox sleeps.", "Fox and hen.", "The red fox."]
    neg = ["x = 1", "print(x)", "def f(): pass", "y = [1]"]
    d = behaviour_direction(tiny_model, pos, neg, layer=2, chat=False, progress=False)
    prompts = ["Tell me about foxes.", "Write some code."]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        curve = refusal_sweep(tiny_model, prompts, d, strengths=(0.0, 1.0), max_new_tokens=4, progress=False)
    assert curve.scores.shape == (2, 2) and curve.rates.shape == (2,)
    gm = stopping_at_end_of_turn(tiny_model)
    for j, p in enumerate(prompts):
        messages = [{"role": "user", "content": p}]
        full = generate(gm, messages, [DirectionSpec(d, mode="ablate", strength=1.0)], max_new_tokens=4)
        assert curve.responses[1][j] == full.steered_text
        assert curve.baseline_responses[j] == full.baseline_text
        assert curve.responses[0][j] == full.baseline_text  # strength 0 removes nothing
    # A phrase list that matches the unsteered replies turns every baseline into a "refusal".
    first_words = [r[:3] for r in curve.baseline_responses if r[:3].strip()]
    if first_words:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = refusal_sweep(tiny_model, prompts, d, strengths=(0.0,), max_new_tokens=4, progress=False,
                                  phrases=first_words)
        np.testing.assert_array_equal(again.scores[0], [1.0 if r[:3] in first_words else 0.0
                                                         for r in curve.baseline_responses])
    with pytest.raises(DirectionError, match="strengths"):
        refusal_sweep(tiny_model, prompts, d, strengths=())
    with pytest.raises(DirectionError, match="mode"):
        refusal_sweep(tiny_model, prompts, d, mode="clamp")
