"""Entity knowledge: the built-in set, known/unknown by the model's own greedy answers, separation per latent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.behaviour.entities import (
    FEW_SHOT,
    entity_knowledge,
    entity_last_token,
    is_right,
    load_entities,
    question_prompt,
)
from gemscope_widgets.errors import EntityError

SMALL = ["Paris", "Vellmora", "Albert Einstein", "Tobias Krellwin"]


@pytest.fixture(scope="module")
def demo_parts():
    """The embedded 270M and the demo SAE, without waiting for its statistics (not needed here)."""
    from gemscope_widgets.backend.default import load_default

    return load_default(device="cpu", dtype="float32", progress=False, stats=False)


def test_built_in_set_is_well_formed():
    entities = load_entities()
    types = {e.type for e in entities}
    assert types >= {"city", "person", "film"}
    for kind in types:
        of_type = [e for e in entities if e.type == kind]
        assert sum(e.invented for e in of_type) >= 4 and sum(not e.invented for e in of_type) >= 15
    for e in entities:
        assert e.questions and all("{entity}" in q.question for q in e.questions)
        assert all(q.answers for q in e.questions) != e.invented
        assert e.entity not in FEW_SHOT
    assert len({e.entity for e in entities}) == len(entities)


def test_answers_are_checked_against_gold_aliases():
    assert is_right(" France.", ["France"]) and is_right("steven  SPIELBERG", ["Steven Spielberg", "Spielberg"])
    assert not is_right("Germany", ["France"]) and not is_right("anything", [])


def test_malformed_records_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    record = {"type": "city", "entity": "Oslo", "questions": [{"question": "Where?", "answers": ["Norway"]}]}
    bad.write_text(json.dumps(record) + "\n")
    with pytest.raises(EntityError, match=r"bad.jsonl line 1.*\{entity\}"):
        load_entities(bad)
    bad.write_text("{not json\n")
    with pytest.raises(EntityError, match="line 1 is not JSON"):
        load_entities(bad)
    with pytest.raises(EntityError, match="not invented but a question has no gold"):
        load_entities([{"type": "city", "entity": "Oslo", "questions": [{"question": "{entity}?", "answers": []}]}])
    with pytest.raises(EntityError, match="lacks"):
        load_entities([{"entity": "Oslo"}])


def greedy_no_cache(gm, text, n):
    """Oracle: argmax of a full forward pass per step, no KV cache, no generate()."""
    ids = gm.prompt(text).input_ids
    out = []
    for _ in range(n):
        with torch.no_grad():
            logits = gm.model(input_ids=torch.cat([ids, torch.tensor(out, dtype=torch.long)])[None]).logits
        out.append(int(logits[0, -1].argmax()))
    return gm.tokenizer.decode(out, skip_special_tokens=True).split("\n", 1)[0].strip()


@pytest.mark.real_model
def test_entity_last_token_and_unlocatable_name(demo_parts):
    real_model, sae = demo_parts
    for e in load_entities():
        text = question_prompt(e, e.questions[0])
        i = entity_last_token(real_model, text, e.entity)
        prefix = text[: text.rfind(e.entity) + len(e.entity)]
        assert real_model.prompt(prefix).input_ids.tolist() == real_model.prompt(text).input_ids[: i + 1].tolist()
    question = {"question": "Where is {entity}don?", "answers": ["UK"]}
    merged = [{"type": "city", "entity": "Lon", "questions": [question]}]
    with pytest.raises(EntityError, match="cannot be located"):
        entity_knowledge(real_model, sae, merged, progress=False)


@pytest.mark.real_model
def test_known_unknown_and_separation_follow_direct_computation(demo_parts):
    gm, sae = demo_parts
    chosen = [e for e in load_entities() if e.entity in SMALL]
    result = entity_knowledge(gm, sae, chosen, max_new_tokens=3, k=5, progress=False)
    for i, e in enumerate(result.entities):
        said = [greedy_no_cache(gm, question_prompt(e, q), 3) for q in e.questions]
        assert result.answers[i] == said
        n_right = 0 if e.invented else sum(is_right(a, q.answers) for a, q in zip(said, e.questions))
        assert result.known[i] == (1 if n_right >= 1 else 0)
    # Oracle: prompt_features of each entity's first question, at the token where the name ends.
    active = []
    for e in result.entities:
        text = question_prompt(e, e.questions[0])
        pos = len(gm.prompt(text[: text.rfind(e.entity) + len(e.entity)]).input_ids) - 1
        active.append(prompt_features(gm, sae, text)[0].dense()[pos].numpy() > 0)
    active = np.stack(active)
    kinds = np.array([e.type for e in result.entities])
    expected = {}
    for kind in ("city", "person"):
        known = (kinds == kind) & (result.known == 1)
        unknown = (kinds == kind) & (result.known == 0)
        if known.any() and unknown.any():
            expected[kind] = active[known].mean(0) - active[unknown].mean(0)
    assert set(result.separation) == set(expected) and expected, result.summary()
    for kind, values in expected.items():
        np.testing.assert_allclose(result.separation[kind], values)
    np.testing.assert_allclose(result.known_score, np.min(list(expected.values()), axis=0))
    np.testing.assert_allclose(result.unknown_score, np.min([-v for v in expected.values()], axis=0))
    assert result.known_score[result.known_latents[0]] == result.known_score.max()
    assert "known" in result.summary()


@pytest.mark.real_model
def test_single_class_refused(demo_parts):
    gm, sae = demo_parts
    invented = [e for e in load_entities() if e.invented][:2]
    with pytest.raises(EntityError, match="single class"):
        entity_knowledge(gm, sae, invented, max_new_tokens=1, progress=False)
