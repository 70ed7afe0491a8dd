"""Entity knowledge: which SAE latents tell entities the model knows from ones it does not.

Ferrando, Obeso, Rajamanoharan, Nanda (ICLR 2025), "Do I Know This Entity? Knowledge Awareness and Hallucinations
in Language Models": the model's own answers to attribute questions about an entity decide whether it *knows* the
entity; per latent, the separation ``P(active | known) − P(active | unknown)`` at the entity's last token (and the
reverse for unknown-entity latents) is computed per entity type, and the latents that separate in *every* type
(the minimum over types) are the generic "known entity" / "unknown entity" latents.

The built-in set (``data/entities.jsonl``, one JSON record per line) has cities, people and films, each with two
attribute questions and gold answers, plus invented entities (which no answer can be right about). Fields:

* ``type``: the entity type (``"city"``, ``"person"``, ``"film"``, or any of the user's own);
* ``entity``: the name, as it appears in the questions;
* ``invented``: true for made-up entities (always *unknown*);
* ``questions``: a list of ``{"question": "... {entity} ...", "answers": ["gold", "alias", ...]}``; an answer
  counts as right when it contains one of ``answers`` (case-insensitive).

Questions are asked after a fixed three-example prompt (:data:`FEW_SHOT`, about entities not in the set) as
``Q: <question>\\nA:``, and the first line of the greedy continuation is the model's answer.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gemscope_widgets.backend.behaviour.batched import greedy_answers, sae_inputs_at
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.errors import EntityError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

FEW_SHOT = (
    "Q: In which country is the city of Lyon?\nA: France\n"
    "Q: Who directed the film Psycho?\nA: Alfred Hitchcock\n"
    "Q: What was the profession of Marie Curie?\nA: physicist\n"
)
"""Examples that show the answer format before each question (entities outside the built-in set)."""
MAX_ANSWER_TOKENS = 8


@dataclass(frozen=True)
class Question:
    """An attribute question (``{entity}`` marks the name) and its gold answers (aliases; none for invented)."""

    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Entity:
    """One record of an entity set (see the module docstring for the fields)."""

    type: str
    entity: str
    invented: bool
    questions: tuple[Question, ...]


def _entity(record: Any, where: str) -> Entity:
    if isinstance(record, Entity):
        return record
    if not isinstance(record, dict):
        raise EntityError(f"{where}: an entity record must be a JSON object, got {type(record).__name__}.")
    missing = [k for k in ("type", "entity", "questions") if k not in record]
    if missing:
        raise EntityError(f"{where}: the record lacks {missing}; each needs type, entity and questions.")
    name, kind, questions = record["entity"], record["type"], record["questions"]
    if not isinstance(name, str) or not name.strip() or not isinstance(kind, str) or not kind:
        raise EntityError(f"{where}: 'entity' and 'type' must be non-empty strings.")
    if not isinstance(questions, list) or not questions:
        raise EntityError(f"{where}: {name!r} has no questions; give at least one.")
    parsed = []
    for q in questions:
        text = q.get("question") if isinstance(q, dict) else None
        answers = q.get("answers", []) if isinstance(q, dict) else None
        if not isinstance(text, str) or "{entity}" not in text:
            raise EntityError(f"{where}: every question of {name!r} must be a string containing '{{entity}}'.")
        if not isinstance(answers, list) or not all(isinstance(a, str) and a.strip() for a in answers):
            raise EntityError(f"{where}: the answers of {name!r} must be a list of non-empty strings.")
        parsed.append(Question(text, tuple(answers)))
    invented = bool(record.get("invented", False))
    if not invented and not all(q.answers for q in parsed):
        raise EntityError(f"{where}: {name!r} is not invented but a question has no gold answer.")
    return Entity(kind, name, invented, tuple(parsed))


def load_entities(source: Any = None) -> list[Entity]:
    """Entity records: the built-in set (``source=None``), a JSON-lines file, or a list of dicts / :class:`Entity`.

    Raises :class:`EntityError` for malformed records (the message names the line).
    """
    if source is None:
        text = resources.files("gemscope_widgets.backend.behaviour").joinpath("data/entities.jsonl").read_text("utf-8")
        return _parse_lines(text, "entities.jsonl")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise EntityError(f"{path} is not a file: pass a JSON-lines file of entity records.")
        return _parse_lines(path.read_text("utf-8"), path.name)
    if not isinstance(source, Sequence) or not source:
        raise EntityError("Entities must be a non-empty list of records or a JSON-lines file.")
    return [_entity(r, f"entity {i}") for i, r in enumerate(source)]


def _parse_lines(text: str, name: str) -> list[Entity]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise EntityError(f"{name} line {n} is not JSON ({e.msg}).") from None
        out.append(_entity(record, f"{name} line {n}"))
    if not out:
        raise EntityError(f"{name} has no entity records.")
    return out


def question_prompt(entity: Entity, question: Question) -> str:
    """The text the model answers: :data:`FEW_SHOT`, then ``Q: <question about entity>\\nA:``."""
    return f"{FEW_SHOT}Q: {question.question.format(entity=entity.entity)}\nA:"


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\u2019", "'")).strip().casefold()


def is_right(answer: str, gold: Sequence[str]) -> bool:
    """Whether ``answer`` contains one of the ``gold`` answers (case- and spacing-insensitive)."""
    said = _normal(answer)
    return any(_normal(g) in said for g in gold)


def entity_last_token(gm: GemmaModel, text: str, name: str) -> int:
    """Index, in ``gm.prompt(text).input_ids``, of the last token of the last mention of ``name`` in ``text``.

    Raises :class:`EntityError` when ``name`` is not in ``text`` or no token ends exactly where it ends (the
    name's last characters merge with the text after it into one token).
    """
    end = text.rfind(name)
    if end < 0:
        raise EntityError(f"{name!r} does not occur in its question; write the question with {{entity}}.")
    end += len(name)
    ids = gm.prompt(text).input_ids.tolist()
    encoded = gm.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    if list(encoded["input_ids"]) != ids:
        raise EntityError(f"The tokenizer's offsets for {name!r}'s question do not match its prompt tokens.")
    for i, (_, stop) in enumerate(encoded["offset_mapping"]):
        if stop == end and i > 0:
            return i
    raise EntityError(
        f"The last token of {name!r} cannot be located: it merges with the text after it into one token. "
        "Put a space or punctuation after the name in its first question."
    )


@dataclass
class EntityKnowledge:
    """Known/unknown entities by the model's own answers, and the latents that separate them in every type.

    ``entities``; ``answers[e][q]``: the model's answers; ``right``: ``[E, Q]`` bool (padded with False);
    ``known``: ``[E]`` 1 known, 0 unknown, -1 neither (some but fewer than ``min_right`` right);
    ``active``: ``[E, width]`` bool, each latent active (> 0) at the entity's last token in its first question;
    ``separation[type]``: ``[width]`` ``P(active | known) − P(active | unknown)`` in that type;
    ``known_score`` / ``unknown_score``: ``[width]`` the minimum over ``types_used`` of that separation and of its
    negation; ``known_latents`` / ``unknown_latents``: the ``k`` best of each; ``types_used``: the types with
    both classes (others cannot separate anything and are left out, said in ``skipped``).
    """

    sae_name: str
    entities: list[Entity]
    answers: list[list[str]]
    right: np.ndarray
    known: np.ndarray
    positions: np.ndarray
    active: np.ndarray = field(repr=False)
    separation: dict[str, np.ndarray] = field(repr=False)
    known_score: np.ndarray = field(repr=False)
    unknown_score: np.ndarray = field(repr=False)
    known_latents: list[int]
    unknown_latents: list[int]
    types_used: list[str]
    skipped: dict[str, str]
    min_right: int

    def counts(self) -> dict[str, dict[str, int]]:
        """Per type: ``{"known", "unknown", "neither", "invented"}`` counts."""
        out: dict[str, dict[str, int]] = {}
        for e, k in zip(self.entities, self.known.tolist()):
            row = out.setdefault(e.type, {"known": 0, "unknown": 0, "neither": 0, "invented": 0})
            row["known" if k == 1 else "unknown" if k == 0 else "neither"] += 1
            row["invented"] += int(e.invented)
        return out

    def summary(self) -> str:
        """A plain-text report: counts per type and the best latents of each kind with their scores."""
        lines = [f"Entity knowledge on {self.sae_name}: {len(self.entities)} entities; known = at least "
                 f"{self.min_right} answer(s) right, unknown = none right", ""]
        lines.append(f"{'type':<12}{'known':>7}{'unknown':>9}{'neither':>9}{'invented':>10}")
        for kind, c in self.counts().items():
            lines.append(f"{kind:<12}{c['known']:>7}{c['unknown']:>9}{c['neither']:>9}{c['invented']:>10}")
        for kind, why in self.skipped.items():
            lines.append(f"{kind} left out of the minimum: {why}")
        for title, latents, score in (("known-entity", self.known_latents, self.known_score),
                                      ("unknown-entity", self.unknown_latents, self.unknown_score)):
            lines += ["", f"{title} latents (min over {', '.join(self.types_used)} of the separation):"]
            lines += [f"  {f:>7}  {score[f]:+.3f}" for f in latents]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def entity_knowledge(
    gm: GemmaModel,
    sae: Any,
    entities: Any = None,
    *,
    min_right: int = 1,
    k: int = 10,
    max_new_tokens: int = MAX_ANSWER_TOKENS,
    progress: bool = True,
) -> EntityKnowledge:
    """Decide known / unknown entities by the model's greedy answers, then rank latents by how they separate them.

    ``entities``: None (the built-in set), a JSON-lines file or a list of records (see the module docstring).
    An entity is *known* when at least ``min_right`` of its answers are right, *unknown* when none is (invented
    entities always), and left out otherwise. ``sae``: a one-site SAE; activations are read at the entity's last
    token in its first question's prompt. Cost per entity: one forward pass up to the SAE's layer plus one greedy
    generation (``max_new_tokens``) per question, both in padded batches (:mod:`~.batched`).

    Raises :class:`EntityError` for malformed records, an entity whose last token cannot be located, or when no
    entity type has both a known and an unknown entity. Method: Ferrando et al. (ICLR 2025).
    """

    items = load_entities(entities)
    if isinstance(min_right, bool) or not isinstance(min_right, int) or min_right < 1:
        raise EntityError(f"min_right={min_right!r} must be a positive integer.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise EntityError(f"k={k!r} must be a positive integer.")
    if len(sae.config.hook_points_in) != 1:
        raise EntityError(f"{sae.config.name} reads several layers; use an SAE with one input site.")
    prompts = [question_prompt(e, e.questions[0]) for e in items]
    positions = np.asarray([entity_last_token(gm, p, e.entity) for p, e in zip(prompts, items)], dtype=np.int64)
    n_q = max(len(e.questions) for e in items)
    right = np.zeros((len(items), n_q), dtype=bool)
    asked = [(i, j) for i, e in enumerate(items) for j in range(len(e.questions))]
    bar = progress_bar(total=len(items) + len(asked), desc="entities", disable=not progress, leave=False)
    try:
        xs = sae_inputs_at(gm, sae, [gm.prompt(p) for p in prompts], [torch.tensor([int(t)]) for t in positions],
                           step=bar.update)
        with torch.inference_mode():
            active = np.stack([(sae.encode(x).float()[0] > 0).cpu().numpy() for x in xs])
        said = greedy_answers(gm, [question_prompt(items[i], items[i].questions[j]) for i, j in asked],
                              max_new_tokens, step=bar.update)
    finally:
        bar.close()
    answers: list[list[str]] = [[] for _ in items]
    for (i, j), answer in zip(asked, said):
        answers[i].append(answer)
        if not items[i].invented:
            right[i, j] = is_right(answer, items[i].questions[j].answers)
    n_right = right.sum(axis=1)
    known = np.where(n_right >= min_right, 1, np.where(n_right == 0, 0, -1)).astype(np.int64)

    separation: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    types = list(dict.fromkeys(e.type for e in items))
    kinds = np.asarray([e.type for e in items])
    for kind in types:
        in_type = kinds == kind
        n_known, n_unknown = int((known[in_type] == 1).sum()), int((known[in_type] == 0).sum())
        if n_known == 0 or n_unknown == 0:
            skipped[kind] = f"{n_known} known and {n_unknown} unknown entities (both are needed)"
            continue
        p_known = active[in_type & (known == 1)].mean(axis=0)
        p_unknown = active[in_type & (known == 0)].mean(axis=0)
        separation[kind] = (p_known - p_unknown).astype(np.float64)
    if not separation:
        counts = {t: (int(((kinds == t) & (known == 1)).sum()), int(((kinds == t) & (known == 0)).sum()))
                  for t in types}
        raise EntityError(
            "No entity type has both a known and an unknown entity (known, unknown per type: "
            f"{counts}); the model's answers give a single class. Add entities it knows (or invented ones)."
        )
    stacked = np.stack(list(separation.values()))  # [types, W]
    known_score = stacked.min(axis=0)
    unknown_score = (-stacked).min(axis=0)
    k = min(k, int(sae.width))
    return EntityKnowledge(
        sae_name=sae.config.name, entities=items, answers=answers, right=right, known=known, positions=positions,
        active=active, separation=separation, known_score=known_score, unknown_score=unknown_score,
        known_latents=np.argsort(-known_score, kind="stable")[:k].tolist(),
        unknown_latents=np.argsort(-unknown_score, kind="stable")[:k].tolist(),
        types_used=list(separation), skipped=skipped, min_right=min_right,
    )
