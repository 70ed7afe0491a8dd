"""Chain-of-thought faithfulness by early answering (Lanham et al., 2023).

"Measuring Faithfulness in Chain-of-Thought Reasoning" (Lanham et al., 2023): cut the chain of thought after each
of its sentences, append the answer cue, and read the probability of each answer. If the answer is already fixed
before the reasoning is written (the curve is flat), the stated reasoning is post-hoc. Two companions: *filler*
(the reasoning replaced by filler tokens of the same count: does extra computation alone help?) and *adding
mistakes* (one step corrupted: does the answer follow the corrupted reasoning?).

Which features the final answer leans on, and whether they sit on question or chain-of-thought tokens, comes from
:mod:`.cot_dependence` (gradient × activation on an SAE, or an attribution graph over a transcoder set).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gemscope_widgets.backend.behaviour.conversation import warn_if_base
from gemscope_widgets.backend.behaviour.cot_dependence import (
    FeatureDependence,
    circuit_dependence,
    feature_dependence,
    token_regions,
)
from gemscope_widgets.backend.behaviour.faithfulness_plot import curve_svg
from gemscope_widgets.backend.gemma.decoding import cache_keyword, cached_forward, new_cache
from gemscope_widgets.backend.gemma.prompts import GEMMA3_CHAT_TEMPLATE
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.errors import FaithfulnessError, PromptError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_NUMBER = re.compile(r"\d+")


def split_sentences(text: str) -> list[int]:
    """End offsets (exclusive, trailing whitespace included) of each sentence/step of ``text``."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() < len(text)]
    return [*ends, len(text)] if text.strip() else []


def corrupt_numbers(sentence: str) -> str | None:
    """The default mistake: every number in the step increased by one (None if the step has no number)."""
    if not _NUMBER.search(sentence):
        return None
    return _NUMBER.sub(lambda m: str(int(m.group()) + 1), sentence)


@dataclass
class AnswerScores:
    """Answer log-probabilities for a list of contexts: ``logprobs [n_contexts, n_answers]`` (summed over each
    answer's tokens), ``probs = exp(logprobs)`` and ``normalized`` (softmax over the answers)."""

    logprobs: np.ndarray

    @property
    def probs(self) -> np.ndarray:
        return np.asarray(np.exp(self.logprobs))

    @property
    def normalized(self) -> np.ndarray:
        z = self.logprobs - self.logprobs.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return np.asarray(e / e.sum(axis=-1, keepdims=True))


@dataclass
class CoTFaithfulness:
    """The early-answering curve and its companions.

    ``cuts [n+1]``: how many steps were kept (0..n); ``contexts``: the scored texts; ``curve``: :class:`AnswerScores`
    with a row per cut; ``filler``: one row, the reasoning replaced by filler (None if skipped); ``corrupted``: a
    row per cut with step ``corrupted_step`` replaced by ``corrupted_text`` (rows before it equal ``curve``), or None;
    ``agreement [n+1]``: whether the top answer at each cut equals the top answer with the full chain;
    ``area_over_curve``: Lanham et al.'s summary (mean disagreement over cuts; 0 = the answer never changes);
    ``dependence``: :class:`CircuitDependence` (a transcoder set was given), :class:`FeatureDependence` (an SAE was
    given) or None.
    """

    question: str
    steps: list[str]
    answers: list[str]
    answer_tokens: list[list[int]]
    cuts: np.ndarray
    contexts: list[str]
    curve: AnswerScores
    filler: AnswerScores | None
    corrupted: AnswerScores | None
    corrupted_step: int | None
    corrupted_text: str | None
    dependence: FeatureDependence | None = None

    @property
    def final_answer(self) -> str:
        return self.answers[int(self.curve.logprobs[-1].argmax())]

    @property
    def agreement(self) -> np.ndarray:
        top = self.curve.logprobs.argmax(axis=-1)
        return np.asarray((top == top[-1]).astype(np.float32))

    @property
    def area_over_curve(self) -> float:
        return float(1.0 - self.agreement[:-1].mean()) if len(self.cuts) > 1 else 0.0

    def _repr_html_(self) -> str:
        """The curve as an inline SVG (:func:`~.faithfulness_plot.curve_svg`) and the summary numbers."""
        summary = f"final answer {self.final_answer!r} · area over the curve {self.area_over_curve:.3f}"
        if isinstance(self.dependence, FeatureDependence):
            summary += f" · reasoning share of the attribution {self.dependence.cot_share:.2f}"
        return f'<div>{curve_svg(self)}<div style="font:12px sans-serif">{html.escape(summary)}</div></div>'


def _template_prefix(gm: GemmaModel, question: str) -> str:
    template = getattr(gm.tokenizer, "chat_template", None) or GEMMA3_CHAT_TEMPLATE
    return str(gm.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], chat_template=template, tokenize=False, add_generation_prompt=True
    ))


def _ids(gm: GemmaModel, text: str, chat: bool) -> list[int]:
    """Token ids of a full context: one ``<bos>`` (the template's in chat mode, the tokenizer's otherwise)."""
    return gm.prompt(text).input_ids.tolist() if not chat else _chat_ids(gm, text)


def _chat_ids(gm: GemmaModel, text: str) -> list[int]:
    ids = list(gm.tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = gm.tokenizer.bos_token_id
    if not ids or ids[0] != bos:
        ids.insert(0, bos)
    return ids


def _answer_rows(answers: Sequence[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The continuations a batch must hold so that every answer is scored: each answer's tokens but its last
    (``answer[:-1]``), without those another row already begins with. Returns ``(rows, row of each answer)``;
    one-token answers, and answers sharing a first token (``" 4"``, ``" 5"`` = ``▁`` + digit), need one row."""
    stems = sorted({tuple(a[:-1]) for a in answers}, key=len, reverse=True)
    rows: list[tuple[int, ...]] = []
    for stem in stems:
        if not any(row[: len(stem)] == stem for row in rows):
            rows.append(stem)
    where = [next(i for i, row in enumerate(rows) if row[: len(a) - 1] == tuple(a[:-1])) for a in answers]
    return [list(row) for row in rows], where


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _layer_kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer ``(keys, values)`` ``[B, heads, T, head_dim]`` of a transformers ``DynamicCache`` (the
    ``layers`` of transformers 5, or the ``key_cache`` / ``value_cache`` lists of 4.x)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _prefix_cache(gm: GemmaModel, kv: list[tuple[torch.Tensor, torch.Tensor]], length: int, batch: int) -> Any:
    """A fresh cache holding the first ``length`` positions of ``kv``, repeated over ``batch`` rows."""
    cache = new_cache(gm, every_position=True)
    for index, (k, v) in enumerate(kv):
        cache.update(k[:, :, :length].expand(batch, -1, -1, -1).contiguous(),
                     v[:, :, :length].expand(batch, -1, -1, -1).contiguous(), index)
    return cache


def score_answers(
    gm: GemmaModel,
    contexts: Sequence[list[int]],
    answers: Sequence[list[int]],
    *,
    prefix: list[int] | None = None,
    progress: Callable[[], None] | None = None,
) -> AnswerScores:
    """``log p(answer | context)`` summed over the answer's tokens, for every context and answer.

    Per context, one forward over a batch of ``context + row`` (the rows of :func:`_answer_rows`, right-padded:
    causal attention means padding never reaches a scored position), keeping logits for the answer positions only.
    ``prefix`` (token ids, ``<bos>`` first): contexts that begin with part of it reuse its key/value cache, computed
    once, for that shared part (exact: a position's keys and values depend only on the tokens before it), so only
    each context's own tail and the answer tokens are run. The cache keeps every position (a plain ``DynamicCache``)
    and the attention mask applies the sliding window, so contexts longer than the window are exact too (tested on a
    model whose window is shorter than its contexts). ``progress`` is called once per context.

    Returns :class:`AnswerScores` with ``logprobs [len(contexts), len(answers)]`` (float64, nats).
    """
    out = np.zeros((len(contexts), len(answers)), dtype=np.float64)
    rows, where = _answer_rows(answers)
    span = 1 + max(len(r) for r in rows)  # scored positions: the context's last one, then the row's tokens
    pad = gm.tokenizer.pad_token_id if gm.tokenizer.pad_token_id is not None else 0
    shared = [0] * len(contexts)
    kv: list[tuple[torch.Tensor, torch.Tensor]] = []
    keyword = cache_keyword(type(gm.model))
    with torch.inference_mode():
        if prefix is not None:
            shared = [min(_common_prefix(c, prefix), len(c) - 1) for c in contexts]
            deepest = max(shared, default=0)
            if deepest < 2:
                shared = [0] * len(contexts)
            else:
                cache = new_cache(gm, every_position=True)
                cached_forward(gm, torch.tensor([prefix[:deepest]], dtype=torch.long, device=gm.device), cache)
                kv = _layer_kv(cache)
        for i, ctx in enumerate(contexts):
            tail = ctx[shared[i]:]
            width = len(tail) + span - 1
            batch = [tail + row + [pad] * (width - len(tail) - len(row)) for row in rows]
            kwargs: dict[str, Any] = {"use_cache": False}
            if shared[i]:
                kwargs = {"use_cache": True, keyword: _prefix_cache(gm, kv, shared[i], len(rows))}
            ids = torch.tensor(batch, dtype=torch.long, device=gm.device)
            logits = gm.model(input_ids=ids, logits_to_keep=span, **kwargs).logits.float()
            logp = torch.log_softmax(logits, dim=-1).double()  # [R, span, V]: position j predicts answer token j
            for r, answer in enumerate(answers):
                positions = torch.arange(len(answer), device=logp.device)
                picked = logp[where[r], positions, torch.tensor(answer, device=logp.device)]
                out[i, r] = float(picked.sum())
            if progress is not None:
                progress()
    return AnswerScores(out)


def cot_faithfulness(
    gm: GemmaModel,
    question: str,
    chain_of_thought: str,
    answer_cue: str,
    answers: Sequence[str],
    *,
    chat: bool | None = None,
    separator: str = "\n",
    filler: str | None = " ...",
    corrupt: tuple[int, str] | Callable[[str], str | None] | bool | None = None,
    sae: Any = None,
    transcoders: Any = None,
    k: int = 20,
    max_feature_nodes: int | None = 1024,
    progress: bool = True,
) -> CoTFaithfulness:
    """The early-answering test of Lanham et al. (2023) on one question.

    The scored context after ``k`` steps is ``question + separator + steps[:k] + answer_cue`` (plain text; the kept
    steps without trailing whitespace, so the cue sets the spacing), or with
    ``chat=True`` (default for ``-it`` models) the question as the user turn and ``steps[:k] + answer_cue`` as the
    start of the model's turn. ``answers`` are appended verbatim to the cue (``" A"``, ``" 42"``); an answer of
    several tokens is scored in full (the sum of its tokens' log-probabilities). Steps are the chain's sentences
    (split after ``.``, ``!``, ``?`` and at newlines).

    ``filler``: the reasoning is replaced by this string repeated once per reasoning token (None: skipped).
    ``corrupt``: ``(step, new_text)``, or a function of a step's text returning its corrupted version (default:
    every number + 1, in the middle-most step that has a number; skipped if none has; ``False``: skipped).
    ``transcoders``: a transcoder set (a ``TranscoderSet`` or anything ``load_transcoders`` takes): also compute
    :class:`CircuitDependence` for the top answer with the full chain, from its attribution graph (at most
    ``max_feature_nodes`` feature nodes; None: all). Otherwise ``sae``, a one-layer SAE (kind ``"sae"``): compute
    :class:`FeatureDependence` (gradient × activation). ``k``: how many features either keeps.
    Cost: one forward over the full-chain context's shared prefix (its key/value cache is reused by every context
    beginning with it), then per scored context (each cut, the filler, each corrupted cut) one forward over its own
    tail plus the answer tokens, all answers in one batch (:func:`score_answers`); plus the dependence's attribution
    (a forward + backward, or one attribution graph).
    """
    if not isinstance(question, str) or not question.strip():
        raise FaithfulnessError("The question is empty: pass the question text.")
    if not isinstance(chain_of_thought, str) or not chain_of_thought.strip():
        raise FaithfulnessError("The chain of thought is empty: pass the reasoning text to cut.")
    if not isinstance(answer_cue, str):
        raise FaithfulnessError(f"answer_cue must be a string such as ' So the answer is', got {answer_cue!r}.")
    if isinstance(answers, str) or not isinstance(answers, Sequence) or len(answers) < 1:
        raise FaithfulnessError("answers must be a list of candidate answers, e.g. [' A', ' B'].")
    if len(set(answers)) != len(answers) or not all(isinstance(a, str) and a for a in answers):
        raise FaithfulnessError(f"answers must be distinct non-empty strings, got {list(answers)!r}.")
    if chat is None:
        chat = bool(gm.is_instruct)
    if chat:
        warn_if_base(gm)
    answer_ids = [list(gm.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    if any(not ids for ids in answer_ids):
        raise FaithfulnessError("An answer tokenises to nothing; pass visible text.")
    head = _template_prefix(gm, question) if chat else question + separator
    ends = split_sentences(chain_of_thought)
    steps = [chain_of_thought[a:b] for a, b in zip([0, *ends[:-1]], ends)]

    def context(reasoning: str) -> str:
        return head + reasoning.rstrip() + answer_cue

    texts = [context(chain_of_thought[: ([0, *ends])[c]]) for c in range(len(ends) + 1)]
    ids = [_ids(gm, t, chat) for t in texts]
    too_long = max(len(i) for i in ids) + max(len(a) for a in answer_ids)
    if too_long > gm.max_prompt_tokens:
        raise PromptError(f"The full context is {too_long} tokens; the limit is {gm.max_prompt_tokens}.")
    filler_ids = None
    if filler is not None:
        n_reasoning = len(gm.tokenizer(chain_of_thought, add_special_tokens=False)["input_ids"])
        filler_text = (filler * n_reasoning).lstrip() if chat else filler * n_reasoning
        filler_ids = _ids(gm, context(filler_text), chat)
    step, new = (None, None) if corrupt is False else _corruption(steps, corrupt)
    bad_ids = []
    if step is not None:
        bad_steps = [*steps[:step], new, *steps[step + 1:]]
        bad_ids = [_ids(gm, context("".join(str(s) for s in bad_steps[:c])), chat)
                   for c in range(step + 1, len(steps) + 1)]
    everything = [*ids, *([filler_ids] if filler_ids is not None else []), *bad_ids]

    with progress_bar(total=len(everything), desc="early answering", disable=not progress, leave=False) as bar:
        scores = score_answers(gm, everything, answer_ids, prefix=ids[-1], progress=bar.update).logprobs
    curve = AnswerScores(scores[: len(ids)])
    filler_scores = AnswerScores(scores[len(ids) : len(ids) + 1]) if filler_ids is not None else None
    corrupted = None
    if step is not None:
        corrupted = AnswerScores(np.concatenate([curve.logprobs[: step + 1], scores[len(everything) - len(bad_ids):]]))
    result = CoTFaithfulness(
        question=question, steps=steps, answers=list(answers), answer_tokens=answer_ids,
        cuts=np.arange(len(steps) + 1), contexts=texts, curve=curve, filler=filler_scores,
        corrupted=corrupted, corrupted_step=step, corrupted_text=new,
    )
    regions = (len(head), len(head) + len(chain_of_thought.rstrip()))
    top = int(curve.logprobs[-1].argmax())
    if transcoders is not None:
        result.dependence = circuit_dependence(gm, transcoders, ids[-1], token_regions(gm, texts[-1], ids[-1], regions),
                                               answer_ids[top], result.final_answer, k=k,
                                               max_feature_nodes=max_feature_nodes, progress=progress)
    elif sae is not None:
        result.dependence = feature_dependence(gm, sae, texts[-1], ids[-1], answer_ids[top], result.final_answer,
                                               regions, k=k)
    return result


def _corruption(steps: list[str], corrupt: Any) -> tuple[int | None, str | None]:
    if corrupt is True:
        corrupt = None
    if isinstance(corrupt, tuple):
        if len(corrupt) != 2 or not isinstance(corrupt[0], int) or not isinstance(corrupt[1], str):
            raise FaithfulnessError("corrupt must be (step_index, new_text) or a function of a step's text.")
        index, text = corrupt
        if not 0 <= index < len(steps):
            raise FaithfulnessError(f"corrupt step {index} is out of range: the chain has steps 0..{len(steps) - 1}.")
        return index, text
    fn = corrupt if callable(corrupt) else corrupt_numbers
    if corrupt is not None and not callable(corrupt):
        raise FaithfulnessError("corrupt must be (step_index, new_text) or a function of a step's text.")
    middle = (len(steps) - 1) / 2
    for index in sorted(range(len(steps)), key=lambda i: (abs(i - middle), i)):
        new = fn(steps[index])
        if new is not None and new != steps[index]:
            return index, new
    return None, None
