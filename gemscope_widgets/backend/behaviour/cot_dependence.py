"""Which features the answer of a chain of thought depends on, and where they sit: question, reasoning or cue.

At the answer position, gradient × activation on an SAE's features (``a_f · ∂ log p(answer) / ∂ a_f`` per token,
with the SAE's error kept as a constant so the forward pass is unchanged; the attribution of "Sparse Feature
Circuits", Marks et al., 2024), or, with a transcoder set, the direct edges of an attribution graph (Ameisen et
al., 2025) summed by the region of their source position. Used by
:func:`~gemscope_widgets.backend.behaviour.faithfulness.cot_faithfulness`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.graph import compute_node_influence
from gemscope_widgets.backend.circuits.transcoder_set import TranscoderSet, load_transcoders
from gemscope_widgets.backend.gemma.hooks import hooked
from gemscope_widgets.backend.gemma.sites import resolve_site
from gemscope_widgets.backend.grad_mode import gradients_on
from gemscope_widgets.errors import FaithfulnessError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel


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
        return np.asarray(self.question + self.chain_of_thought + self.cue)

    @property
    def cot_share(self) -> float:
        """Fraction of the absolute attribution carried by features on chain-of-thought tokens."""
        mags = {k: abs(v) for k, v in self.totals.items()}
        return mags["chain_of_thought"] / max(sum(mags.values()), 1e-12)


REGIONS = ("question", "chain_of_thought", "cue")


def token_regions(gm: GemmaModel, text: str, ids: list[int], regions: tuple[int, int]) -> np.ndarray:
    """``[len(ids)]`` region of each token: 0 question (and template, and ``<bos>``), 1 chain of thought, 2 cue,
    by the character where the token starts (``regions``: the end offsets of the question part and of the chain)."""
    enc = gm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [s for s, _ in enc["offset_mapping"]]
    offset = len(ids) - len(starts)  # the <bos> added in front
    region = np.zeros(len(ids), dtype=np.int64)
    for j, s in enumerate(starts):
        region[j + offset] = 0 if s < regions[0] else (1 if s < regions[1] else 2)
    return region


def feature_dependence(
    gm: GemmaModel,
    sae: Any,
    text: str,
    ids: list[int],
    answer: list[int],
    answer_text: str,
    regions: tuple[int, int],
    *,
    k: int = 20,
) -> FeatureDependence:
    """Gradient × activation of ``log p(answer | text)`` on ``sae``'s features at every token of ``text``
    (``ids``: its token ids, as the model reads it).

    ``regions``: character offsets ``(end of question part, end of chain of thought)`` in ``text``; tokens are
    assigned to the question, the chain of thought or the cue by where they start. The SAE is spliced in with its
    error kept constant (``x ← decode(a) + stopgrad(x − decode(a))``), so the forward values are unchanged.
    """
    if getattr(sae.config, "kind", None) != "sae":
        raise FaithfulnessError(
            f"{sae.config.name} is a {sae.config.kind}; feature dependence here needs a one-layer SAE (kind 'sae'). "
            "For transcoder sets use the circuits attribution."
        )
    region = token_regions(gm, text, ids, regions)
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
    with gradients_on(), hooked((site, splice)):
        logits = gm.model(input_ids=full, use_cache=False, logits_to_keep=len(answer) + 1).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        target = logp[torch.arange(len(answer)), torch.tensor(answer, device=logp.device)].sum()
        target.backward()
    acts = holder["acts"]
    grad = acts.grad if acts.grad is not None else torch.zeros_like(acts)
    attr = (acts * grad).detach().cpu().double()  # [T, W]
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
        totals={name: float(p.sum()) for name, p in zip(REGIONS, parts)},
    )


@dataclass
class CircuitDependence(FeatureDependence):
    """Which transcoder features at the answer position depend on question versus chain-of-thought tokens, read
    from an attribution graph (:func:`~gemscope_widgets.backend.circuits.attribution.attribute`).

    ``features [k, 3]``: ``(layer, pos, feature)`` of the feature nodes at the answer position (the cue's last
    token, where the answer is read), the ``k`` with the largest influence on the answer (circuit-tracer's
    indirect influence, :func:`~gemscope_widgets.backend.circuits.graph.compute_node_influence`, seeded on the
    answer's logit node, or on all logit nodes weighted by probability when the answer's first token is not one:
    ``answer_is_logit_node``). ``question``, ``chain_of_thought``, ``cue``: ``[k]`` each feature's input from the
    graph's nodes (features, errors, tokens) at positions of that region, its direct edges summed (the cue includes
    the answer position itself); ``bias [k]``: the rest of its input (biases, unselected features, the ``<bos>``
    position's nodes), so the four sum to its pre-activation. ``influence [k]``. ``totals``: each region's input
    summed over every feature node at the answer position. ``graph``: the graph itself (open it with
    ``CircuitExplorer``).
    """

    influence: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    answer_is_logit_node: bool = False
    graph: Any = None


def circuit_dependence(
    gm: GemmaModel,
    transcoders: Any,
    ids: list[int],
    region: np.ndarray,
    answer: list[int],
    answer_text: str,
    *,
    k: int = 20,
    max_feature_nodes: int | None = None,
    progress: bool = False,
) -> CircuitDependence:
    """The attribution graph of ``ids`` (the full context, ending with the cue) split by where its sources sit.

    ``transcoders``: a ``TranscoderSet`` or anything ``load_transcoders`` takes. ``region [len(ids)]``: 0 question,
    1 chain of thought, 2 cue (:func:`token_regions`). Source of the method: attribution graphs over a transcoder
    replacement model ("Circuit Tracing", Ameisen et al., 2025); each edge is a direct effect, so a feature's edges
    from one region's positions sum to that region's share of its pre-activation. Cost: one ``attribute`` call.
    """
    tset = transcoders if isinstance(transcoders, TranscoderSet) else load_transcoders(transcoders)
    graph = attribute(gm, tset, torch.tensor(ids, dtype=torch.long), max_feature_nodes=max_feature_nodes,
                      progress=progress)
    n_sel, n_pos = graph.n_selected, graph.n_pos
    pos_of = torch.empty(graph.n_nodes, dtype=torch.long)  # the position of every source node
    pos_of[:n_sel] = graph.selected_active_features[:, 1]
    pos_of[graph.error_slice] = torch.arange(n_pos).repeat(graph.n_layers)
    pos_of[graph.token_slice] = torch.arange(n_pos)
    pos_of[graph.logit_slice] = n_pos - 1
    node_region = torch.from_numpy(region)[pos_of]
    node_region[graph.logit_slice] = -1  # logits are targets only
    node_region[pos_of == 0] = -1  # <bos>: a constant of every prompt (an attention sink), counted with the biases
    hits = (graph.logit_tokens == answer[0]).nonzero().flatten()
    weights = torch.zeros(graph.n_nodes)
    if len(hits):
        weights[graph.logit_slice.start + int(hits[0])] = 1.0
    else:
        weights = graph.logit_weights
    influence = compute_node_influence(graph.adjacency_matrix, weights)
    at_answer = (graph.selected_active_features[:, 1] == n_pos - 1).nonzero().flatten()
    adjacency = graph.adjacency_matrix.double()
    parts = [adjacency[at_answer][:, node_region == r].sum(1) for r in range(3)]
    order = torch.argsort(influence[at_answer], descending=True, stable=True)[: max(int(k), 0)]
    rows = at_answer[order]
    assert graph.node_inputs is not None  # attribute() always sets it
    bias = graph.node_inputs[rows].double() - sum(p[order] for p in parts)
    return CircuitDependence(
        sae_name=repr(tset),
        answer=answer_text,
        features=graph.selected_active_features[rows].numpy(),
        question=parts[0][order].float().numpy(),
        chain_of_thought=parts[1][order].float().numpy(),
        cue=parts[2][order].float().numpy(),
        totals={n: float(p.sum()) for n, p in zip(REGIONS, parts)},
        influence=influence[rows].float().numpy(),
        bias=bias.float().numpy(),
        answer_is_logit_node=bool(len(hits)),
        graph=graph,
    )


__all__ = ["REGIONS", "CircuitDependence", "FeatureDependence", "circuit_dependence", "feature_dependence",
           "token_regions"]
