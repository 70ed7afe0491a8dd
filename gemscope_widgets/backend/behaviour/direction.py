"""Behaviour directions in the residual stream by difference of means (Arditi et al., 2024).

"Refusal in Language Models Is Mediated by a Single Direction" (Arditi, Obeso, Syed, Paleka, Panickssery,
Gurnee, Nanda, 2024): the mean residual activation over prompts that elicit a behaviour minus the mean over
prompts that do not, at one layer and position, is a direction whose removal (directional ablation) or addition
(activation addition) switches the behaviour off or on. Here the residual stream at layer ``l`` is the output of
decoder layer ``l`` (Gemma Scope 2's ``resid_post`` site, ``model.layers.{l}.output``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gemscope_widgets.backend.analysis.features import sae_inputs
from gemscope_widgets.backend.behaviour.conversation import warn_if_base
from gemscope_widgets.backend.behaviour.prompt_sets import HARMFUL_REQUESTS, HARMLESS_REQUESTS, read_prompts
from gemscope_widgets.backend.behaviour.read_position import behaviour_prompt, check_position, read_positions
from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.gemma.prompts import Prompt
from gemscope_widgets.backend.gemma.sites import hook_point
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.errors import DirectionError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

MIN_PROMPTS = 4
"""Fewest prompts per set: with ``layer=None`` a quarter (at least 2) of each set is held out to choose the layer,
and the rest (at least 2) gives the direction; with fewer, a mean difference is mostly noise."""
CANDIDATE_FRACTION = 0.8
"""By default the layer is chosen among the first 80% of layers, as Arditi et al. do (directions from the last
layers separate prompts but no longer steer the behaviour)."""


def resid_hook_point(layer: int) -> str:
    """The residual stream after decoder layer ``layer`` (Gemma Scope 2's ``resid_post``)."""
    return hook_point("resid_post", layer)


@dataclass
class BehaviourDirection:
    """A difference-of-means direction.

    ``direction``: unit vector ``[d_model]`` float32 (CPU); ``mean_difference``: the raw mean difference at
    ``layer`` (its norm is a natural scale for adding the direction); ``scores``: ``[n_layers]`` held-out
    separation per layer (Cohen's d of the projections of held-out prompts; NaN for layers not considered);
    ``layer``: the chosen (or given) layer; ``position``: how each prompt's activation was taken.
    """

    direction: torch.Tensor
    layer: int
    scores: np.ndarray
    mean_difference: torch.Tensor
    position: str | int
    chat: bool
    model_name: str
    n_positive: int
    n_negative: int
    label: str = "behaviour"
    held_out: int = 0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """The label steering views show (``"refusal"``)."""
        return self.label

    @property
    def norm(self) -> float:
        """Norm of the mean difference (residual-stream units)."""
        return float(self.mean_difference.norm())

    def __repr__(self) -> str:
        return (
            f"BehaviourDirection({self.label!r}, layer={self.layer}, d_model={self.direction.shape[0]}, "
            f"norm={self.norm:.3g}, n={self.n_positive}+{self.n_negative}, position={self.position!r})"
        )


def as_unit_direction(direction: Any, d_model: int) -> torch.Tensor:
    """A :class:`BehaviourDirection` or a vector ``[d_model]`` as a float32 unit vector on CPU."""
    vec = direction.direction if isinstance(direction, BehaviourDirection) else direction
    if isinstance(vec, np.ndarray):
        vec = torch.from_numpy(vec)
    if not isinstance(vec, torch.Tensor):
        raise DirectionError(f"Expected a BehaviourDirection or a [d_model] vector, got {type(vec).__name__}.")
    vec = vec.detach().to("cpu", torch.float32).reshape(-1)
    if vec.shape[0] != d_model:
        raise DirectionError(f"The direction has {vec.shape[0]} dimensions but the model's d_model is {d_model}.")
    norm = float(vec.norm())
    if not math.isfinite(norm) or norm == 0:
        raise DirectionError("The direction is zero or not finite; it cannot be normalised.")
    return vec / norm


def prompt_residuals(
    gm: GemmaModel, prompts: Sequence[Any], layers: Sequence[int], position: str | int, chat: bool,
    progress: bool = False, desc: str = "prompts",
) -> torch.Tensor:
    """Residual activations ``[N, len(layers), d_model]`` float32, each prompt's mean over its ``position`` tokens.

    One forward pass per prompt, stopped after the deepest layer needed.
    """

    points = [resid_hook_point(layer) for layer in layers]
    out = torch.empty(len(prompts), len(layers), gm.d_model, dtype=torch.float32)
    for i, prompt in enumerate(progress_bar(prompts, desc=desc, disable=not progress, leave=False)):
        tokenized = behaviour_prompt(gm, prompt, chat)
        where = read_positions(gm, tokenized, position).to(gm.device)
        acts = capture(gm, tokenized.input_ids, points)
        for j, point in enumerate(points):
            out[i, j] = acts[point][0, where].float().mean(dim=0).cpu()
    return out


def _check_sets(positive: Any, negative: Any) -> tuple[list[Any], list[Any]]:
    pos, neg = read_prompts(positive), read_prompts(negative)
    if len(pos) != len(neg):
        raise DirectionError(
            f"The prompt sets have {len(pos)} positive and {len(neg)} negative prompts: use sets of equal size "
            "(pairs of matched prompts), trimming the longer one."
        )
    if len(pos) < MIN_PROMPTS:
        raise DirectionError(
            f"{len(pos)} prompts per set is too few for a direction: use at least {MIN_PROMPTS} per set "
            "(32 or more gives a stable direction)."
        )
    return pos, neg


def _check_layer(gm: GemmaModel, layer: Any, what: str = "layer") -> int:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise DirectionError(f"{what}={layer!r} must be an integer layer index (0..{gm.n_layers - 1}).")
    if not 0 <= int(layer) < gm.n_layers:
        raise DirectionError(f"{what}={layer} is out of range: {gm.name} has layers 0..{gm.n_layers - 1}.")
    return int(layer)


def separation(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Cohen's d of two samples of projections: ``(mean_pos - mean_neg) / pooled std``."""
    pooled = math.sqrt((float(pos.var(unbiased=True)) + float(neg.var(unbiased=True))) / 2)
    diff = float(pos.mean() - neg.mean())
    return diff / max(pooled, 1e-6 * (abs(diff) + 1e-12))


def behaviour_direction(
    gm: GemmaModel,
    positive: Any,
    negative: Any,
    *,
    layer: int | None = None,
    position: str | int = "last_prompt_token",
    chat: bool | None = None,
    layers: Sequence[int] | None = None,
    label: str = "behaviour",
    progress: bool = True,
) -> BehaviourDirection:
    """Difference-of-means direction between ``positive`` and ``negative`` prompts (Arditi et al., 2024).

    ``positive``/``negative``: lists of prompts (strings or chat message lists), a text file (one per line) or a
    ``datasets`` dataset (column ``"text"``), of equal size, at least :data:`MIN_PROMPTS` each.
    ``position``: ``"last_prompt_token"`` (for chat prompts the last template token, ``model\\n``),
    ``"post_instruction"`` (mean over the template tokens after the last user turn, as in the paper), ``"mean"``
    (mean over all tokens but ``<bos>``) or a token index. ``chat``: wrap plain strings as one user turn (default:
    when the model is ``-it``). ``layer``: the residual-stream layer; when None, the last quarter (≥ 2) of each set
    is held out, a direction from the rest is computed at every candidate layer (``layers``, by default the first
    80%), and the layer whose held-out projections separate best (Cohen's d) is chosen. The returned direction is
    then computed from all prompts at that layer.

    Returns a :class:`BehaviourDirection`; raises :class:`DirectionError` for unequal or tiny sets, a layer out of
    range or an unknown position. Cost: one forward pass per prompt, stopped after the deepest layer needed.
    """
    pos, neg = _check_sets(positive, negative)
    if chat is None:
        chat = bool(gm.is_instruct)
    if chat:
        warn_if_base(gm)
    if layer is not None:
        layer = _check_layer(gm, layer)
        candidates = [layer]
    elif layers is not None:
        candidates = sorted({_check_layer(gm, c, "layers") for c in layers})
        if not candidates:
            raise DirectionError("layers=[] leaves no layer to choose from.")
    else:
        candidates = list(range(max(1, int(gm.n_layers * CANDIDATE_FRACTION))))
    check_position(position)
    acts_pos = prompt_residuals(gm, pos, candidates, position, chat, progress, f"{label} (+)")
    acts_neg = prompt_residuals(gm, neg, candidates, position, chat, progress, f"{label} (-)")
    n = len(pos)
    scores = np.full(gm.n_layers, np.nan, dtype=np.float64)
    held = 0
    if layer is None:
        held = max(2, n // 4)
        train = slice(0, n - held)
        test = slice(n - held, n)
        diff = acts_pos[train].mean(0) - acts_neg[train].mean(0)  # [L, d]
        unit = diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        for j, c in enumerate(candidates):
            p = acts_pos[test, j] @ unit[j]
            q = acts_neg[test, j] @ unit[j]
            scores[c] = separation(p, q)
        chosen = candidates[int(np.nanargmax(scores[candidates]))]
    else:
        chosen = layer
    j = candidates.index(chosen)
    mean_difference = acts_pos[:, j].mean(0) - acts_neg[:, j].mean(0)
    norm = float(mean_difference.norm())
    if not math.isfinite(norm) or norm == 0:
        raise DirectionError("The two sets give identical mean activations: the prompts do not differ at this layer.")
    unit_dir = mean_difference / norm
    if layer is not None:
        scores[chosen] = separation(acts_pos[:, j] @ unit_dir, acts_neg[:, j] @ unit_dir)  # in-sample
    return BehaviourDirection(
        direction=unit_dir.contiguous(),
        layer=chosen,
        scores=scores,
        mean_difference=mean_difference.contiguous(),
        position=position,
        chat=chat,
        model_name=gm.name,
        n_positive=n,
        n_negative=n,
        label=label,
        held_out=held,
    )


def refusal_direction(
    gm: GemmaModel,
    harmful: Any = None,
    harmless: Any = None,
    **kwargs: Any,
) -> BehaviourDirection:
    """The refusal direction: :func:`behaviour_direction` of harmful-sounding minus harmless requests.

    Defaults to the built-in sets (:data:`~gemscope_widgets.backend.behaviour.prompt_sets.HARMFUL_REQUESTS` and
    ``HARMLESS_REQUESTS``, 32 each) wrapped as user turns (``chat=True``); other keywords as
    :func:`behaviour_direction`.
    """
    kwargs.setdefault("chat", True)
    kwargs.setdefault("label", "refusal")
    return behaviour_direction(
        gm,
        list(HARMFUL_REQUESTS) if harmful is None else harmful,
        list(HARMLESS_REQUESTS) if harmless is None else harmless,
        **kwargs,
    )


@dataclass
class ProjectionTrack:
    """Projection of the residual stream onto a unit direction, per layer and token.

    ``values``: ``[len(layers), T]`` float32, ``x · r̂`` (residual-stream units); ``cosine``: the same divided
    by ``‖x‖``; ``tokens``: the prompt's token strings; ``layers``: which layers the rows are.
    """

    tokens: list[str]
    layers: list[int]
    values: np.ndarray
    cosine: np.ndarray
    prompt: Prompt

    def at(self, layer: int) -> np.ndarray:
        """The row ``[T]`` for ``layer``."""
        if layer not in self.layers:
            raise DirectionError(f"Layer {layer} is not in this track (layers {self.layers}).")
        return np.asarray(self.values[self.layers.index(layer)])


def projection_track(
    gm: GemmaModel, prompt: Any, direction: Any, *, layers: Sequence[int] | None = None, chat: bool = False
) -> ProjectionTrack:
    """Project every token's residual stream at every layer (or ``layers``) onto ``direction``.

    ``prompt``: text, chat messages or a :class:`Prompt` (``chat=True`` wraps a string as a user turn).
    One forward pass through the decoder. Source: the per-token projections plotted by Arditi et al. (2024).
    """
    unit = as_unit_direction(direction, gm.d_model)
    chosen = list(range(gm.n_layers)) if layers is None else [_check_layer(gm, c, "layers") for c in layers]
    tokenized = behaviour_prompt(gm, prompt, chat)
    acts = capture(gm, tokenized.input_ids, [resid_hook_point(c) for c in chosen])
    stacked = torch.stack([acts[resid_hook_point(c)][0].float().cpu() for c in chosen])  # [L, T, d]
    values = stacked @ unit
    cosine = values / stacked.norm(dim=-1).clamp_min(1e-12)
    return ProjectionTrack(tokenized.tokens, chosen, values.numpy(), cosine.numpy(), tokenized)


def projection_at_layer(
    gm: GemmaModel, prompt: Any, direction: Any, *, layer: int | None = None
) -> tuple[np.ndarray, str]:
    """The track a view draws under a prompt's tokens: each token's residual stream after ``layer`` projected on
    ``direction`` (``float32 [T]``, in residual-stream units), and a label ``"<name> · layer L"``.

    ``layer`` defaults to the direction's own (:class:`BehaviourDirection`), or the middle layer for a bare vector.
    Errors: :class:`~gemscope_widgets.errors.DirectionError` for a vector of the wrong size or a layer out of range.
    """
    chosen = layer if layer is not None else getattr(direction, "layer", gm.n_layers // 2)
    track = projection_track(gm, prompt, direction, layers=[int(chosen)])
    name = getattr(direction, "name", None) or "direction"
    return track.values[0].astype(np.float32), f"{name} · layer {track.layers[0]}"


@dataclass
class Decomposition:
    """A direction explained by SAE features.

    ``aligned``: features ``[k]`` whose decoder rows have the largest cosine with the direction, with ``cosine``.
    ``explaining``: features ranked by their contribution to the projection on the given prompts:
    ``contribution[f] = mean over tokens of a_f · (w_dec[f] · r̂)``; ``share`` is that over the mean projection of
    the SAE's reconstruction (how much of the explained projection each feature carries) and ``correlation`` the
    Pearson correlation over tokens between ``a_f`` and the projection of the residual itself.
    """

    sae_name: str
    features: np.ndarray
    cosine: np.ndarray
    explaining: np.ndarray | None = None
    contribution: np.ndarray | None = None
    share: np.ndarray | None = None
    correlation: np.ndarray | None = None
    n_tokens: int = 0


def decompose(
    direction: Any,
    sae: Any,
    *,
    gm: GemmaModel | None = None,
    prompts: Sequence[Any] | None = None,
    k: int = 20,
    chat: bool = False,
) -> Decomposition:
    """Decompose a direction into SAE features: decoder-row alignment, and (with ``gm`` and ``prompts``)
    the features whose activations explain the direction's projection on those prompts.

    ``sae``: a one-layer SAE writing the residual stream (``resid_post``; other sites give the alignment only as
    a rough guide). Tokens masked by default (``<bos>``) are left out. Source: the decoder-cosine and
    activation-attribution readings used for steering vectors with SAEs (e.g. Kissane et al., 2024, "SAEs
    (usually) transfer between base and chat models"; Templeton et al., 2024).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DirectionError(f"k must be a positive integer, got {k!r}.")
    w_dec = sae.w_dec.detach().float().cpu() if hasattr(sae, "w_dec") else None
    if w_dec is None or w_dec.dim() != 2:
        raise DirectionError(f"{sae.config.name} is not a one-layer SAE; decompose needs a [width, d_model] decoder.")
    unit = as_unit_direction(direction, w_dec.shape[1])
    along = w_dec @ unit  # [W]
    cos = along / w_dec.norm(dim=-1).clamp_min(1e-12)
    k = min(k, w_dec.shape[0])
    top = torch.argsort(cos.abs(), descending=True, stable=True)[:k]
    result = Decomposition(sae.config.name, top.numpy(), cos[top].numpy())
    if prompts is None:
        return result
    if gm is None:
        raise DirectionError("decompose(..., prompts=...) needs the model: pass gm=model.")

    contrib = torch.zeros(w_dec.shape[0], dtype=torch.float64)
    acts_all, proj_all = [], []
    layer = sae.config.layer
    point = resid_hook_point(layer)
    for prompt in read_prompts(prompts):
        tokenized = behaviour_prompt(gm, prompt, chat)
        captured = capture(gm, tokenized.input_ids, [*sae.config.hook_points_in, point])
        keep = ~tokenized.masked
        x = sae_inputs(sae, {name: v[0] for name, v in captured.items()})[keep.to(gm.device)]
        acts = sae.encode(x).cpu()  # [t, W]
        resid = captured[point][0][keep.to(gm.device)].float().cpu()
        acts_all.append(acts)
        proj_all.append(resid @ unit)
    acts = torch.cat(acts_all)
    proj = torch.cat(proj_all)
    contrib = (acts * along).mean(0)  # [W]
    total = float((acts @ along).mean()) + float(sae.b_dec.float().cpu() @ unit)
    order = torch.argsort(contrib.abs(), descending=True, stable=True)[:k]
    a = acts[:, order]
    ac = a - a.mean(0)
    pc = proj - proj.mean()
    corr = (ac * pc[:, None]).sum(0) / (ac.norm(dim=0) * pc.norm()).clamp_min(1e-12)
    result.explaining = order.numpy()
    result.contribution = contrib[order].numpy()
    result.share = (contrib[order] / (total if abs(total) > 1e-12 else 1.0)).numpy()
    result.correlation = corr.numpy()
    result.n_tokens = int(acts.shape[0])
    return result
