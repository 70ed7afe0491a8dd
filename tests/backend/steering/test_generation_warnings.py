"""Steered generation raises no library warnings (transformers' deprecations would land in notebook output)."""

from __future__ import annotations

import warnings

import pytest

import gemscope_widgets.backend.steering.generation as generation
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.gemma.decoding import cache_keyword
from gemscope_widgets.backend.steering.generation import generate
from gemscope_widgets.backend.steering.spec import SteeringSpec

TEXT = "Paris is the capital of France. The quick brown fox"


@pytest.mark.parametrize("per_row", [True, False])
def test_generate_with_warnings_as_errors(tiny_model, gemma_scope_folders, monkeypatch, per_row):
    sae = load_sae_folder(gemma_scope_folders["transcoder"])
    monkeypatch.setattr(generation, "rows_one_at_a_time", lambda _: per_row)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = generate(tiny_model, TEXT, [SteeringSpec(3, 4.0, mode="clamp")], sae=sae, unit="raw", max_new_tokens=4,
                          stop_at_eos=False)
    assert len(result.steered_ids) == 4


def test_the_cache_keyword_follows_the_decoder_signature():
    class Old:  # transformers < 5.x: the cache is passed as past_key_values
        def forward(self, input_ids=None, past_key_values=None, use_cache=None): ...

    class New:
        def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs): ...

    assert cache_keyword(Old) == "past_key_values"
    assert cache_keyword(New) == "cache"
