"""Explanations of SAE features written by a language model, scored by detection and fuzzing.

The protocol is EleutherAI ``delphi``'s (Paulo, Mallen, Juang, Belrose, "Automatically Interpreting Millions of
Features in LLMs", 2024), with its prompts copied verbatim (``delphi/explainers/default/prompts.py``,
``delphi/scorers/classifier/prompts/{detection,fuzz}_prompt.py``) and run on a local Gemma 3 loaded with
``load_model`` (an instruction-tuned ``-it`` one: its chat template; the same or another model scores):

**Explain.** The feature's ``n_explain`` top-activating examples from the corpus statistics (``stats.examples(f,
kind="top")``: one window per scanned document, ranked by the peak) are shown with the tokens above 0.3 × the
example's maximum between ``<<`` and ``>>`` and, after each, delphi's ``Activations: ("tok" : n)`` line (``n`` =
ceil(10 · a / the feature's maximum), at most 11 tokens). A last line gives the ``logit_k`` tokens the feature
promotes most as the next token (its logit lens; not in delphi's prompt). delphi's system prompt and three few-shot
examples come first. The model's reply is prefilled with ``[EXPLANATION]:`` (the form delphi parses) and continued
greedily up to ``max_new_tokens`` tokens or the first newline.

**Score.** The scored contexts come from held-out text that the statistics never read (the label scores' held-out
pass, :func:`~.label_scores.held_out_tokens`: by default the corpus documents after the scanned ones), so no scored
context was shown to the explainer. Each held-out document where the feature fires gives one *activating* context:
the window (as the statistics', 16 tokens before and 8 after by default) around its peak. Those contexts are ranked
by their peak and cut into ``deciles`` equal slices by rank (delphi's ``split_quantiles``: slice ``i`` is ranks
``i·m .. (i+1)·m − 1`` with ``m = n_activating // deciles``; the remainder is never drawn), and ``n_test //
deciles`` contexts are drawn from each slice without replacement (``random.Random(seed + feature)``); decile 0 holds
the strongest. ``n_non`` (default ``n_test``) *non-activating* contexts are windows of the same length at a random
start in held-out documents where the feature never fires. A feature needs ``MIN_ACTIVATING`` activating held-out
documents (and ``deciles`` of them) and ``MIN_NON_ACTIVATING`` others, else it is skipped and says why.

- *Detection*: the scorer sees the explanation and one context as plain text and answers ``[1]`` (it has the
  feature) or ``[0]``.
- *Fuzzing*: the same with tokens marked ``<< >>``: in an activating context the tokens at or above 0.3 × its
  peak; in a non-activating one ``ceil(mean number of non-zero tokens of the activating contexts)`` random tokens
  (delphi's default fuzzing). The scorer answers whether the marked tokens are correctly marked.

One context per prompt (delphi's default ``n_examples_shown=1``), the scorer's reply prefilled with ``[``; the
answer is read from the next-token probabilities, never sampled: ``probability = P("1") / (P("0") + P("1"))``
(delphi's normalised log-prob), ``prediction = probability > 0.5``. The prompts of one feature and method share
everything up to the context: that prefix runs once into a KV cache, then ``batch_size`` contexts at a time run as
one forward over their right-padded suffixes. The reported score is the **balanced accuracy**
``½ · (TP / (TP + FN) + TN / (TN + FP))`` (scikit-learn's ``balanced_accuracy_score``), with the AUROC of the
probabilities beside it.

**Cost** per feature (``Explanation.prefills``): one explainer prefill (its examples and logit-lens line; delphi's
system prompt and few-shot turns, about 600 tokens, run once per call and kept) plus one cached step per generated
token; per method one prefill of the explanation and the first context's shared text plus ``ceil((n_test + n_non)
/ batch_size)`` batched forwards of about 40 tokens a context. With the defaults (20 + 20 contexts, batch 8): 1 + 2
× (1 + 5) = 13 prefills and up to 64 generation steps (the first feature of a call adds the three shared prefixes).
Measured (``python -m benchmarks.explain_case``, embedded 270M as explainer and scorer on CPU, the test settings: 3
examples, 5 + 3 contexts, 6 new tokens): 7 prefills and 53-58 CPU seconds a feature, 5.8-6.3x the CPU time of one
620-token forward measured in the same run, on 2 cores shared at load average 27 (``benchmarks/results/
explain_cpu.json``).

Results are cached as one JSON file per feature in ``cache_dir("explanations", <sae>-<key>)``, keyed by the
studied model, the SAE, its statistics, the held-out text, the explainer and its settings; scores inside it by
scorer and sampling settings. A run that stops keeps every finished feature; the next call skips them (resumable).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import re
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from gemscope_widgets.backend.analysis.label_scores import HeldOutTokens
from gemscope_widgets.backend.analysis.labels import FeatureLabels, top_logit_tokens
from gemscope_widgets.backend.gemma.decoding import cached_forward, new_cache, next_token_logits
from gemscope_widgets.backend.gemma.prompts import make_prompt, token_strings
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.stats import store
from gemscope_widgets.backend.steering.plan import model_lock
from gemscope_widgets.cache import cache_dir
from gemscope_widgets.errors import ExplainError, warn_user

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

Method = Literal["detection", "fuzzing"]
METHODS: tuple[Method, ...] = ("detection", "fuzzing")
FORMAT = 1
HIGHLIGHT = 0.3
"""delphi's threshold: a token is marked when its activation is above this fraction of its context's maximum."""
MIN_ACTIVATING = 10
"""Held-out documents a feature must fire in to be scored (and at least ``deciles``)."""
MIN_NON_ACTIVATING = 4
"""Held-out documents a feature must not fire in to be scored."""
EXPLANATION_MARK = "[EXPLANATION]:"

# ---------------------------------------------------------------------- delphi's prompts, verbatim

EXPLAINER_SYSTEM = """You are a meticulous AI researcher conducting an important investigation into patterns found in language. Your task is to analyze text and provide an explanation that thoroughly encapsulates possible patterns found in it.
Guidelines:

You will be given a list of text examples on which special words are selected and between delimiters like <<this>>. If a sequence of consecutive tokens all are important, the entire sequence of tokens will be contained between delimiters <<just like this>>. How important each token is for the behavior is listed after each example in parentheses.

- Try to produce a concise final description. Simply describe the text latents that are common in the examples, and what patterns you found.
- If the examples are uninformative, you don't need to mention them. Don't focus on giving examples of important tokens, but try to summarize the patterns found in the examples.
- Do not mention the marker tokens (<< >>) in your explanation.
- Do not make lists of possible explanations. Keep your explanations short and concise.
- The last line of your response must be the formatted explanation, using [EXPLANATION]:

"""  # noqa: E501

EXPLAINER_FEW_SHOT = (
    ("""
Example 1:  and he was <<over the moon>> to find
Activations: ("over", 5), (" the", 6), (" moon", 9)
Example 2:  we'll be laughing <<till the cows come home>>! Pro
Activations: ("till", 5), (" the", 5), (" cows", 8), (" come", 8), (" home", 8)
Example 3:  thought Scotland was boring, but really there's more <<than meets the eye>>! I'd
Activations: ("than", 5), (" meets", 7), (" the", 6), (" eye", 8)
""", """
[EXPLANATION]: Common idioms in text conveying positive sentiment.
"""),
    ("""
Example 1:  a river is wide but the ocean is wid<<er>>. The ocean
Activations: ("er", 8)
Example 2:  every year you get tall<<er>>," she
Activations: ("er", 2)
Example 3:  the hole was small<<er>> but deep<<er>> than the
Activations: ("er", 9), ("er", 9)
""", """
[EXPLANATION]: The token "er" at the end of a comparative adjective describing size.
"""),
    ("""
Example 1:  something happening inside my <<house>>", he
Activations: ("house", 7)
Example 2:  presumably was always contained in <<a box>>", according
Activations: ("a", 5), ("box", 9)
Example 3:  people were coming into the <<smoking area>>".

However he
Activations: ("smoking", 2), ("area", 4)
Example 4:  Patrick: "why are you getting in the << way?>>" Later,
Activations: ("way", 4), ("?", 2)
""", """
[EXPLANATION]: Nouns representing a distinct objects that contains something, sometimes preciding a quotation mark.
"""),
)

DETECTION_SYSTEM = """You are an intelligent and meticulous linguistics researcher.

You will be given a certain latent of text, such as "male pronouns" or "text with negative sentiment".

You will then be given several text examples. Your task is to determine which examples possess the latent.

For each example in turn, return 1 if the sentence is correctly labeled or 0 if the tokens are mislabeled. You must return your response in a valid Python list. Do not return anything else besides a Python list.
"""  # noqa: E501

DETECTION_FEW_SHOT = (
    ("""Latent explanation: Words related to American football positions, specifically the tight end position.

Test examples:

Example 0:<|endoftext|>Getty ImagesĊĊPatriots tight end Rob Gronkowski had his bossâĢĻ
Example 1: names of months used in The Lord of the Rings:ĊĊâĢľâĢ¦the
Example 2: Media Day 2015ĊĊLSU defensive end Isaiah Washington (94) speaks to the
Example 3: shown, is generally not eligible for ads. For example, videos about recent tragedies,
Example 4: line, with the left side âĢĶ namely tackle Byron Bell at tackle and guard Amini
""", "[1,0,0,0,1]"),
    ("""Latent explanation: The word "guys" in the phrase "you guys".

Test examples:

Example 0: enact an individual health insurance mandate?âĢĿ, Pelosi's response was to dismiss both
Example 1: birth control access<|endoftext|> but I assure you women in Kentucky aren't laughing as they struggle
Example 2: du Soleil Fall Protection Program with construction requirements that do not apply to theater settings because
Example 3:Ċ<|endoftext|> distasteful. Amidst the slime lurk bits of Schadenfre
Example 4: the<|endoftext|>ľI want to remind you all that 10 days ago (director Massimil
""", "[0,0,0,0,0]"),  # noqa: E501
    ("""Latent explanation: "of" before words that start with a capital letter.

Test examples:

Example 0: climate, TomblinâĢĻs Chief of Staff Charlie Lorensen said.Ċ
Example 1: no wonderworking relics, no true Body and Blood of Christ, no true Baptism
Example 2:ĊĊDeborah Sathe, Head of Talent Development and Production at Film London,
Example 3:ĊĊIt has been devised by Director of Public Prosecutions (DPP)
Example 4: and fair investigation not even include the Director of Athletics? Â· Finally, we believe the
""", "[1,1,1,1,1]"),
)

FUZZING_SYSTEM = """You are an intelligent and meticulous linguistics researcher.

You will be given a certain latent of text, such as "male pronouns" or "text with negative sentiment". You will be given a few examples of text that contain this latent. Portions of the sentence which strongly represent this latent are between tokens << and >>.

Some examples might be mislabeled. Your task is to determine if every single token within << and >> is correctly labeled. Consider that all provided examples could be correct, none of the examples could be correct, or a mix. An example is only correct if every marked token is representative of the latent

For each example in turn, return 1 if the sentence is correctly labeled or 0 if the tokens are mislabeled. You must return your response in a valid Python list. Do not return anything else besides a Python list.
"""  # noqa: E501

FUZZING_FEW_SHOT = (
    ("""Latent explanation: Words related to American football positions, specifically the tight end position.

Test examples:

Example 0:<|endoftext|>Getty ImagesĊĊPatriots<< tight end>> Rob Gronkowski had his bossâĢĻ
Example 1: posted<|endoftext|>You should know this<< about>> offensive line coaches: they are large, demanding<< men>>
Example 2: Media Day 2015ĊĊLSU<< defensive>> end Isaiah Washington (94) speaks<< to the>>
Example 3:<< running backs>>," he said. .. Defensive<< end>> Carroll Phillips is improving and his injury is
Example 4:<< line>>, with the left side âĢĶ namely<< tackle>> Byron Bell at<< tackle>> and<< guard>> Amini
""", "[1,0,0,1,1]"),
    ("""Latent explanation: The word "guys" in the phrase "you guys".

Test examples:

Example 0: if you are<< comfortable>> with it. You<< guys>> support me in many other ways already and
Example 1: birth control access<|endoftext|> but I assure you<< women>> in Kentucky aren't laughing as they struggle
Example 2:âĢĻs gig! I hope you guys<< LOVE>> her, and<< please>> be nice,
Example 3:American, told<< Hannity>> that âĢľyou<< guys>> are playing the race card.âĢĿ
Example 4:<< the>><|endoftext|>ľI want to<< remind>> you all that 10 days ago (director Massimil
""", "[0,0,0,0,0]"),
    ("""Latent explanation: "of" before words that start with a capital letter.

Test examples:

Example 0: climate, TomblinâĢĻs Chief<< of>> Staff Charlie Lorensen said.Ċ
Example 1: no wonderworking relics, no true Body and Blood<< of>> Christ, no true Baptism
Example 2:ĊĊDeborah Sathe, Head<< of>> Talent Development and Production at Film London,
Example 3:ĊĊIt has been devised by Director<< of>> Public Prosecutions (DPP)
Example 4: and fair investigation not even include the Director<< of>> Athletics? Â· Finally, we believe the
""", "[1,1,1,1,1]"),
)

SCORER_QUESTION = """Latent explanation: {explanation}

Text examples:

{examples}
"""


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class ScoredContext:
    """One scored context: held-out document ``doc`` (numbered in the held-out pass's order, which runs the
    documents by length: :func:`~gemscope_widgets.backend.stats.corpus.plan_batches`), ``activating`` or not,
    its ``decile`` (0 = strongest; None for a non-activating one), its ``peak`` activation, the ``text`` the
    scorer saw (marks included for fuzzing), the scorer's next-token probabilities ``p_one`` = P("1") and
    ``p_zero`` = P("0") after ``[``, ``probability`` = p_one / (p_one + p_zero) and ``prediction`` =
    probability > 0.5."""

    doc: int
    activating: bool
    decile: int | None
    peak: float
    text: str
    p_one: float
    p_zero: float
    probability: float
    prediction: bool


@dataclass(frozen=True)
class ScorerResult:
    """One method's score of one explanation: ``balanced_accuracy`` over ``contexts`` (predictions against
    activating / not), ``auroc`` of their probabilities (None with one class), ``prefills``: forwards run."""

    method: str
    scorer: str
    balanced_accuracy: float
    auroc: float | None
    contexts: list[ScoredContext]
    prefills: int = 0


@dataclass(frozen=True)
class Explanation:
    """Feature ``feature``'s explanation ``text`` by ``explainer``, with its ``detection`` and ``fuzzing`` scores
    by ``scorer`` (None when not scored: ``reason`` says why).

    ``shown_docs``: the scanned documents whose examples the explainer saw; ``prompt``: the explainer's whole
    prompt as text; ``response``: its raw reply after ``[EXPLANATION]:``; ``prefills``: forwards over a prompt or a
    batch of contexts (the explainer's prompt, then each method's shared prefix and batches; the ``new_tokens``
    generation steps come on top); ``seconds``: time
    spent on this feature by the call that computed it; ``cached``: read from disk by this call.
    """

    feature: int
    text: str
    explainer: str
    scorer: str
    detection: ScorerResult | None
    fuzzing: ScorerResult | None
    shown_docs: list[int] = field(default_factory=list)
    prompt: str = ""
    response: str = ""
    new_tokens: int = 0
    prefills: int = 0
    seconds: float = 0.0
    reason: str = ""
    cached: bool = False

    @property
    def scores(self) -> dict[str, float]:
        """``{"detection (scorer)": balanced accuracy, "fuzzing (scorer)": ...}`` for the scored methods."""
        out = {}
        for result in (self.detection, self.fuzzing):
            if result is not None:
                out[f"{result.method} ({self.scorer})"] = result.balanced_accuracy
        return out

    @property
    def source(self) -> str:
        """The label source this explanation shows under: ``"explainer (<model>)"``."""
        return f"explainer ({self.explainer})"


class Explanations(Mapping[int, Explanation]):
    """``{feature: Explanation}`` for the explained features, in the order asked; ``skipped``: ``{feature:
    reason}`` for those that could not be scored."""

    def __init__(self, explained: Mapping[int, Explanation], skipped: Mapping[int, str]) -> None:
        self._explained = dict(explained)
        self.skipped = dict(skipped)

    def __getitem__(self, f: int) -> Explanation:
        return self._explained[int(f)]

    def __iter__(self) -> Iterator[int]:
        return iter(self._explained)

    def __len__(self) -> int:
        return len(self._explained)

    def __repr__(self) -> str:
        rows = [f"  {f}: {e.text!r} " + ", ".join(f"{k} {v:.2f}" for k, v in e.scores.items())
                for f, e in self._explained.items()]
        rows += [f"  {f}: skipped ({why})" for f, why in self.skipped.items()]
        return f"Explanations({len(self)} explained, {len(self.skipped)} skipped)\n" + "\n".join(rows)


# ---------------------------------------------------------------------- contexts


@dataclass(frozen=True)
class Context:
    """A window of held-out document ``doc``: its token ``ids`` and the feature's ``values`` on them; ``decile`` of
    an activating one (None otherwise); ``tokens``: each token's text once :meth:`with_tokens` filled them."""

    doc: int
    ids: list[int]
    values: list[float]
    activating: bool
    decile: int | None = None
    tokens: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return max(self.values, default=0.0)

    def with_tokens(self, tokenizer: Any) -> Context:
        """This context with ``tokens`` filled in (each token's text)."""
        return replace(self, tokens=token_strings(tokenizer, self.ids))


def document_of(held: HeldOutTokens) -> torch.Tensor:
    """The held-out document of every held-out token, ``[N]`` int64 (a document ends where ``next_ids`` is -1)."""
    ends = (held.next_ids == -1).to(torch.int64)
    starts = torch.zeros_like(ends)
    starts[1:] = ends[:-1]
    return starts.cumsum(0)


def held_out_contexts(held: HeldOutTokens, feature: int, *, before: int = 16, after: int = 8,
                      rng: random.Random | None = None) -> tuple[list[Context], list[Context]]:
    """Every activating context of ``feature`` in ``held`` (one per document where it fires: the window of
    ``before`` + 1 + ``after`` tokens around its peak, ranked by peak, strongest first; ties: earlier document) and
    one non-activating window (same length, random start from ``rng``) per document where it never fires."""
    rng = rng or random.Random(0)
    doc = document_of(held)
    n_docs = int(doc[-1]) + 1 if held.n_tokens else 0
    values = held.activations(int(feature))
    bounds = torch.searchsorted(doc, torch.arange(n_docs + 1))
    active: list[tuple[float, int]] = []
    quiet: list[int] = []
    for d in range(n_docs):
        lo, hi = int(bounds[d]), int(bounds[d + 1])
        peak = float(values[lo:hi].max()) if hi > lo else 0.0
        (active.append((peak, d)) if peak > 0 else quiet.append(d))
    active.sort(key=lambda p: (-p[0], p[1]))
    length = before + 1 + after

    def window(d: int, start: int, activating: bool) -> Context:
        lo, hi = int(bounds[d]), int(bounds[d + 1])
        a, b = max(lo, lo + start), min(hi, lo + start + length)
        return Context(d, held.ids[a:b].tolist(), [float(v) for v in values[a:b]], activating)

    on = []
    for _, d in active:
        lo, hi = int(bounds[d]), int(bounds[d + 1])
        at = int(torch.argmax(values[lo:hi]))
        on.append(window(d, at - before, True))
    off = [window(d, rng.randrange(max(1, int(bounds[d + 1] - bounds[d]) - length + 1)), False) for d in quiet]
    return on, off


def sample_deciles(contexts: Sequence[Context], n: int, deciles: int, rng: random.Random) -> list[Context]:
    """``n // deciles`` contexts from each of ``deciles`` equal rank slices of ``contexts`` (ranked strongest
    first; delphi's ``split_quantiles``), each marked with its ``decile``; all of a slice when it is smaller."""
    size = len(contexts) // deciles
    per = n // deciles
    out = []
    for i in range(deciles):
        part = list(contexts[i * size : (i + 1) * size])
        chosen = part if len(part) <= per else rng.sample(part, per)
        out += [replace(c, decile=i) for c in chosen]
    return out


def highlight(tokens: Sequence[str], marked: Callable[[int], bool]) -> str:
    """The tokens joined, each run of ``marked`` ones between ``<<`` and ``>>`` (delphi's ``_highlight``)."""
    out = []
    i = 0
    while i < len(tokens):
        if marked(i):
            out.append("<<")
            while i < len(tokens) and marked(i):
                out.append(tokens[i])
                i += 1
            out.append(">>")
        else:
            out.append(tokens[i])
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------- prompts


def explainer_messages(examples: Sequence[Any], max_act: float, logit_tokens: Sequence[str] = ()
                       ) -> list[dict[str, str]]:
    """delphi's explainer chat (``build_prompt(activations=True, cot=False)``) for ``examples`` (objects with
    ``tokens`` and ``values``, e.g. :class:`~gemscope_widgets.backend.stats.feature_stats.Example`), activations
    shown as ceil(10 · a / ``max_act``), and a line of ``logit_tokens`` when given."""
    lines = []
    scale = max(float(max_act), 1e-6)
    for i, ex in enumerate(examples, 1):
        values = [float(v) for v in ex.values]
        top = max(values, default=0.0) * HIGHLIGHT
        marked = {j for j, v in enumerate(values) if v > top}
        lines.append(f"Example {i}: " + highlight(ex.tokens, marked.__contains__))
        shown = [(tok, min(10, max(0, math.ceil(v * 10 / scale)))) for tok, v in zip(ex.tokens, values, strict=True)
                 if v > top][:11]
        lines.append("Activations: " + "".join(f'("{tok}" : {n}), ' for tok, n in shown))
    if logit_tokens:
        lines.append("Tokens the latent promotes as the next token: " + ", ".join(f'"{t}"' for t in logit_tokens))
    messages = [{"role": "system", "content": EXPLAINER_SYSTEM}]
    for question, answer in EXPLAINER_FEW_SHOT:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": "\n" + "\n".join(lines) + "\n"})
    return messages


def scorer_messages(method: Method, explanation: str, text: str) -> list[dict[str, str]]:
    """delphi's detection or fuzzing chat for one context ``text`` (shown as ``Example 0``)."""
    system, shots = (DETECTION_SYSTEM, DETECTION_FEW_SHOT) if method == "detection" else (FUZZING_SYSTEM,
                                                                                         FUZZING_FEW_SHOT)
    messages = [{"role": "system", "content": system}]
    for question, answer in shots:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": SCORER_QUESTION.format(explanation=explanation,
                                                                       examples=f"Example 0: {text}")})
    return messages


def scored_text(method: Method, context: Context, n_incorrect: int, rng: random.Random) -> str:
    """What the scorer sees of ``context``: plain text for detection; for fuzzing, the tokens at or above 0.3 × its
    peak marked (activating) or ``n_incorrect`` random tokens marked (non-activating; delphi's default)."""
    if method == "detection":
        return "".join(context.tokens)
    if context.activating:
        top = context.peak * HIGHLIGHT
        return highlight(context.tokens, lambda j: context.values[j] >= top)
    chosen = set(rng.sample(range(len(context.tokens)), min(n_incorrect, len(context.tokens))))
    return highlight(context.tokens, lambda j: j in chosen)


# ---------------------------------------------------------------------- model calls


def chat_ids(gm: GemmaModel, messages: Sequence[Mapping[str, str]], reply_start: str) -> list[int]:
    """``messages`` in ``gm``'s chat template with the model's turn opened and prefilled with ``reply_start``."""
    prompt = make_prompt(gm.tokenizer, messages, vocab_size=int(gm.text_config.vocab_size))
    start = gm.tokenizer(reply_start, add_special_tokens=False)["input_ids"]
    return [int(i) for i in prompt.input_ids.tolist()] + [int(i) for i in start]


class PrefixCache:
    """KV caches of token prefixes already run on one model (delphi's system prompt and few-shot examples are the
    same for every feature): :meth:`run` continues from the longest stored prefix of the ids it is given."""

    def __init__(self, gm: GemmaModel) -> None:
        self.gm = gm
        self._stored: list[tuple[tuple[int, ...], Any]] = []
        self.forwards = 0

    def run(self, ids: Sequence[int], *, keep: bool = False) -> tuple[Any, torch.Tensor | None]:
        """A fresh cache holding ``ids`` (all but nothing left to run) and the last hidden state ``[1, d]`` (None
        when every id came from a stored prefix); ``keep`` stores it for later calls."""
        ids = tuple(int(i) for i in ids)
        best: tuple[tuple[int, ...], Any] | None = None
        for stored in self._stored:
            n = len(stored[0])
            if n <= len(ids) and ids[:n] == stored[0] and (best is None or n > len(best[0])):
                best = stored
        cache = copy.deepcopy(best[1]) if best is not None else new_cache(self.gm)
        done = len(best[0]) if best is not None else 0
        hidden = None
        if done < len(ids):
            hidden = cached_forward(self.gm, torch.tensor([ids[done:]], device=self.gm.device), cache)[:, -1]
            self.forwards += 1
        if keep and done < len(ids):
            self._stored.append((ids, copy.deepcopy(cache)))
        return cache, hidden


@torch.inference_mode()
def greedy_reply(gm: GemmaModel, ids: Sequence[int], max_new_tokens: int, prefixes: PrefixCache | None = None,
                 shared: int = 0) -> tuple[str, int]:
    """``gm``'s greedy continuation of ``ids`` up to ``max_new_tokens`` tokens, a stop token or a newline: the
    text before it and the number of tokens generated. ``prefixes`` keeps the first ``shared`` ids' cache."""
    prefixes = prefixes or PrefixCache(gm)
    if shared:
        prefixes.run(ids[:shared], keep=True)
    cache, hidden = prefixes.run(ids)
    if hidden is None:  # every id was cached: run the last one again on a cache without it
        cache, hidden = prefixes.run(ids[:-1])
        hidden = cached_forward(gm, torch.tensor([ids[-1:]], device=gm.device), cache)[:, -1]
    stops = set(gm.stop_token_ids)
    new: list[int] = []
    for _ in range(int(max_new_tokens)):
        token = int(next_token_logits(gm, hidden).argmax(-1)[0])
        if token in stops or "\n" in token_strings(gm.tokenizer, [token])[0]:
            break
        new.append(token)
        hidden = cached_forward(gm, torch.tensor([[token]], device=gm.device), cache)[:, -1]
    return str(gm.tokenizer.decode(new, skip_special_tokens=True)), len(new)


def _shared_len(gm: GemmaModel, method: Method | None) -> int:
    """Tokens of the chat that every feature's prompt shares: the system prompt and few-shot turns, up to the start
    of the last user turn's content."""
    messages = explainer_messages([], 1.0) if method is None else scorer_messages(method, "", "")
    a = chat_ids(gm, [*messages[:-1], {"role": "user", "content": "a"}], "")
    b = chat_ids(gm, [*messages[:-1], {"role": "user", "content": "b"}], "")
    return next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), 0)


def _answer_ids(gm: GemmaModel) -> tuple[int, int]:
    ids = [gm.tokenizer(s, add_special_tokens=False)["input_ids"] for s in ("1", "0")]
    if any(len(i) != 1 for i in ids):
        raise ExplainError(f"{gm.name}'s tokenizer has no single token for '1' and '0': it cannot be a scorer.")
    return int(ids[0][0]), int(ids[1][0])


@torch.inference_mode()
def answer_probabilities(gm: GemmaModel, prompts: Sequence[Sequence[int]], batch_size: int,
                         prefixes: PrefixCache | None = None, shared: int = 0
                         ) -> tuple[list[tuple[float, float]], int]:
    """``(P("1"), P("0"))`` of the next token after each prompt (token ids), and the forwards run.

    The prompts' common prefix runs once into a KV cache (its first ``shared`` tokens kept in ``prefixes`` for
    later calls); then ``batch_size`` prompts at a time run their remaining tokens, right-padded, in one forward
    reading the logits at each one's last real token (causal attention: padding after a token never changes it).
    """
    one, zero = _answer_ids(gm)
    lcp = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        lcp = next((j for j in range(lcp) if p[j] != first[j]), lcp)
    pad = gm.tokenizer.pad_token_id if gm.tokenizer.pad_token_id is not None else 0
    prefixes = prefixes or PrefixCache(gm)
    before = prefixes.forwards
    out: list[tuple[float, float]] = []
    with model_lock(gm):
        if 0 < shared <= lcp:
            prefixes.run(first[:shared], keep=True)
        cache, _ = prefixes.run(first[:lcp])
        forwards = prefixes.forwards - before
        for start in range(0, len(prompts), batch_size):
            rows = [list(p[lcp:]) for p in prompts[start : start + batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=gm.device)
            batch_cache = copy.deepcopy(cache)
            if len(rows) > 1:
                batch_cache.batch_repeat_interleave(len(rows))
            hidden = cached_forward(gm, ids, batch_cache)
            last = hidden[torch.arange(len(rows), device=gm.device),
                          torch.tensor([len(r) - 1 for r in rows], device=gm.device)]
            probs = torch.softmax(next_token_logits(gm, last), dim=-1)
            out += [(float(p[one]), float(p[zero])) for p in probs.cpu()]
            forwards += 1
    return out, forwards


def score_contexts(scorer: GemmaModel, method: Method, explanation: str, contexts: Sequence[Context],
                   n_incorrect: int, rng: random.Random, batch_size: int, prefixes: PrefixCache | None = None
                   ) -> ScorerResult:
    """One method's :class:`ScorerResult` of ``explanation`` on ``contexts`` (module docstring; ``prefixes``
    keeps the method's system prompt and few-shot examples, the same for every feature)."""
    texts = [scored_text(method, c, n_incorrect, rng) for c in contexts]
    prompts = [chat_ids(scorer, scorer_messages(method, explanation, t), "[") for t in texts]
    probs, forwards = answer_probabilities(scorer, prompts, batch_size, prefixes, shared=_shared_len(scorer, method))
    scored = []
    for c, text, (p1, p0) in zip(contexts, texts, probs, strict=True):
        probability = p1 / (p1 + p0) if p1 + p0 > 0 else 0.0
        scored.append(ScoredContext(c.doc, c.activating, c.decile, c.peak, text, p1, p0, probability,
                                    probability > 0.5))
    truth = [s.activating for s in scored]
    auroc = float(roc_auc_score(truth, [s.probability for s in scored])) if len(set(truth)) == 2 else None
    ba = float(balanced_accuracy_score(truth, [s.prediction for s in scored]))
    return ScorerResult(method, scorer.name, ba, auroc, scored, forwards)


# ---------------------------------------------------------------------- the cache


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1), "utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):  # missing or damaged: computed again
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _result_from_json(d: Mapping[str, Any]) -> ScorerResult:
    return ScorerResult(d["method"], d["scorer"], float(d["balanced_accuracy"]), d["auroc"],
                        [ScoredContext(**c) for c in d["contexts"]], int(d.get("prefills", 0)))


# ---------------------------------------------------------------------- explain


_WARNED: weakref.WeakSet[Any] = weakref.WeakSet()


class BaseExplainerWarning(UserWarning):
    """A base (``-pt``) model explains or scores features: it was not trained to follow instructions."""


def _check_model(gm: Any, role: str) -> None:
    if not hasattr(gm, "tokenizer") or not hasattr(gm, "text_model"):
        raise ExplainError(f"The {role} must be a model from load_model(...), e.g. "
                           f"load_model('google/gemma-3-1b-it'); got {type(gm).__name__}.")
    if not gm.is_instruct and gm.model not in _WARNED:
        _WARNED.add(gm.model)
        warn_user(BaseExplainerWarning(
            f"{gm.name} is a base model, not instruction-tuned: as {role} it follows delphi's prompts poorly and its "
            "explanations and scores say little. Use an -it model, e.g. load_model('google/gemma-3-1b-it')."))


def _positive(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ExplainError(f"{name} must be an integer ≥ {minimum}, got {value!r}.")
    return value


def _source(source: Any, sae: str | None) -> FeatureLabels:
    if isinstance(source, FeatureLabels):
        return source
    if callable(getattr(source, "labels", None)) and callable(getattr(source, "sae", None)):
        labels = source.labels(sae)  # a Scope: its labels of that SAE, following its statistics
        if labels.stats is None:
            labels.set_stats(source.stats_holder(sae).find_cached())
        return cast(FeatureLabels, labels)
    raise ExplainError(f"explain() takes a Scope or FeatureLabels, not {type(source).__name__}.")


def explain(source: Any, features: Iterable[int] | int, explainer: GemmaModel, scorer: GemmaModel | None = None,
            *, sae: str | None = None, n_explain: int = 20, n_test: int = 20, n_non: int | None = None,
            deciles: int = 10, batch_size: int = 8, max_new_tokens: int = 64, logit_k: int = 10, seed: int = 0,
            cache: bool | str | os.PathLike[str] = True, progress: bool = True) -> Explanations:
    """Explain ``features`` with ``explainer`` and score each explanation by detection and fuzzing with ``scorer``
    (default: the explainer), following delphi (module docstring for the prompts, sampling and scores).

    ``source``: a :class:`~gemscope_widgets.Scope` (its SAE ``sae``, default the first, and the statistics on disk)
    or that SAE's :class:`~.labels.FeatureLabels`. ``features``: indices (a batch: one progress bar, each
    feature cached as it finishes). ``n_explain`` top examples shown; ``n_test`` activating contexts drawn over
    ``deciles`` rank slices and ``n_non`` (default ``n_test``) non-activating ones scored, ``batch_size`` contexts
    a forward; ``max_new_tokens`` caps the explanation; ``logit_k`` logit-lens tokens shown (0: none).
    ``cache``: True (``cache_dir("explanations")``), a folder, or False. Each explanation joins the labels
    (``labels.labels()``, the pane, search) as source ``"explainer (<model>)"`` with its scores.

    The held-out pass of the label scores is run first when it is not cached yet (about a minute on CPU for the
    demo SAE; :func:`~.label_scores.held_out_tokens`).

    Returns :class:`Explanations` (``{feature: Explanation}``, ``skipped``: features with too few held-out
    activating or non-activating documents, each with why). :class:`ExplainError` for no features, no statistics,
    a model that is not from ``load_model``, or bad settings; a base-model explainer or scorer warns once.
    Costs: module docstring (13 prefills a feature with the defaults; 7 and about 6 forwards' CPU time with the
    test settings on the 270M).
    """
    labels = _source(source, sae)
    wanted = [int(features)] if isinstance(features, int) else list(features)
    if not wanted:
        raise ExplainError("No features to explain: pass feature indices, e.g. scope.explain([12, 40], "
                           "explainer=load_model('google/gemma-3-1b-it')).")
    wanted = list(dict.fromkeys(labels.sae.check_feature(f) for f in wanted))
    scorer = explainer if scorer is None else scorer
    _check_model(explainer, "explainer")
    if scorer is not explainer:
        _check_model(scorer, "scorer")
    for name, value in (("n_explain", n_explain), ("n_test", n_test), ("batch_size", batch_size),
                        ("max_new_tokens", max_new_tokens), ("deciles", deciles)):
        _positive(name, value)
    n_non = n_test if n_non is None else _positive("n_non", n_non)
    _positive("logit_k", logit_k, 0)
    if n_test < deciles:
        raise ExplainError(f"n_test ({n_test}) must be at least deciles ({deciles}): one context per decile.")
    stats = labels.stats
    if stats is None:
        raise ExplainError("No statistics for this SAE: explanations start from its top-activating examples. Run "
                           "scope.stats() first.")
    held = labels.held_out(progress=progress)
    assert held is not None  # computed when missing
    gm, dictionary = labels.gm, labels.sae
    params = stats.meta.get("params") or {}
    before, after = int(params.get("window_before", 16)), int(params.get("window_after", 8))
    explainer_key = {"explainer": explainer.name, "dtype": str(explainer.dtype), "n_explain": n_explain,
                     "max_new_tokens": max_new_tokens, "logit_k": logit_k}
    scorer_key = {"scorer": scorer.name, "dtype": str(scorer.dtype), "n_test": n_test, "n_non": n_non,
                  "deciles": deciles, "seed": seed, "window": [before, after]}
    folder = None
    if cache is not False:
        key = {"format": FORMAT, "model": store.model_identity(gm), "sae": store.sae_identity(dictionary),
               "stats": [stats.sae_name, stats.source, stats.n_tokens, params], "held": held.texts,
               **explainer_key}
        root = cache_dir("explanations") if cache is True else Path(cache)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(dictionary.config.name))[-48:].strip("_") or "sae"
        folder = root / f"{slug}-{_digest(key)}"
        folder.mkdir(parents=True, exist_ok=True)
    score_name = _digest(scorer_key)
    max_act = stats.max_act
    explainer_prefixes = PrefixCache(explainer)
    prefixes = explainer_prefixes if scorer is explainer else PrefixCache(scorer)
    explained: dict[int, Explanation] = {}
    skipped: dict[int, str] = {}
    bar = progress_bar(total=len(wanted), desc="explain features", unit="feature", disable=not progress)
    try:
        for f in wanted:
            path = folder / f"{f}.json" if folder is not None else None
            stored = _read_json(path) if path is not None else None
            done = stored is not None and score_name in stored.get("scores", {})
            if stored is not None and done:
                explained[f] = _from_stored(f, stored, score_name, scorer.name)
                bar.update(1)
                continue
            started = time.perf_counter()
            rng = random.Random(seed + f)
            on, off = held_out_contexts(held, f, before=before, after=after, rng=rng)
            need_on = max(MIN_ACTIVATING, deciles)
            if len(on) < need_on or len(off) < MIN_NON_ACTIVATING:
                skipped[f] = (f"fires in {len(on)} held-out documents and not in {len(off)} (needs {need_on} and "
                              f"{MIN_NON_ACTIVATING}): too few to score")
                bar.update(1)
                continue
            examples = stats.examples(f, kind="top", count=n_explain)
            if not examples:
                skipped[f] = "no top-activating examples in the statistics to explain from"
                bar.update(1)
                continue
            if stored is None:
                logit_tokens = top_logit_tokens(gm, dictionary, [f], logit_k)[f] if logit_k else []
                peak = float(max_act[f]) if max_act is not None else max(e.value for e in examples)
                messages = explainer_messages(examples, peak, logit_tokens)
                ids = chat_ids(explainer, messages, EXPLANATION_MARK)
                with model_lock(explainer):
                    response, n_new = greedy_reply(explainer, ids, max_new_tokens, explainer_prefixes,
                                                   _shared_len(explainer, None))
                stored = {"format": FORMAT, "feature": f, "explainer": explainer.name,
                          "text": response.strip().split("\n", 1)[0].strip(), "response": response,
                          "prompt": str(explainer.tokenizer.decode(ids)), "new_tokens": n_new,
                          "shown_docs": [int(e.doc) for e in examples], "scores": {},
                          "explainer_seconds": time.perf_counter() - started}
            text = stored["text"] or "(no explanation)"
            tests = sample_deciles(on, n_test, deciles, rng)
            non = rng.sample(off, min(n_non, len(off)))
            n_incorrect = math.ceil(sum(sum(v != 0 for v in c.values) for c in tests) / len(tests))
            contexts = [c.with_tokens(gm.tokenizer) for c in tests + non]
            results = {m: score_contexts(scorer, m, text, contexts, n_incorrect, rng, batch_size, prefixes)
                       for m in METHODS}
            entry: dict[str, Any] = {m: asdict(r) for m, r in results.items()}
            stored["scores"][score_name] = {"scorer": scorer.name, **entry, "seconds": time.perf_counter() - started}
            if path is not None:
                _write_json(path, stored)
            explained[f] = _from_stored(f, stored, score_name, scorer.name, cached=False)
            bar.update(1)
    finally:
        bar.close()
    result = Explanations(explained, skipped)
    labels.add_explanations(result.values())
    return result


def _from_stored(f: int, stored: Mapping[str, Any], score_name: str, scorer: str, cached: bool = True
                 ) -> Explanation:
    scores = stored["scores"][score_name]
    detection, fuzzing = (_result_from_json(scores[m]) for m in METHODS)
    prefills = 1 + detection.prefills + fuzzing.prefills
    return Explanation(f, stored["text"], stored["explainer"], scorer, detection, fuzzing,
                       list(stored.get("shown_docs", [])), stored.get("prompt", ""), stored.get("response", ""),
                       int(stored.get("new_tokens", 0)), prefills, float(scores.get("seconds", 0.0)), "", cached)


__all__ = [
    "FORMAT", "HIGHLIGHT", "METHODS", "MIN_ACTIVATING", "MIN_NON_ACTIVATING", "BaseExplainerWarning", "Context",
    "Explanation", "Explanations", "ScoredContext", "ScorerResult", "answer_probabilities", "explain",
    "explainer_messages", "held_out_contexts", "highlight", "sample_deciles", "score_contexts", "scorer_messages",
]
