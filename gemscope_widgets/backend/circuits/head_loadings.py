"""Head loadings: which attention heads carry an attribution graph's cross-position edges, split exactly.

Source: the head loadings of "Tracing Attention Computation Through Feature Interactions" (Kamath et al., 2025,
transformer-circuits.pub/2025/attention-qk), in the local replacement model of circuit-tracer and "Circuit Tracing"
(Ameisen et al., 2025) that :func:`~.attribution.attribute` computes its edges in (:mod:`.replacement`: attention
patterns and every RMSNorm scale frozen at the prompt's values, each MLP replaced by transcoder features, an error
node, the affine skip and constants).

**The rule: each path goes to the head of its last position-crossing hop.** An edge's weight is a sum over the
linear paths of that model from the source's write site to the target's read site. Only attention's off-diagonal
pattern entries ``A[l, h, t, s]`` (``t ≠ s``) move a path between positions; the residual stream, the skip path and
the diagonal entries ``A[l, h, t, t]`` keep it where it is. So every path from a source at position ``j`` to a
target at position ``i ≠ j`` has a last hop that enters ``i`` from another position: at layer ``l``, through query
head ``h`` (under grouped-query attention a query head reads its KV group's values; Gemma 3 270M has 4 query
heads and 1 KV head), from some key position ``s ≠ i``. The path is credited to ``(l, h)``. The shares of all
``(l, h)`` then add up to the edge weight exactly (to float rounding); the part of the edge not via any head is
zero for ``i ≠ j`` (a same-position edge has no head split and is refused). In formulas::

    share[l, h] = Σ_{s ≠ i} A[l, h, i, s] · ⟨ q[l, h], W_V,kv(h) (s_in[l, s] ⊙ F[l, s]) ⟩
    q[l, h]     = W_O,h^T (s_pa[l, i] ⊙ g_i[l])

where ``g_i[l]`` is the target's input direction carried back to the output of layer ``l``'s attention at position
``i`` along same-position steps only (residual, skip, diagonal attention), and ``F[l, s]`` is the source's output
carried forward by the whole frozen model to layer ``l``'s input at position ``s``. Equivalently (what the tests
check with the attribution's own pull-back): ``share[l, h]`` is how much the edge drops when row ``i`` of head
``h``'s frozen pattern at layer ``l`` keeps only its diagonal, in the model whose layers above ``l`` already keep
only the diagonal of row ``i`` in every head.

**Cost.** One batched pass of the frozen model forward per kept source node and one same-position pass per kept
target (``attribute`` makes one backward pass per feature row); ``benchmarks/head_loadings.py`` measures the
ratio. Units: shares are in the target's input units (a feature's pre-activation, a logit's demeaned logit), like
the edge weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from gemscope_widgets.backend.circuits.active_nodes import ActiveNodes, input_directions
from gemscope_widgets.backend.circuits.attached_state import AttachedState, attached_state, existing_state
from gemscope_widgets.backend.circuits.influence import compute_edge_influence
from gemscope_widgets.backend.circuits.replacement import FrozenForward
from gemscope_widgets.backend.circuits.targets import centred_rows, vocab_size
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.errors import GraphError

if TYPE_CHECKING:
    from gemscope_widgets.backend.circuits.graph import AttributionGraph

RULE = "last position-crossing hop"
SOURCE_BATCH = 64  # sources carried forward together: memory ~ SOURCE_BATCH × n_pos × (d_model + heads × head_dim)
# The split runs in float64 on the captured float32 state: a small edge whose heads' shares cancel (Σ|share| a
# thousand times the edge on the real 270M) still sums to the graph's float32 edge to 1e-4.
EXACT = torch.float64
RECOMPUTE_TOLERANCE = 1e-2  # largest |Σ shares − edge| / |edge| before the attached model is called a different one


@dataclass(frozen=True)
class HeadShare:
    """One head's share of one edge: ``layer``, query ``head`` (0..n_heads-1), ``share`` (target-input units)."""

    layer: int
    head: int
    share: float


@dataclass
class EdgeHeads:
    """An edge's split over attention heads (see the module docstring for the rule).

    ``source`` / ``target``: node indices (``source_id`` / ``target_id``: Neuronpedia node ids);
    ``weight``: the graph's edge weight ``adjacency_matrix[target, source]``;
    ``shares``: ``[n_layers, n_heads]`` float32, each head's share (target-input units; they sum to ``weight``);
    ``not_via_head``: the part of the edge that runs through no head: 0.0, since source and target positions differ;
    ``rule``: the rule's name (:data:`RULE`).
    """

    source: int
    target: int
    source_id: str
    target_id: str
    weight: float
    shares: Tensor
    not_via_head: float = 0.0
    rule: str = RULE

    @property
    def heads(self) -> list[HeadShare]:
        """Every head with a nonzero share, largest ``|share|`` first."""
        flat = self.shares.flatten()
        order = torch.argsort(flat.abs(), descending=True, stable=True)
        n_heads = int(self.shares.shape[1])
        return [HeadShare(int(k) // n_heads, int(k) % n_heads, float(flat[k])) for k in order.tolist() if flat[k] != 0]

    def top(self, k: int = 5) -> list[HeadShare]:
        """The ``k`` heads with the largest ``|share|``."""
        return self.heads[: max(0, int(k))]

    @property
    def residual(self) -> float:
        """``weight − Σ shares − not_via_head``: float rounding only (the split is exact)."""
        return float(self.weight - float(self.shares.double().sum()) - self.not_via_head)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ids, weight, rule and ``heads`` as ``[layer, head, share]`` rows, largest first."""
        return {
            "source": self.source_id,
            "target": self.target_id,
            "weight": self.weight,
            "not_via_head": self.not_via_head,
            "rule": self.rule,
            "heads": [[h.layer, h.head, h.share] for h in self.heads],
        }

    def __repr__(self) -> str:
        lines = [f"EdgeHeads({self.source_id} -> {self.target_id}, weight {self.weight:+.4g}, rule: {self.rule})"]
        lines += [f"  L{h.layer:<3} H{h.head:<3} {h.share:+.4g}" for h in self.top(8)]
        return "\n".join(lines)


@dataclass(frozen=True)
class HeadSummary:
    """One head over a whole graph's kept cross-position edges.

    ``influence``: the share of those edges' influence it carries (each edge's influence, as pruning scores it, split
    over heads in proportion to ``|share|``; the heads' values sum to 1); ``abs_share``: ``Σ |share|`` over the edges
    (target-input units); ``n_top``: edges on which it holds the largest ``|share|``.
    """

    layer: int
    head: int
    influence: float
    abs_share: float
    n_top: int


@dataclass
class HeadLoadings:
    """Head loadings of every kept cross-position edge of a graph (pruned with ``node_threshold`` /
    ``edge_threshold`` as :meth:`AttributionGraph.prune`).

    ``edges``: ``[E, 2]`` long (target, source) node indices; ``weights``: ``[E]`` their edge weights;
    ``shares``: ``[E, n_layers, n_heads]`` float32 (each edge's shares sum to its weight); ``influence``: ``[E]``
    each edge's influence in the pruned graph (circuit-tracer ``compute_edge_influence``); ``skipped``: target
    nodes whose input direction is unknown (a direction target of a graph loaded from a file), left out.
    """

    edges: Tensor
    weights: Tensor
    shares: Tensor
    influence: Tensor
    node_threshold: float
    edge_threshold: float
    skipped: list[int] = field(default_factory=list)
    rule: str = RULE

    def __len__(self) -> int:
        return int(self.edges.shape[0])

    def heads(self) -> list[HeadSummary]:
        """Every head, most cross-position influence first (see :class:`HeadSummary`)."""
        n_layers, n_heads = int(self.shares.shape[1]), int(self.shares.shape[2])
        a = self.shares.abs().flatten(1).double()  # [E, L*H]
        frac = a / a.sum(1, keepdim=True).clamp(min=1e-30)
        carried = (frac * self.influence.double()[:, None]).sum(0)
        carried = carried / carried.sum().clamp(min=1e-30)
        top = torch.bincount(a.argmax(1), minlength=n_layers * n_heads) if len(a) else torch.zeros(n_layers * n_heads)
        abs_share = a.sum(0)
        order = torch.argsort(carried, descending=True, stable=True).tolist()
        return [HeadSummary(k // n_heads, k % n_heads, float(carried[k]), float(abs_share[k]), int(top[k]))
                for k in order]

    def top(self, k: int = 10) -> list[HeadSummary]:
        """The ``k`` heads carrying the most cross-position influence."""
        return self.heads()[: max(0, int(k))]

    def edge(self, source: int, target: int) -> Tensor | None:
        """``[n_layers, n_heads]`` shares of the edge ``source -> target`` if it is one of these, else None."""
        hit = ((self.edges[:, 0] == int(target)) & (self.edges[:, 1] == int(source))).nonzero()
        return self.shares[int(hit[0, 0])] if len(hit) else None


# ---- the frozen state of a graph (:mod:`.attached_state`), and the loadings kept with it ------------------------


def _state(graph: AttributionGraph) -> AttachedState:
    return attached_state(graph, "head loadings")


def _loadings(state: AttachedState) -> dict[tuple[float, float], HeadLoadings]:
    """The loadings computed on this state, by ``(node_threshold, edge_threshold)``."""
    return state.derived("head_loadings", dict)


# ---- node geometry ----------------------------------------------------------------------------------------------


def _position(graph: AttributionGraph, node: int) -> int:
    return int(graph.node_info(node).pos)


def _check_edge(graph: AttributionGraph, source: Any, target: Any) -> tuple[int, int]:
    s, t = graph.node_index(source), graph.node_index(target)
    kind_t = graph.node_kind(t)
    if kind_t not in ("feature", "logit"):
        raise GraphError(
            f"Node {graph.node_id(t)} is a {kind_t} node: it has no incoming edges (targets are features or logits)."
        )
    if graph.node_kind(s) == "logit":
        raise GraphError(f"Node {graph.node_id(s)} is a logit node: it has no outgoing edges.")
    ps, pt = _position(graph, s), _position(graph, t)
    if ps == pt:
        raise GraphError(
            f"Edge {graph.node_id(s)} -> {graph.node_id(t)} stays at position {ps}: it crosses no position, so no "
            "head carries it (head loadings are for edges between different positions)."
        )
    return s, t


def _injections(graph: AttributionGraph, state: AttachedState, targets: list[int]
                ) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """``(layers [n], positions [n], directions [n, d], unknown)``: each target's input direction where it is read
    (a feature's at its layer's MLP input, a logit's after the final norm at the last position), as ``attribute``
    injects it; ``unknown`` lists direction targets whose vector the graph does not hold."""
    fwd, rep = state.fwd, state.replacement
    gm = rep.model
    device = fwd.x.device
    n_layers, n_pos = graph.n_layers, graph.n_pos
    layers = torch.empty(len(targets), dtype=torch.long)
    positions = torch.empty(len(targets), dtype=torch.long)
    dirs = torch.zeros(len(targets), fwd.x.shape[-1], device=device)
    feats = [k for k, t in enumerate(targets) if t < graph.n_selected]
    unknown: list[int] = []
    if feats:
        active = graph.selected_active_features[torch.tensor([targets[k] for k in feats])]
        dirs[feats] = input_directions(fwd, rep.transcoders, active, device)
        layers[feats] = active[:, 0]
        positions[feats] = active[:, 1]
    logits = [k for k, t in enumerate(targets) if t >= graph.n_selected]
    if logits:
        vectors = getattr(rep, "target_vectors", None)  # what attribute injected
        known = torch.ones(graph.n_logits, dtype=torch.bool)
        if vectors is None or len(vectors) != graph.n_logits:  # attached after loading: tokens' rows again
            known = graph.logit_tokens < vocab_size(gm)
            vectors = torch.zeros(graph.n_logits, fwd.x.shape[-1])
            if known.any():
                vectors[known] = centred_rows(gm, graph.logit_tokens[known].to(gm.device)).cpu()
        for k in logits:
            j = targets[k] - graph.logit_slice.start
            if not known[j]:
                unknown.append(targets[k])
                continue
            dirs[k] = fwd.s_final[n_pos - 1] * vectors[j].to(device).float()
        layers[logits] = n_layers
        positions[logits] = n_pos - 1
    return layers, positions, dirs, unknown


def _writes(graph: AttributionGraph, state: AttachedState, sources: list[int]) -> list[list[tuple[int, Tensor]]]:
    """Per source: ``[(output layer, vector [d])]``, where its output enters the residual stream (``-1``: the
    embedding, before layer 0; ``k``: layer ``k``'s MLP output), as ``attribute`` dots it with the pull-back."""
    fwd, nodes, tset = state.fwd, state.nodes, state.replacement.transcoders
    device = fwd.x.device
    out: list[list[tuple[int, Tensor]]] = []
    for node in sources:
        kind, layer, pos, feature = graph.node_info(node)
        if kind == "feature":
            act = float(graph.selected_activation_values[node])
            vecs = tset.write_vectors(layer, torch.tensor([feature], device=tset.device))
            out.append([(k, act * v[0].to(device)) for k, v in sorted(vecs.items())])
        elif kind == "error":
            out.append([(layer, nodes.err[layer, pos])])
        else:
            out.append([(-1, nodes.tok[pos])])
    return out


# ---- the split ------------------------------------------------------------------------------------------------


def _same_position_pullback(fwd: FrozenForward, nodes: ActiveNodes, layers: Tensor, positions: Tensor,
                            inject: Tensor) -> Tensor:
    """``q [n, n_layers, n_heads, head_dim]``: each target's direction carried back along same-position steps to
    each layer's attention, read through each head's output projection (``W_O,h^T (s_pa ⊙ g_i)``)."""
    n_layers = fwd.n_layers
    device = inject.device
    n, n_heads, n_kv, dh = len(layers), fwd.n_heads, fwd.n_kv, fwd.head_dim
    group = n_heads // n_kv
    q = torch.zeros(n, n_layers, n_heads, dh, device=device, dtype=EXACT)
    layers, positions = layers.to(device), positions.to(device)
    inject = inject.to(EXACT)
    g = torch.zeros(n, inject.shape[-1], device=device, dtype=EXACT)
    top = layers == n_layers
    g[top] = inject[top]
    for layer in range(n_layers - 1, -1, -1):
        m = _exact_layer(fwd, nodes, layer)
        if m.skip is not None:  # g is at this layer's output; the skip reads its MLP input
            g = g + m.s_pf[positions] * (g @ m.skip.T)
        here = layers == layer
        g[here] += inject[here]
        g_z = (m.s_pa[positions] * g) @ m.w_o  # [n, H*dh]
        q[:, layer] = g_z.unflatten(-1, (n_heads, dh))
        diag = m.patterns[:, positions, positions].T  # [n, H]: A[l, h, i, i]
        g_v = (diag[..., None] * q[:, layer]).unflatten(1, (n_kv, group)).sum(2)  # [n, kv, dh]
        g = g + m.s_in[positions] * (g_v.flatten(1) @ m.w_v)
    return q


class _Layer(NamedTuple):
    """One layer of the frozen map in float64 (``s_*`` ``[T, d]``, ``patterns`` ``[H, T, T]``, weights as in
    :class:`FrozenForward`, ``skip`` ``[d, d]`` or None)."""

    s_in: Tensor
    s_pa: Tensor
    s_pf: Tensor
    patterns: Tensor
    w_o: Tensor
    w_v: Tensor
    skip: Tensor | None


def _exact_layer(fwd: FrozenForward, nodes: ActiveNodes, layer: int) -> _Layer:
    # Made per use rather than held: a float64 copy of every layer would double the frozen state's memory.
    skip = nodes.skip.get(layer)
    return _Layer(fwd.s_in[layer].to(EXACT), fwd.s_pa[layer].to(EXACT), fwd.s_pf[layer].to(EXACT),
                  fwd.patterns[layer].to(EXACT), fwd.w_o[layer].to(EXACT), fwd.w_v[layer].to(EXACT),
                  None if skip is None else skip.to(EXACT))


def _add_writes(f: Tensor, writes: Any) -> None:
    for b, p, vec in writes:
        f[b, p] += vec.to(f.dtype)


def _split(fwd: FrozenForward, nodes: ActiveNodes, q: Tensor, t_layers: Tensor, t_pos: Tensor,
           writes: list[list[tuple[int, Tensor]]], s_pos: Tensor, edges: Tensor, progress: bool) -> Tensor:
    """``[E, n_layers, n_heads]`` shares of ``edges [E, 2]`` (target index into ``q``, source index into ``writes``),
    carrying the sources forward through the frozen model in batches (see the module docstring)."""
    n_layers, n_pos = fwd.n_layers, fwd.n_pos
    n_heads, n_kv, dh = fwd.n_heads, fwd.n_kv, fwd.head_dim
    group = n_heads // n_kv
    device = q.device
    out = torch.zeros(len(edges), n_layers, n_heads)
    if not len(edges):
        return out
    first = torch.tensor([min(k for k, _ in w) for w in writes])
    used = torch.unique(edges[:, 1])
    order = used[torch.argsort(s_pos[used] * (n_layers + 2) + first[used] + 1, stable=True)]
    bar = progress_bar(total=len(order), desc="head loadings", disable=not progress, leave=False)
    try:
        for start in range(0, len(order), SOURCE_BATCH):
            batch = order[start : start + SOURCE_BATCH]
            slot = torch.full((len(writes),), -1, dtype=torch.long)
            slot[batch] = torch.arange(len(batch))
            mine = (slot[edges[:, 1]] >= 0).nonzero().flatten()
            e_src = slot[edges[mine, 1]].to(device)
            e_tgt = edges[mine, 0].to(device)
            p0 = int(s_pos[batch].min())
            e_pos = t_pos.to(device)[e_tgt] - p0  # query position, relative to p0
            e_top = t_layers.to(device)[e_tgt]
            l0 = int(first[batch].min()) + 1
            l_end = min(int(e_top.max()), n_layers - 1)
            by_layer: dict[int, list[tuple[int, int, Tensor]]] = {}
            for b, node in enumerate(batch.tolist()):
                for k, vec in writes[node]:
                    by_layer.setdefault(k, []).append((b, int(s_pos[node]) - p0, vec))
            f = torch.zeros(len(batch), n_pos - p0, fwd.x.shape[-1], device=device, dtype=EXACT)

            _add_writes(f, by_layer.get(l0 - 1, ()))
            for layer in range(l0, l_end + 1):
                m = _exact_layer(fwd, nodes, layer)
                v = ((m.s_in[p0:] * f) @ m.w_v.T).unflatten(-1, (n_kv, dh))  # [C, P, kv, dh]
                a = m.patterns[:, p0:, p0:].unflatten(0, (n_kv, group))  # [kv, g, P, P]
                z = torch.einsum("kgts,cskd->ctkgd", a, v)  # [C, P, kv, g, dh]
                live = (e_top >= layer).nonzero().flatten()
                if len(live):
                    ec, ep = e_src[live], e_pos[live]
                    diag = a[:, :, ep, ep].permute(2, 0, 1)  # [e, kv, g]: A[l, h, i, i]
                    z_off = z[ec, ep] - diag[..., None] * v[ec, ep][:, :, None, :]  # [e, kv, g, dh]
                    share = (z_off.flatten(1, 2) * q[e_tgt[live], layer]).sum(-1)  # [e, H]
                    out[mine[live.cpu()], layer] = share.float().cpu()
                if layer == l_end:
                    break
                f = f + m.s_pa[p0:] * (z.flatten(-3) @ m.w_o.T)
                if m.skip is not None:
                    f = f + (m.s_pf[p0:] * f) @ m.skip
                _add_writes(f, by_layer.get(layer, ()))
            bar.update(len(batch))
    finally:
        bar.close()
    return out


def _compute(graph: AttributionGraph, state: AttachedState, edges: list[tuple[int, int]], progress: bool
             ) -> tuple[Tensor, list[int]]:
    """Shares ``[E, n_layers, n_heads]`` of ``edges`` ((target, source) node pairs) and the skipped targets."""
    targets = sorted({t for t, _ in edges})
    layers, positions, dirs, unknown = _injections(graph, state, targets)
    t_index = {t: k for k, t in enumerate(targets)}
    sources = sorted({s for _, s in edges})
    s_index = {s: k for k, s in enumerate(sources)}
    pairs = torch.tensor([[t_index[t], s_index[s]] for t, s in edges], dtype=torch.long).reshape(-1, 2)
    s_pos = torch.tensor([_position(graph, s) for s in sources], dtype=torch.long)
    # A source after its target's position has no path to it (causal attention): its shares stay zero.
    forward = s_pos[pairs[:, 1]] < positions[pairs[:, 0]]
    shares = torch.zeros(len(pairs), graph.n_layers, state.fwd.n_heads)
    with torch.no_grad():
        q = _same_position_pullback(state.fwd, state.nodes, layers, positions, dirs)
        shares[forward] = _split(state.fwd, state.nodes, q, layers, positions, _writes(graph, state, sources), s_pos,
                                 pairs[forward], progress)
    return shares, unknown


def _check_recomputed(graph: AttributionGraph, edges: Tensor, shares: Tensor) -> None:
    if not len(edges):
        return
    weights = graph.adjacency_matrix[edges[:, 0], edges[:, 1]].double()
    gap = (shares.double().sum((1, 2)) - weights).abs()
    scale = weights.abs().max().clamp(min=1e-12)
    worst = int(torch.argmax(gap / torch.maximum(weights.abs(), 1e-3 * scale)))
    if float(gap[worst]) > RECOMPUTE_TOLERANCE * max(abs(float(weights[worst])), 1e-3 * float(scale)):
        t, s = edges[worst].tolist()
        raise GraphError(
            f"The attached model and transcoders do not reproduce edge {graph.node_id(s)} -> {graph.node_id(t)} "
            f"({float(shares[worst].sum()):+.4g} vs {float(weights[worst]):+.4g} in the graph): attach the ones the "
            "graph was built with."
        )


def edge_heads(graph: AttributionGraph, source: Any, target: Any) -> EdgeHeads:
    """The split of the edge ``source -> target`` over (layer, head) (see the module docstring for the rule).

    ``source`` / ``target``: node references as :meth:`AttributionGraph.node_index` takes them (index,
    ``(layer, pos, feature)``, Neuronpedia node id). A kept edge already split by :func:`head_loadings` is read from
    its cache; any other edge is computed on its own (one frozen forward of the source, well under a second on CPU).

    Raises GraphError for an unknown node, a target that is not a feature or logit, a source at the target's
    position (no head carries it), a graph without its model (``graph.attach(model, transcoders)``), or a direction
    target whose vector the graph does not hold (a graph read from a file).
    """
    s, t = _check_edge(graph, source, target)
    state = _state(graph)
    cached = next((lo.edge(s, t) for lo in _loadings(state).values() if lo.edge(s, t) is not None), None)
    if cached is None:
        shares, unknown = _compute(graph, state, [(t, s)], progress=False)
        if unknown:
            raise GraphError(
                f"Target {graph.node_id(t)} is a direction target whose vector this graph does not hold (it was read "
                "from a file and attached): attribute the prompt again with the same targets to split its edges."
            )
        _check_recomputed(graph, torch.tensor([[t, s]]), shares)
        cached = shares[0]
    return EdgeHeads(s, t, graph.node_id(s), graph.node_id(t), float(graph.adjacency_matrix[t, s]), cached.clone())


def computed_head_loadings(graph: AttributionGraph, node_threshold: float = 0.8,
                           edge_threshold: float = 0.98) -> HeadLoadings | None:
    """The :func:`head_loadings` already computed for ``graph`` at these thresholds (while its model stays
    attached), else None. Computes nothing: for a view that shows them only when they exist (the circuit view's
    saved-notebook HTML), since computing them costs about half an attribution."""
    state = existing_state(graph)
    return None if state is None else _loadings(state).get((float(node_threshold), float(edge_threshold)))


def head_loadings(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98, *,
                  progress: bool = True) -> HeadLoadings:
    """Head loadings of every cross-position edge kept by ``graph.prune(node_threshold, edge_threshold)``.

    Computed once per graph and thresholds (then cached while the graph lives and its model stays attached).
    Raises GraphError for thresholds outside [0, 1] or a graph without its model.
    """
    key = (float(node_threshold), float(edge_threshold))
    state = _state(graph)
    loadings = _loadings(state)
    if key in loadings:
        return loadings[key]
    pruned = graph.prune(node_threshold, edge_threshold)
    t_idx, s_idx = pruned.edge_mask.nonzero(as_tuple=True)
    pos = torch.tensor([_position(graph, k) for k in range(graph.n_nodes)], dtype=torch.long)
    cross = pos[t_idx] != pos[s_idx]
    edges = torch.stack([t_idx[cross], s_idx[cross]], 1)
    shares, unknown = _compute(graph, state, [tuple(e) for e in edges.tolist()], progress)
    if unknown:
        keep = ~torch.isin(edges[:, 0], torch.tensor(unknown))
        edges, shares = edges[keep], shares[keep]
    _check_recomputed(graph, edges, shares)
    matrix = graph.adjacency_matrix.clone()
    matrix[~pruned.node_mask] = 0
    matrix[:, ~pruned.node_mask] = 0
    influence = compute_edge_influence(matrix, graph.logit_weights)[edges[:, 0], edges[:, 1]]
    result = HeadLoadings(
        edges=edges, weights=graph.adjacency_matrix[edges[:, 0], edges[:, 1]].clone(), shares=shares,
        influence=influence, node_threshold=key[0], edge_threshold=key[1], skipped=sorted(unknown),
    )
    loadings[key] = result
    return result
