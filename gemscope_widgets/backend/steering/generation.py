"""Baseline and steered continuations generated together as one batch of two, streamed and cancellable.

Row 0 is the baseline, row 1 the steered continuation; the steering hooks act on row 1 only. Decoding is
memory-bound, so the pair costs about one generation. With sampling both rows use the same uniform draw
per step (inverse-CDF sampling over tokens sorted by probability), so differences come from steering alone.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from gemscope_widgets.backend.gemma.decoding import cached_forward, new_cache, next_token_logits
from gemscope_widgets.backend.gemma.hooks import hooked
from gemscope_widgets.backend.gemma.prompts import Prompt, special_ids, token_strings
from gemscope_widgets.backend.steering.plan import SteeringPlan, StepState, model_lock
from gemscope_widgets.backend.steering.spec import Spec, normalize_steering
from gemscope_widgets.backend.steering.units import to_raw
from gemscope_widgets.errors import SteeringError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

TokenCallback = Callable[[int, "int | None", "int | None"], Any]

@dataclass
class GenerationResult:
    """Baseline and steered continuations of one prompt (token ids exclude the stop token)."""

    prompt_tokens: list[str]
    baseline_ids: list[int]
    steered_ids: list[int]
    baseline_text: str
    steered_text: str
    baseline_tokens: list[str]
    steered_tokens: list[str]
    divergence: int | None
    stopped: Literal["eos", "length", "cancelled"]
    seconds: float = 0.0
    first_token_s: float | None = None
    steps: int = 0
    specs: list[Any] = field(default_factory=list, repr=False)
    next_token_probs: list[NextTokenStep] = field(default_factory=list, repr=False)
    """With ``generate(..., next_token_probs=k)``: each step's top-``k`` next tokens of each row, else empty."""

    @property
    def text(self) -> str:
        """The steered continuation's text."""
        return self.steered_text


@dataclass
class NextTokenStep:
    """One decoding step's top-``k`` next tokens of each row, from the distribution the token was chosen from
    (after the frequency penalty, before temperature and top-p): ``(token_id, token, probability)``, most likely
    first. Each row reads its own continuation so far; ``None`` for a row that had already stopped."""

    step: int
    baseline: list[tuple[int, str, float]] | None
    steered: list[tuple[int, str, float]] | None


@dataclass
class NextTokenDistribution:
    """Next-token probabilities after ``position``, baseline vs steered, for the union of both top-k."""

    position: int
    context_token: str
    token_ids: list[int]
    tokens: list[str]
    baseline: list[float]
    steered: list[float]


@dataclass
class _Inputs:
    ids: torch.Tensor  # [T] long
    special: torch.Tensor  # [T] bool: not steered unless special tokens are
    tokens: list[str]


def _raw_specs(gm: GemmaModel, steering: Any, sae: Any, unit: str) -> list[Spec]:
    """The steering, validated and in raw units (the prompt is checked after: a bad unit fails first)."""
    return to_raw(gm, normalize_steering(steering, sae, model=gm), unit)


def _as_inputs(gm: GemmaModel, prompt: Any) -> _Inputs:
    p: Prompt = gm.prompt(prompt)
    return _Inputs(p.input_ids, p.special | p.template, list(p.tokens))


def check_settings(max_new_tokens: Any, temperature: Any, top_p: Any, frequency_penalty: Any, seed: Any) -> None:
    """SteeringError unless the decoding settings are valid (as :func:`generate` takes them)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise SteeringError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    for name, value in (("temperature", temperature), ("top_p", top_p), ("frequency_penalty", frequency_penalty)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SteeringError(f"{name} must be a finite number, got {value!r}.")
    if temperature < 0:
        raise SteeringError(f"temperature must be ≥ 0 (0 is greedy), got {temperature}.")
    if not 0 < top_p <= 1:
        raise SteeringError(f"top_p must be in (0, 1], got {top_p}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SteeringError(f"seed must be an integer, got {seed!r}.")


def _choose(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token per row: argmax when greedy, else one shared uniform through each row's inverse CDF."""
    if temperature == 0 or generator is None:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cum = sorted_probs.cumsum(dim=-1)
    if top_p < 1:
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        sorted_probs = sorted_probs * ((cum - sorted_probs) < top_p)
        cum = sorted_probs.cumsum(dim=-1)
    u = torch.rand(1, generator=generator).item()
    target = u * cum[:, -1:]
    rank = (cum <= target).sum(dim=-1, keepdim=True).clamp(max=logits.shape[-1] - 1)
    return order.gather(-1, rank).squeeze(-1)


def rows_one_at_a_time(gm: GemmaModel) -> bool:
    """Whether decoding runs the decoder per row (CPU) rather than as one batch of two (GPU)."""
    return gm.device.type == "cpu"


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _decode_text(gm: GemmaModel, ids: list[int]) -> str:
    return str(gm.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))


def generate(
    gm: GemmaModel,
    prompt: Any,
    steering: Any = None,
    *,
    sae: Any = None,
    unit: str = "typical",
    max_new_tokens: int = 32,
    min_new_tokens: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    greedy: bool | None = None,
    frequency_penalty: float = 0.0,
    stop_at_eos: bool = True,
    steer_special_tokens: bool = False,
    error: str = "keep",
    on_token: TokenCallback | None = None,
    cancel: threading.Event | None = None,
    next_token_probs: int = 0,
) -> GenerationResult:
    """Generate the baseline and the steered continuation of ``prompt`` together (a batch of two).

    ``prompt``: text, chat messages or token ids (a 1-D tensor or a list of ints), or a :class:`Prompt`
    (:func:`~gemscope_widgets.backend.gemma.prompts.make_prompt`). ``steering``: ``{feature: strength}`` or a
    list of :class:`SteeringSpec` and :class:`DirectionSpec` (residual-stream directions to ablate or add; see
    :mod:`~gemscope_widgets.backend.steering.spec`), strengths in ``unit``: ``"typical"`` (multiples of each
    entry's stable unit, :mod:`~gemscope_widgets.backend.steering.units`) or ``"raw"`` (activation units); a
    spec's own ``unit`` wins. The result's ``specs`` are in raw units (``unit="raw"``). ``temperature=0`` (or
    ``greedy=True``) is greedy; otherwise sampling with ``top_p`` and ``seed``, the same draws for both rows.
    ``frequency_penalty`` subtracts ``penalty × count`` from each token's logit per row. Generation stops at
    ``max_new_tokens``, or when both rows produced a stop token (``<eos>``, ``<end_of_turn>`` for -it models),
    or when ``cancel`` is set (checked before every step). ``on_token(step, baseline_id, steered_id)`` streams
    each step (None for a row that has stopped). ``error``: ``"keep"`` the SAE reconstruction error or
    ``"replace"`` the activation by the SAE reconstruction at steered positions. ``next_token_probs=k`` (> 0)
    records every step's top-``k`` next tokens of both rows in the result's ``next_token_probs``
    (:class:`NextTokenStep`): what the steered model was about to say at each step, beside the baseline.
    """
    check_settings(max_new_tokens, temperature, top_p, frequency_penalty, seed)
    if isinstance(next_token_probs, bool) or not isinstance(next_token_probs, int) or next_token_probs < 0:
        raise SteeringError(f"next_token_probs must be a non-negative integer (a top-k), got {next_token_probs!r}.")
    recorded: list[tuple[int, torch.Tensor, torch.Tensor, list[bool]]] = []
    specs = _raw_specs(gm, steering, sae, unit)
    inputs = _as_inputs(gm, prompt)
    state = StepState(prompt_len=int(inputs.ids.shape[0]), rows=slice(1, 2))
    plan = SteeringPlan(gm, specs, state, error=error, steer_special_tokens=steer_special_tokens)
    if greedy:
        temperature = 0.0
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    stops = torch.tensor(gm.stop_token_ids if stop_at_eos else (), dtype=torch.long, device=gm.device)
    controls = torch.tensor(sorted(special_ids(gm.tokenizer)), dtype=torch.long, device=gm.device)
    pad = gm.tokenizer.pad_token_id if gm.tokenizer.pad_token_id is not None else 0
    started = time.perf_counter()
    out: list[list[int]] = [[], []]
    stopped: Literal["eos", "length", "cancelled"] = "length"
    first_token_s = None
    steps = 0
    lock = model_lock(gm)
    while not lock.acquire(timeout=0.02):
        if cancel is not None and cancel.is_set():
            return _result(gm, inputs, out, "cancelled", started, None, 0, specs)
    try:
        with torch.inference_mode(), hooked(*plan.pairs()):
            ids = inputs.ids.to(gm.device).unsqueeze(0).expand(2, -1)
            special = None if steer_special_tokens else inputs.special.to(gm.device).unsqueeze(0).expand(2, -1)
            # On CPU a GEMM over two rows costs more than two one-row GEMVs (MKL, 2 threads: 0.69 vs 2×0.11 ms
            # for 2048×640), so the decoder runs row by row there; the lm_head, which dominates decoding and is
            # memory-bound, still runs once for both rows. On GPU the batch of two costs about one row.
            per_row = rows_one_at_a_time(gm)
            caches = [new_cache(gm), new_cache(gm)] if per_row else [new_cache(gm)]
            counts = torch.zeros(2, int(gm.lm_head.weight.shape[0]), device=gm.device) if frequency_penalty else None
            done = torch.zeros(2, dtype=torch.bool, device=gm.device)
            start = 0
            for step in range(max_new_tokens):
                if cancel is not None and cancel.is_set():
                    stopped = "cancelled"
                    break
                if per_row:
                    last = []
                    for row in range(2):
                        state.enabled = row == 1
                        state.rows = slice(0, 1)
                        state.begin(start, None if special is None else special[row : row + 1])
                        last.append(cached_forward(gm, ids[row : row + 1], caches[row])[:, -1, :])
                    hidden = torch.cat(last)
                else:
                    state.begin(start, special)
                    hidden = cached_forward(gm, ids, caches[0])[:, -1, :]
                logits = next_token_logits(gm, hidden)
                start += ids.shape[1]
                if counts is not None:
                    logits = logits - frequency_penalty * counts
                if next_token_probs:
                    top = torch.softmax(logits, dim=-1).topk(min(next_token_probs, logits.shape[-1]))
                    recorded.append((step, top.indices.cpu(), top.values.cpu(), done.tolist()))
                chosen = _choose(logits, temperature, top_p, generator)
                if counts is not None:
                    counts[torch.arange(2, device=gm.device), chosen] += 1
                is_stop = torch.isin(chosen, stops) & (step + 1 > min_new_tokens)
                streamed: list[int | None] = []
                for row in range(2):
                    if done[row] or is_stop[row]:
                        streamed.append(None)
                    else:
                        token = int(chosen[row])
                        out[row].append(token)
                        streamed.append(token)
                done = done | is_stop
                steps = step + 1
                if first_token_s is None:
                    first_token_s = time.perf_counter() - started
                if on_token is not None:
                    on_token(step, streamed[0], streamed[1])
                if bool(done.all()):
                    stopped = "eos"
                    break
                ids = torch.where(done, torch.full_like(chosen, pad), chosen).unsqueeze(1)
                special = None if steer_special_tokens else torch.isin(ids, controls)
    finally:
        lock.release()
    result = _result(gm, inputs, out, stopped, started, first_token_s, steps, specs)
    result.next_token_probs = [_step_probs(gm, *entry) for entry in recorded]
    return result


def _step_probs(gm: GemmaModel, step: int, ids: torch.Tensor, probs: torch.Tensor, done: list[bool]) -> NextTokenStep:
    rows = [None if done[r] else list(zip(ids[r].tolist(), token_strings(gm.tokenizer, ids[r].tolist()),
                                           probs[r].tolist())) for r in range(2)]
    return NextTokenStep(step, rows[0], rows[1])


def _result(
    gm: GemmaModel,
    inputs: _Inputs,
    out: list[list[int]],
    stopped: Literal["eos", "length", "cancelled"],
    started: float,
    first_token_s: float | None,
    steps: int,
    specs: list[Any],
) -> GenerationResult:
    base, steered = out
    return GenerationResult(
        prompt_tokens=inputs.tokens,
        baseline_ids=base,
        steered_ids=steered,
        baseline_text=_decode_text(gm, base),
        steered_text=_decode_text(gm, steered),
        baseline_tokens=token_strings(gm.tokenizer, base) if base else [],
        steered_tokens=token_strings(gm.tokenizer, steered) if steered else [],
        divergence=_first_difference(base, steered),
        stopped=stopped,
        seconds=time.perf_counter() - started,
        first_token_s=first_token_s,
        steps=steps,
        specs=specs,
    )


def next_token_probs(
    gm: GemmaModel,
    prompt: Any,
    steering: Any = None,
    *,
    sae: Any = None,
    unit: str = "typical",
    continuation: Sequence[int] = (),
    position: int = -1,
    steer_special_tokens: bool = False,
    error: str = "keep",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Next-token probabilities ``[2, V]`` (baseline, steered) after ``position`` of prompt + ``continuation``.

    Returns ``(probs, ids, position)`` with ``ids`` the full token sequence and ``position`` made absolute.
    Both rows read the same tokens, so the difference is the steering's effect on that one prediction.
    ``prompt``, ``steering``, ``sae`` and ``unit`` as :func:`generate`.
    """
    specs = _raw_specs(gm, steering, sae, unit)
    inputs = _as_inputs(gm, prompt)
    extra = torch.as_tensor(list(continuation), dtype=torch.long)
    ids = torch.cat([inputs.ids, extra])
    n = int(ids.shape[0])
    if isinstance(position, bool) or not isinstance(position, int) or not -n <= position < n:
        raise SteeringError(f"position {position!r} is outside the {n} tokens (prompt + continuation).")
    position %= n
    controls = torch.tensor(sorted(special_ids(gm.tokenizer)), dtype=torch.long)
    special = torch.cat([inputs.special, torch.isin(extra, controls)])[: position + 1]
    state = StepState(prompt_len=int(inputs.ids.shape[0]), rows=slice(1, 2))
    plan = SteeringPlan(gm, specs, state, error=error, steer_special_tokens=steer_special_tokens)
    batch = ids[: position + 1].to(gm.device).unsqueeze(0).expand(2, -1)
    with model_lock(gm), torch.inference_mode(), hooked(*plan.pairs()):
        state.begin(0, None if steer_special_tokens else special.to(gm.device).unsqueeze(0).expand(2, -1))
        logits = gm.model(input_ids=batch, use_cache=False, logits_to_keep=1).logits[:, -1, :].float()
    return torch.softmax(logits, dim=-1).cpu(), ids, position


def next_token_distribution(
    gm: GemmaModel,
    prompt: Any,
    steering: Any = None,
    *,
    k: int = 10,
    **kwargs: Any,
) -> NextTokenDistribution:
    """Top-``k`` next-token probabilities, baseline vs steered (keywords as :func:`next_token_probs`)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SteeringError(f"k must be a positive integer, got {k!r}.")
    probs, ids, position = next_token_probs(gm, prompt, steering, **kwargs)
    k = min(k, probs.shape[-1])
    top = torch.cat([probs[0].topk(k).indices, probs[1].topk(k).indices]).unique()
    top = top[torch.argsort(probs[:, top].max(dim=0).values, descending=True)].tolist()
    return NextTokenDistribution(
        position=position,
        context_token=token_strings(gm.tokenizer, [int(ids[position])])[0],
        token_ids=top,
        tokens=token_strings(gm.tokenizer, top),
        baseline=[float(probs[0, t]) for t in top],
        steered=[float(probs[1, t]) for t in top],
    )
