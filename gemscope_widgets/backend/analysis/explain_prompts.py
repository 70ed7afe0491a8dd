"""delphi's prompts, copied verbatim, and how examples and contexts are written into them.

Sources: EleutherAI ``delphi`` (Paulo, Mallen, Juang, Belrose, "Automatically Interpreting Millions of Features in
LLMs", 2024): the explainer's system prompt and few-shot examples (``delphi/explainers/default/prompts.py``,
``build_prompt(activations=True, cot=False)``), the detection and fuzzing scorers' ones
(``delphi/scorers/classifier/prompts/{detection,fuzz}_prompt.py``), and ``_highlight``'s ``<< >>`` marks. Used by
:mod:`.explain` (the explainer's chat) and :mod:`.explain_scoring` (the scorer's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from gemscope_widgets.backend.gemma.prompts import make_prompt

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

Method = Literal["detection", "fuzzing"]
METHODS: tuple[Method, ...] = ("detection", "fuzzing")
HIGHLIGHT = 0.3
"""delphi's threshold: a token is marked when its activation is above this fraction of its context's maximum."""
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


# ---------------------------------------------------------------------- writing examples into them


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


def chat_ids(gm: GemmaModel, messages: Sequence[Mapping[str, str]], reply_start: str) -> list[int]:
    """``messages`` in ``gm``'s chat template with the model's turn opened and prefilled with ``reply_start``."""
    prompt = make_prompt(gm.tokenizer, messages, vocab_size=int(gm.text_config.vocab_size))
    start = gm.tokenizer(reply_start, add_special_tokens=False)["input_ids"]
    return [int(i) for i in prompt.input_ids.tolist()] + [int(i) for i in start]


def shared_prefix_length(gm: GemmaModel, method: Method | None) -> int:
    """Tokens of the chat that every feature's prompt shares (the explainer's for ``method`` None, else that
    scorer's): the system prompt and few-shot turns in ``gm``'s chat template, up to the start of the last user turn's
    content. What :class:`~gemscope_widgets.backend.gemma.decoding.PrefixCache` keeps across features."""
    messages = explainer_messages([], 1.0) if method is None else scorer_messages(method, "", "")
    a = chat_ids(gm, [*messages[:-1], {"role": "user", "content": "a"}], "")
    b = chat_ids(gm, [*messages[:-1], {"role": "user", "content": "b"}], "")
    return next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), 0)
