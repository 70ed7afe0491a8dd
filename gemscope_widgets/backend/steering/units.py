"""Strength units: how many of the SAE's activation units one step of a steering slider is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.steering.plan import model_lock

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel


def typical_scales(
    gm: GemmaModel, sae: Any, features: Sequence[int], prompt_ids: torch.Tensor | None = None, stats: Any = None
) -> dict[int, tuple[float, str]]:
    """Each feature's strength unit (its typical maximum activation) and where it came from.

    In order: the feature statistics' ``max_act`` (a corpus scan) when present and positive; else the
    feature's maximum over the prompt's non-BOS tokens; else ``"site norm"``: the median norm of the
    activation at the feature's write site over the prompt divided by ``|w_dec[f]|``, so that ``1×`` adds a
    vector as long as a typical activation there (a push big enough to matter, never a vanishing one).
    """
    features = [sae.check_feature(f) for f in features]
    out: dict[int, tuple[float, str]] = {}
    max_act = getattr(stats, "max_act", None) if stats is not None else None
    todo = []
    for f in features:
        if max_act is not None and f < len(max_act) and float(max_act[f]) > 0:
            out[f] = (float(max_act[f]), "stats")
        else:
            todo.append(f)
    if not todo:
        return out
    if prompt_ids is None:
        for f in todo:
            out[f] = (1.0, "raw")
        return out
    from gemscope_widgets.backend.gemma.capture import capture

    ids = prompt_ids.reshape(-1)
    write_points = {hp for f in todo for hp in sae.write_directions(f)}
    with model_lock(gm):
        acts = capture(gm, ids, [*sae.read_hook_points, *write_points])
    body = slice(1, None) if ids.shape[0] > 1 else slice(None)  # BOS activations are huge outliers
    xs = {h: acts[h][0, body] for h in sae.read_hook_points}
    for f in todo:
        peak = float(sae.feature_activation(f, xs).max())
        if peak > 0:
            out[f] = (peak, "prompt")
            continue
        norms = []
        for hp, direction in sae.write_directions(f).items():
            site_norm = acts[hp][0, body].float().norm(dim=-1).median()
            norms.append(float(site_norm) / max(float(direction.float().norm()), 1e-12))
        out[f] = (float(sum(norms) / len(norms)), "site norm")
    return out
