"""Explanations of SAE features written by a language model, scored by detection and fuzzing.

The protocol is EleutherAI ``delphi``'s (Paulo, Mallen, Juang, Belrose, "Automatically Interpreting Millions of
Features in LLMs", 2024), with its prompts copied verbatim (``delphi/explainers/default/prompts.py``,
``delphi/scorers/classifier/prompts/{detection,fuzz}_prompt.py``; :mod:`.explain_prompts`) and run on a local
Gemma 3 loaded with ``load_model`` (an instruction-tuned ``-it`` one: its chat template; the same or another model
scores):

**Explain.** The feature's ``n_explain`` top-activating examples from the corpus statistics (``stats.examples(f,
kind="top")``: one window per scanned document, ranked by the peak) are shown with the tokens above 0.3 × the
example's maximum between ``<<`` and ``>>`` and, after each, delphi's ``Activations: ("tok" : n)`` line (``n`` =
ceil(10 · a / the feature's maximum), at most 11 tokens). A last line gives the ``logit_k`` tokens the feature
promotes most as the next token (its logit lens; not in delphi's prompt). delphi's system prompt and three few-shot
examples come first. The model's reply is prefilled with ``[EXPLANATION]:`` (the form delphi parses) and continued
greedily up to ``max_new_tokens`` tokens or the first newline.

**Score** (:mod:`.explain_scoring`). Each explanation is scored by detection and fuzzing on held-out contexts that
the explainer never saw (``n_test`` activating ones drawn over ``deciles`` rank slices, ``n_non`` others), the
scorer's answer read from its next-token probabilities, never sampled; the score is the **balanced accuracy**, with
the AUROC of the probabilities beside it. A feature with fewer than ``MIN_ACTIVATING`` activating or
``MIN_NON_ACTIVATING`` other held-out documents is skipped and says why.

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

import json
import math
import os
import random
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from gemscope_widgets.backend.analysis.explain_prompts import (
    EXPLANATION_MARK,
    METHODS,
    chat_ids,
    explainer_messages,
    shared_prefix_length,
)
from gemscope_widgets.backend.analysis.explain_scoring import (
    MIN_ACTIVATING,
    MIN_NON_ACTIVATING,
    ScoredContext,
    ScorerResult,
    held_out_contexts,
    sample_deciles,
    score_contexts,
)
from gemscope_widgets.backend.analysis.labels import FeatureLabels, top_logit_tokens
from gemscope_widgets.backend.gemma.decoding import PrefixCache, cached_forward, next_token_logits
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.stats import store
from gemscope_widgets.backend.steering.plan import model_lock
from gemscope_widgets.cache import cache_dir, key_digest, name_slug
from gemscope_widgets.errors import ExplainError, warn_user

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

FORMAT = 1
"""The format of the cached explanation files (a file of another format is computed again)."""

# ---------------------------------------------------------------------- results


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


# ---------------------------------------------------------------------- the explainer's reply


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


# ---------------------------------------------------------------------- the cache


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
    (default: the explainer), following delphi (the module docstrings: this one, :mod:`.explain_prompts` for the
    prompts, :mod:`.explain_scoring` for the sampling and scores).

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
        folder = root / f"{name_slug(dictionary.config.name)}-{key_digest(key)}"
        folder.mkdir(parents=True, exist_ok=True)
    score_name = key_digest(scorer_key)
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
                                                   shared_prefix_length(explainer, None))
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


__all__ = ["FORMAT", "BaseExplainerWarning", "Explanation", "Explanations", "explain", "greedy_reply"]
