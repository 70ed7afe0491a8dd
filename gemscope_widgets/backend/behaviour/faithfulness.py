"""Chain-of-thought faithfulness by early answering (Lanham et al., 2023).

"Measuring Faithfulness in Chain-of-Thought Reasoning" (Lanham et al., 2023): cut the chain of thought after each
of its sentences, append the answer cue, and read the probability of each answer. If the answer is already fixed
before the reasoning is written (the curve is flat), the stated reasoning is post-hoc. Two companions: *filler*
(the reasoning replaced by filler tokens of the same count: does extra computation alone help?) and *adding
mistakes* (one step corrupted: does the answer follow the corrupted reasoning?).

At the answer position, gradient × activation on an SAE's features (``a_f · ∂ log p(answer) / ∂ a_f`` per token,
with the SAE's error kept as a constant so the forward pass is unchanged) says which features the answer leans on
and whether they sit on question tokens or chain-of-thought tokens (the attribution used by "Sparse Feature
Circuits", Marks et al., 2024).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gemscope_widgets.backend.behaviour.conversation import warn_if_base
from gemscope_widgets.backend.gemma.prompts import GEMMA3_CHAT_TEMPLATE
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
        return np.exp(self.logprobs)

    @property
    def normalized(self) -> np.ndarray:
        z = self.logprobs - self.logprobs.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)


@dataclass
class FeatureDependence:
    """Gradient × activation of ``log p(answer)`` on SAE features, split by where the features fire.

    ``features [k]`` by ``|total|``; ``question``, ``chain_of_thought``, ``cue``: ``[k]`` their attribution summed
    over the tokens of each region; ``totals``: the same per region over all features; ``answer``: the answer
    attributed to.
    """

    sae_name: str
    answer: str
    features: np.ndarray
    question: np.ndarray
    chain_of_thought: np.ndarray
    cue: np.ndarray
    totals: dict[str, float]

    @property
    def total(self) -> np.ndarray:
        return self.question + self.chain_of_thought + self.cue

    @property
    def cot_share(self) -> float:
        """Fraction of the absolute attribution carried by features on chain-of-thought tokens."""
        mags = {k: abs(v) for k, v in self.totals.items()}
        return mags["chain_of_thought"] / max(sum(mags.values()), 1e-12)


@dataclass
class CoTFaithfulness:
    """The early-answering curve and its companions.

    ``cuts [n+1]``: how many steps were kept (0..n); ``contexts``: the scored texts; ``curve``: :class:`AnswerScores`
    with a row per cut; ``filler``: one row, the reasoning replaced by filler (None if skipped); ``corrupted``: a
    row per cut with step ``corrupted_step`` replaced by ``corrupted_text`` (rows before it equal ``curve``), or None;
    ``agreement [n+1]``: whether the top answer at each cut equals the top answer with the full chain;
    ``area_over_curve``: Lanham et al.'s summary (mean disagreement over cuts; 0 = the answer never changes).
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
        return (top == top[-1]).astype(np.float32)

    @property
    def area_over_curve(self) -> float:
        return float(1.0 - self.agreement[:-1].mean()) if len(self.cuts) > 1 else 0.0


def _template_prefix(gm: GemmaModel, question: str) -> str:
    template = getattr(gm.tokenizer, "chat_template", None) or GEMMA3_CHAT_TEMPLATE
    return gm.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], chat_template=template, tokenize=False, add_generation_prompt=True
    )


def _ids(gm: GemmaModel, text: str, chat: bool) -> list[int]:
    """Token ids of a full context: one ``<bos>`` (the template's in chat mode, the tokenizer's otherwise)."""
    return gm.prompt(text).input_ids.tolist() if not chat else _chat_ids(gm, text)


def _chat_ids(gm: GemmaModel, text: str) -> list[int]:
    ids = list(gm.tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = gm.tokenizer.bos_token_id
    if not ids or ids[0] != bos:
        ids.insert(0, bos)
    return ids


def score_answers(gm: GemmaModel, contexts: Sequence[list[int]], answers: Sequence[list[int]]) -> AnswerScores:
    """``log p(answer | context)`` summed over the answer's tokens, for every context and answer.

    Per context: one forward pass over the context alone, whose last position scores every answer's first token
    (all of a one-token answer); answers of several tokens add one forward over a batch of ``context +
    answer[:-1]`` rows (right-padded: causal attention means padding never reaches a scored position), keeping
    logits only for the answer positions.
    """
    out = np.zeros((len(contexts), len(answers)), dtype=np.float64)
    longer = [r for r, a in enumerate(answers) if len(a) > 1]
    pad = gm.tokenizer.pad_token_id if gm.tokenizer.pad_token_id is not None else 0
    for i, ctx in enumerate(contexts):
        with torch.inference_mode():
            batch = torch.tensor([ctx], dtype=torch.long, device=gm.device)
            last = torch.log_softmax(gm.model(input_ids=batch, use_cache=False, logits_to_keep=1).logits[0, -1].float(),
                                     dim=-1)
            for r, answer in enumerate(answers):
                out[i, r] = float(last[answer[0]])
            if not longer:
                continue
            span = max(len(answers[r]) for r in longer) - 1  # positions after the context's last one
            rows = [ctx + answers[r][:-1] + [pad] * (span - len(answers[r]) + 1) for r in longer]
            batch = torch.tensor(rows, dtype=torch.long, device=gm.device)
            logits = gm.model(input_ids=batch, use_cache=False, logits_to_keep=span).logits.float()
            logp = torch.log_softmax(logits, dim=-1)  # [R, span, V]: position j predicts answer token j + 1
            for row, r in enumerate(longer):
                rest = answers[r][1:]
                picked = logp[row, torch.arange(len(rest)), torch.tensor(rest, device=logp.device)]
                out[i, r] += float(picked.double().sum())
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
    k: int = 20,
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
    ``sae``: a one-layer SAE (kind ``"sae"``): also compute :class:`FeatureDependence` for the answer with the
    full chain. Cost per scored context (each cut, the filler, each corrupted cut): one forward pass, plus one
    batched over the answers of several tokens; and a forward + backward for the attribution.
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
    from tqdm.auto import tqdm

    bar = tqdm(total=2 * len(ids) + 1, desc="early answering", disable=not progress, leave=False)
    rows = []
    for one in ids:
        rows.append(score_answers(gm, [one], answer_ids).logprobs[0])
        bar.update()
    curve = AnswerScores(np.stack(rows))
    filler_scores = None
    if filler is not None:
        n_reasoning = len(gm.tokenizer(chain_of_thought, add_special_tokens=False)["input_ids"])
        filler_text = (filler * n_reasoning).lstrip() if chat else filler * n_reasoning
        filler_scores = score_answers(gm, [_ids(gm, context(filler_text), chat)], answer_ids)
    bar.update()

    step, new = (None, None) if corrupt is False else _corruption(steps, corrupt)
    corrupted = None
    if step is not None:
        bad_steps = [*steps[:step], new, *steps[step + 1:]]
        bad_rows = list(curve.logprobs[: step + 1])
        for c in range(step + 1, len(steps) + 1):
            bad_ids = _ids(gm, context("".join(bad_steps[:c])), chat)
            bad_rows.append(score_answers(gm, [bad_ids], answer_ids).logprobs[0])
            bar.update()
        corrupted = AnswerScores(np.stack(bad_rows))
    bar.close()
    result = CoTFaithfulness(
        question=question, steps=steps, answers=list(answers), answer_tokens=answer_ids,
        cuts=np.arange(len(steps) + 1), contexts=texts, curve=curve, filler=filler_scores,
        corrupted=corrupted, corrupted_step=step, corrupted_text=new,
    )
    if sae is not None:
        regions = (len(head), len(head) + len(chain_of_thought.rstrip()))
        result.dependence = feature_dependence(gm, sae, texts[-1], chat, answer_ids[int(curve.logprobs[-1].argmax())],
                                               result.final_answer, regions, k=k)
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


def feature_dependence(
    gm: GemmaModel,
    sae: Any,
    text: str,
    chat: bool,
    answer: list[int],
    answer_text: str,
    regions: tuple[int, int],
    *,
    k: int = 20,
) -> FeatureDependence:
    """Gradient × activation of ``log p(answer | text)`` on ``sae``'s features at every token of ``text``.

    ``regions``: character offsets ``(end of question part, end of chain of thought)`` in ``text``; tokens are
    assigned to the question, the chain of thought or the cue by where they start. The SAE is spliced in with its
    error kept constant (``x ← decode(a) + stopgrad(x − decode(a))``), so the forward values are unchanged.
    """
    from gemscope_widgets.backend.gemma.hooks import hooked
    from gemscope_widgets.backend.gemma.sites import resolve_site

    if getattr(sae.config, "kind", None) != "sae":
        raise FaithfulnessError(
            f"{sae.config.name} is a {sae.config.kind}; feature dependence here needs a one-layer SAE (kind 'sae'). "
            "For transcoder sets use the circuits attribution."
        )
    ids = _ids(gm, text, chat)
    enc = gm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [s for s, _ in enc["offset_mapping"]]
    offset = len(ids) - len(starts)  # the <bos> added in front
    region = np.zeros(len(ids), dtype=np.int64)  # 0 question (and template), 1 chain of thought, 2 cue
    for j, s in enumerate(starts):
        region[j + offset] = 0 if s < regions[0] else (1 if s < regions[1] else 2)
    full = torch.tensor([ids + answer], dtype=torch.long, device=gm.device)
    holder: dict[str, torch.Tensor] = {}

    def splice(x: torch.Tensor) -> torch.Tensor:
        acts = sae.encode(x.detach()[0, : len(ids)]).detach().requires_grad_(True)
        recon = sae.decode(acts)
        holder["acts"] = acts
        new = x.float().clone()
        new[0, : len(ids)] = recon + (x[0, : len(ids)].float() - recon).detach()
        return new.to(x.dtype)

    site = resolve_site(gm, sae.config.hook_in)
    with torch.enable_grad(), hooked((site, splice)):
        logits = gm.model(input_ids=full, use_cache=False, logits_to_keep=len(answer) + 1).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        target = logp[torch.arange(len(answer)), torch.tensor(answer, device=logp.device)].sum()
        target.backward()
    acts = holder["acts"]
    attr = (acts * acts.grad).detach().cpu().double()  # [T, W]
    attr[0] = 0.0  # <bos>
    parts = [attr[torch.from_numpy(region == r)].sum(0) for r in range(3)]
    total = parts[0] + parts[1] + parts[2]
    order = torch.argsort(total.abs(), descending=True, stable=True)[: min(k, total.shape[0])]
    order = order[total[order] != 0]
    if not math.isfinite(float(total.sum())):
        raise FaithfulnessError("The attribution is not finite (the model overflowed); use float32.")
    return FeatureDependence(
        sae_name=sae.config.name,
        answer=answer_text,
        features=order.numpy(),
        question=parts[0][order].float().numpy(),
        chain_of_thought=parts[1][order].float().numpy(),
        cue=parts[2][order].float().numpy(),
        totals={name: float(p.sum()) for name, p in zip(("question", "chain_of_thought", "cue"), parts)},
    )
