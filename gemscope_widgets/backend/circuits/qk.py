"""QK attribution: why a head attends from a query position to a key position, as (query node, key node) pairs.

Method: "Tracing Attention Computation Through Feature Interactions" (Kamath et al., 2025,
transformer-circuits.pub/2025/attention-qk), on the frozen local replacement model of :mod:`.replacement`.
With the norm scales frozen at the prompt's values (the layer's input RMSNorm ``s_in``, and the head's ``q_norm``
/ ``k_norm`` scales, computed from the real query and key), the pre-softmax score of head ``h`` of layer ``L``
from query position ``i`` to key position ``j`` is bilinear in the residual streams (the layer's input)::

    score = scaling · (P_i r_i) · (P_j r_j),   P_p v = RoPE_p( s_norm ⊙ W_{q|k}·(s_in[p] ⊙ v) )

``scaling = query_pre_attn_scalar ** -0.5``; ``W_k`` is the key/value head ``h // (n_heads / n_kv)`` (grouped
query attention); ``RoPE_p`` rotates by position ``p`` with the layer's own base (local and global layers differ;
the cos/sin are read from the model's forward, so any rope scaling is included). Soft-capping does not exist on
Gemma 3 and the mask is not part of the score (a key outside the mask is refused).

Each residual stream is written as a sum of terms at its own position (a CLT feature's writes to several layers
are summed; a skip transcoder's ``x @ W_skip`` is a linear path, followed exactly through each later layer, as the
graph's edges follow it)::

    r_p = token embedding (node E_tok_p)
        + Σ_{l<L} [ features at (l, p) · decoder   (graph nodes; active features without a node: "unselected")
                  + error (l, p)                    (graph node {l}_-1_{p})
                  + b_dec and zeroed-prefix MLP outputs   (one "bias" term per side)
                  + attention output of layer l at p      (one "attention" term per layer: {l}_attn_{p}) ]

Attention outputs are not decomposed further (they carry other positions' information through frozen patterns):
each is reported as its own term. Every (query term, key term) pair gets ``scaling · (P_i u_a)·(P_j v_b)``; all
pairs sum to the score exactly. The *remainder* is what is not a (graph node, graph node) pair, split by kind:
``query <kind>`` is the query-side marginal of that non-node kind (with every key term) and ``key <kind>`` the
key-side non-node terms paired with the query-side graph nodes, so ``Σ node pairs + Σ remainder == score``.

Chat prompts: positions of a zeroed template prefix have no feature and no error (their MLP output is a bias), as
in :func:`~.attribution.attribute`.
"""

from __future__ import annotations

import contextlib
import operator
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gemscope_widgets.backend.circuits.active_nodes import ActiveNodes
from gemscope_widgets.backend.circuits.attached_state import AttachedState, attached_state
from gemscope_widgets.backend.circuits.replacement import FrozenForward
from gemscope_widgets.backend.gemma.attention import sliding_window
from gemscope_widgets.backend.gemma.hooks import StopForward
from gemscope_widgets.backend.gemma.offload import resident
from gemscope_widgets.errors import GraphError

if TYPE_CHECKING:
    from gemscope_widgets.backend.circuits.graph import AttributionGraph

TERM_KINDS = ("feature", "error", "token", "attention", "bias", "unselected")
NODE_TERM_KINDS = ("feature", "error", "token")  # graph nodes; the other kinds make up the remainder
INFO_KEY = "qk_tracing"  # graph.info[INFO_KEY]: {target node id: trace record} (what the graph files export)


@dataclass(frozen=True)
class QKTerm:
    """One term of a residual stream: ``kind`` in :data:`TERM_KINDS`, ``node_id`` (Neuronpedia's id for graph nodes
    and unselected features ``{layer}_{feature}_{pos}``; ``{layer}_attn_{pos}`` for attention outputs,
    ``bias_{pos}`` for the constants), ``node`` (graph node index, -1 for non-nodes), ``layer`` (-1 for the token
    and bias terms), ``pos``, ``feature`` (feature index, token id for the token, -1 otherwise), ``label``,
    ``activation`` (a feature's activation; None for other kinds)."""

    kind: str
    node_id: str
    node: int
    layer: int
    pos: int
    feature: int
    label: str
    activation: float | None = None

    @property
    def is_node(self) -> bool:
        """Whether the term is a node of the graph (feature, error or token node)."""
        return self.node >= 0


@dataclass
class QKAttribution:
    """The QK attribution of one head at one (query, key) position pair (see the module docstring).

    Fields: ``layer``, ``head``, ``kv_head`` (the key/value head it reads), ``query_pos``, ``key_pos``;
    ``score``: the pre-softmax attention score (logit units, ``query_pre_attn_scalar`` scaling included, no mask);
    ``probability``: the attention pattern entry ``A[head, query_pos, key_pos]`` of the forward pass;
    ``q_terms`` / ``k_terms``: the terms of each side; ``pairs``: ``[len(q_terms), len(k_terms)]`` float64, each
    pair's contribution to ``score`` (``pairs.sum() == score`` up to rounding, see :attr:`remainder`); ``top``:
    how many entries the lists give; ``info``: ``scaling``, ``sliding_window`` (None on a global layer).
    """

    layer: int
    head: int
    kv_head: int
    query_pos: int
    key_pos: int
    score: float
    probability: float
    q_terms: list[QKTerm]
    k_terms: list[QKTerm]
    pairs: Tensor
    top: int = 10
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def q_marginal(self) -> Tensor:
        """``[len(q_terms)]``: each query-side term's contribution with the whole key (``pairs.sum(1)``)."""
        return self.pairs.sum(1)

    @property
    def k_marginal(self) -> Tensor:
        """``[len(k_terms)]``: each key-side term's contribution with the whole query (``pairs.sum(0)``)."""
        return self.pairs.sum(0)

    def _node_mask(self, terms: list[QKTerm]) -> Tensor:
        return torch.tensor([t.is_node for t in terms], dtype=torch.bool)

    def top_pairs(self, n: int | None = None) -> list[tuple[QKTerm, QKTerm, float]]:
        """The ``n`` (default ``top``) (query node, key node) pairs of largest ``|contribution|``, graph nodes only."""
        n = self.top if n is None else int(n)
        qm, km = self._node_mask(self.q_terms), self._node_mask(self.k_terms)
        masked = self.pairs.clone()
        masked[~qm] = 0
        masked[:, ~km] = 0
        flat = masked.abs().flatten()
        k = min(n, int((flat > 0).sum()))
        idx = torch.topk(flat, k).indices.tolist() if k else []
        nk = len(self.k_terms)
        return [(self.q_terms[a // nk], self.k_terms[a % nk], float(self.pairs.flatten()[a])) for a in idx]

    @staticmethod
    def _top(terms: list[QKTerm], values: Tensor, n: int) -> list[tuple[QKTerm, float]]:
        k = min(n, len(terms))
        idx = torch.topk(values.abs(), k).indices.tolist() if k else []
        return [(terms[a], float(values[a])) for a in idx]

    def top_q(self, n: int | None = None) -> list[tuple[QKTerm, float]]:
        """The ``n`` (default ``top``) query-side terms (any kind) of largest ``|marginal|``."""
        return self._top(self.q_terms, self.q_marginal, self.top if n is None else int(n))

    def top_k(self, n: int | None = None) -> list[tuple[QKTerm, float]]:
        """The ``n`` (default ``top``) key-side terms (any kind) of largest ``|marginal|``."""
        return self._top(self.k_terms, self.k_marginal, self.top if n is None else int(n))

    @property
    def node_pairs_total(self) -> float:
        """The sum of every (graph node, graph node) pair's contribution."""
        qm, km = self._node_mask(self.q_terms), self._node_mask(self.k_terms)
        return float(self.pairs[qm][:, km].sum())

    @property
    def remainder(self) -> dict[str, float]:
        """What is not a (graph node, graph node) pair, by side and kind (see the module docstring):
        ``{"query attention", "query bias", "query unselected", "key attention", "key bias", "key unselected",
        "rounding"}``; ``node_pairs_total + sum(remainder.values()) == score``. ``rounding`` is ``score -
        pairs.sum()``: the residual's own float rounding (about 1e-6 of the score in float32; more in bfloat16,
        whose captured residuals the frozen map recomposes less exactly)."""
        qm = self._node_mask(self.q_terms)
        out: dict[str, float] = {}
        for kind in TERM_KINDS[3:]:
            qk = torch.tensor([t.kind == kind for t in self.q_terms], dtype=torch.bool)
            kk = torch.tensor([t.kind == kind for t in self.k_terms], dtype=torch.bool)
            out[f"query {kind}"] = float(self.pairs[qk].sum())
            out[f"key {kind}"] = float(self.pairs[qm][:, kk].sum())
        out["rounding"] = self.score - float(self.pairs.sum())
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (what a view or a graph file holds): the head, score, probability, the top pairs and
        marginals as Neuronpedia's ``qk_tracing_results`` lists (``[q_id, k_id, attr]``, ``[id, attr]``), the
        remainder, and ``contributors``: ``{id: {kind, node, layer, pos, feature, label, activation}}`` of every id
        listed."""
        pairs = [[q.node_id, k.node_id, v] for q, k, v in self.top_pairs()]
        tq = [[t.node_id, v] for t, v in self.top_q()]
        tk = [[t.node_id, v] for t, v in self.top_k()]
        listed = {t.node_id: t for t, _ in self.top_q() + self.top_k()}
        listed.update((t.node_id, t) for q, k, _ in self.top_pairs() for t in (q, k))
        return {
            "layer": self.layer,
            "head": self.head,
            "kv_head": self.kv_head,
            "query_pos": self.query_pos,
            "key_pos": self.key_pos,
            "score": self.score,
            "probability": self.probability,
            "pair_wise_contributors": pairs,
            "top_q_marginal_contributors": tq,
            "top_k_marginal_contributors": tk,
            "node_pairs_total": self.node_pairs_total,
            "remainder": self.remainder,
            "contributors": {
                i: {"kind": t.kind, "node": t.node, "layer": t.layer, "pos": t.pos, "feature": t.feature,
                    "label": t.label, "activation": t.activation}
                for i, t in listed.items()
            },
        }

    def __repr__(self) -> str:
        lines = [
            f"QKAttribution(layer {self.layer} head {self.head}, query {self.query_pos} -> key {self.key_pos}: "
            f"score {self.score:+.4f}, p={self.probability:.3f}; node pairs {self.node_pairs_total:+.4f})"
        ]
        for q, k, v in self.top_pairs(5):
            lines.append(f"  {v:+.4f}  {q.label}  x  {k.label}")
        return "\n".join(lines)


# ---- what one graph needs, computed once ------------------------------------------------------------------------


@dataclass
class _Prepared:
    """Kept with the graph's :class:`~.attached_state.AttachedState` (a new attach makes it again)."""

    fwd: FrozenForward
    nodes: ActiveNodes
    node_of_active: Tensor  # [n_active] graph node index, -1 without a node
    rope: dict[int, tuple[Tensor, Tensor]]  # layer -> (cos [T, dh], sin [T, dh])


@contextlib.contextmanager
def _attention_kwargs_hooks(modules: dict[int, torch.nn.Module], store: dict[int, Any]) -> Iterator[None]:
    """Keep the ``position_embeddings`` (cos, sin) that this thread's forward gives each attention module of
    ``modules`` (by layer); the forward stops (StopForward) once the last of them has them. Always removed."""
    owner = threading.get_ident()
    handles = []

    def keep(layer: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if threading.get_ident() == owner:
                store[layer] = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
                if len(store) == len(modules):
                    raise StopForward

        return hook

    try:
        for layer, m in modules.items():
            handles.append(m.register_forward_pre_hook(keep(layer), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _rotary(gm: Any, ids: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
    """Each layer's RoPE ``(cos, sin)`` ``[T, head_dim]`` float64, as the model's forward passes them (read at the
    first layer of each layer type, which all layers of that type share; the forward stops there)."""
    types = list(getattr(gm.text_model.config, "layer_types", None) or range(gm.n_layers))
    first = {t: types.index(t) for t in dict.fromkeys(types)}
    store: dict[int, Any] = {}
    modules = {layer: gm.layers[layer].self_attn for layer in first.values()}
    with torch.no_grad(), _attention_kwargs_hooks(modules, store), contextlib.suppress(StopForward):
        gm.text_model(input_ids=ids.reshape(1, -1).to(gm.device), use_cache=False)
    out = {}
    for layer in range(gm.n_layers):
        pe = store.get(first[types[layer]])
        if pe is None:
            raise GraphError(f"Could not read the rotary embedding of layer {layer} from {type(gm.model).__name__}.")
        cos, sin = pe
        out[layer] = (_f64(cos.reshape(-1, cos.shape[-1])), _f64(sin.reshape(-1, sin.shape[-1])))
    return out


def _prepared(graph: AttributionGraph) -> _Prepared:
    state = attached_state(graph, "QK attribution")
    return state.derived("qk", lambda: _prepare(graph, state))


def _prepare(graph: AttributionGraph, state: AttachedState) -> _Prepared:
    nodes = state.nodes
    if nodes.active.shape != graph.active_features.shape or not torch.equal(nodes.active, graph.active_features):
        raise GraphError(
            "The attached model and transcoders do not give this graph's active features on its prompt: attach "
            "the ones it was built with, or attribute the prompt again."
        )
    node_of_active = torch.full((nodes.n_active,), -1, dtype=torch.long)
    node_of_active[graph.selected_features] = torch.arange(graph.n_selected)
    return _Prepared(state.fwd, nodes, node_of_active, _rotary(state.replacement.model, graph.input_tokens))


# ---- the decomposition ----------------------------------------------------------------------------------------


def _f64(t: Tensor) -> Tensor:
    """A float64 CPU copy (the decomposition runs there, whatever the model's device)."""
    return t.detach().to("cpu", torch.float64)


def _rotate_half_rows(m: Tensor) -> Tensor:
    half = m.shape[0] // 2
    return torch.cat((-m[half:], m[:half]), dim=0)


def _side_map(
    fwd: FrozenForward, layer: int, pos: int, w: Tensor, norm: Any, rope: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """``(P [dh, d], total [dh])``: the frozen linear map from the residual at ``pos`` to the rotated query or key
    (input norm, projection rows ``w [dh, d]``, q/k-norm scale frozen at the real value, RoPE), and its value."""
    s_in = _f64(fwd.s_in[layer, pos])
    raw = w @ (s_in * _f64(fwd.r_pre[layer, pos]))
    weight, eps = _f64(norm.weight), float(norm.eps)
    s = (1.0 + weight) * torch.rsqrt(raw.pow(2).mean() + eps)
    m = s[:, None] * w * s_in[None, :]
    cos, sin = rope[0][pos], rope[1][pos]
    p = m * cos[:, None] + _rotate_half_rows(m) * sin[:, None]
    return p, p @ _f64(fwd.r_pre[layer, pos])


def _side_terms(
    graph: AttributionGraph, prep: _Prepared, layer: int, pos: int, p: Tensor
) -> tuple[list[QKTerm], Tensor]:
    """The terms of the residual at (``layer``, ``pos``) and their images ``[n_terms, dh]`` under ``p``."""
    fwd, nodes = prep.fwd, prep.nodes
    g = p.clone()  # the map's gradient, pulled back through the skip paths at this position
    feats: dict[int, Tensor] = {}
    errors: list[tuple[int, Tensor]] = []
    attention: list[tuple[int, Tensor]] = []
    bias = torch.zeros(p.shape[0], dtype=torch.float64)
    for lyr in range(layer - 1, -1, -1):
        for wpos, cols, vecs in nodes.writers.get(lyr, ()):
            if wpos == pos:
                contrib = _f64(vecs) @ g.T
                for c, v in zip(cols.tolist(), contrib, strict=True):
                    feats[c] = feats[c] + v if c in feats else v
        errors.append((lyr, g @ _f64(nodes.err[lyr, pos])))
        bias = bias + g @ _f64(nodes.const[lyr, pos])
        skip = nodes.skip.get(lyr)
        if skip is not None:
            g = g + (g @ _f64(skip).T) * _f64(fwd.s_pf[lyr, pos])
        attention.append((lyr, g @ _f64(fwd.r_mid[lyr, pos] - fwd.r_pre[lyr, pos])))
    token = g @ _f64(nodes.tok[pos])

    terms: list[QKTerm] = []
    rows: list[Tensor] = []
    for c in sorted(feats):
        lyr, _, feat = nodes.active[c].tolist()
        node = int(prep.node_of_active[c])
        nid = f"{lyr}_{feat}_{pos}"
        act = float(nodes.values[c])
        if node >= 0:
            terms.append(QKTerm("feature", nid, node, lyr, pos, feat, graph.node_label(node), act))
        else:
            terms.append(QKTerm("unselected", nid, -1, lyr, pos, feat, f"L{lyr} #{feat} @{pos} (no node)", act))
        rows.append(feats[c])
    for lyr, v in sorted(errors, key=lambda e: e[0]):
        node = graph.error_slice.start + lyr * graph.n_pos + pos
        terms.append(QKTerm("error", graph.node_id(node), node, lyr, pos, -1, graph.node_label(node)))
        rows.append(v)
    tok_node = graph.token_slice.start + pos
    terms.append(QKTerm("token", graph.node_id(tok_node), tok_node, -1, pos, int(graph.input_tokens[pos]),
                        graph.node_label(tok_node)))
    rows.append(token)
    for lyr, v in sorted(attention, key=lambda e: e[0]):
        terms.append(QKTerm("attention", f"{lyr}_attn_{pos}", -1, lyr, pos, -1, f"attention L{lyr} @{pos}"))
        rows.append(v)
    terms.append(QKTerm("bias", f"bias_{pos}", -1, -1, pos, -1, f"biases @{pos}"))
    rows.append(bias)
    return terms, torch.stack(rows)


def _check(graph: AttributionGraph, prep: _Prepared, layer: Any, head: Any, query_pos: Any, key_pos: Any,
           top: Any) -> tuple[int, int, int, int, int]:
    fwd = prep.fwd
    out = []
    for name, value in (("layer", layer), ("head", head), ("query_pos", query_pos), ("key_pos", key_pos),
                        ("top", top)):
        try:
            if isinstance(value, bool):
                raise TypeError
            out.append(operator.index(value))
        except TypeError:
            raise GraphError(f"{name} must be an integer, got {value!r}.") from None
    layer, head, q, k, top = out
    if not 0 <= layer < fwd.n_layers:
        raise GraphError(f"Layer {layer} does not exist: this model has layers 0..{fwd.n_layers - 1}.")
    if not 0 <= head < fwd.n_heads:
        raise GraphError(f"Head {head} does not exist: layer {layer} has heads 0..{fwd.n_heads - 1}.")
    for name, p in (("Query", q), ("Key", k)):
        if not 0 <= p < fwd.n_pos:
            raise GraphError(f"{name} position {p} is outside the prompt (positions 0..{fwd.n_pos - 1}).")
    if k > q:
        raise GraphError(
            f"Query position {q} cannot attend to key position {k}: attention is causal, so the key position must "
            f"be at most the query position (0..{q})."
        )
    window = _sliding_window(graph, layer)
    if window is not None and q - k >= window:
        raise GraphError(
            f"Layer {layer} is a sliding-window layer (window {window}): query position {q} attends only to key "
            f"positions {max(0, q - window + 1)}..{q}; key position {k} is outside it."
        )
    if top < 1:
        raise GraphError(f"top must be at least 1, got {top}.")
    return layer, head, q, k, top


def _sliding_window(graph: AttributionGraph, layer: int) -> int | None:
    """The layer's sliding window (keys ``j`` with ``i - j < window`` are seen), None on a global layer."""
    return sliding_window(graph.replacement.model, layer)


def qk_attribution(
    graph: AttributionGraph, layer: int, head: int, query_pos: int, key_pos: int, *, top: int = 10
) -> QKAttribution:
    """Split head ``head`` of ``layer``'s pre-softmax score from ``query_pos`` to ``key_pos`` into (query term,
    key term) pairs (see the module docstring for the terms, units and the remainder).

    Args:
        graph: an :class:`~.graph.AttributionGraph` with its model and transcoders attached (``attribute``
            attaches them; after loading a file call ``graph.attach``).
        layer: 0..n_layers-1. head: a query head, 0..n_heads-1 (its key/value head is ``head // (n_heads / n_kv)``).
        query_pos / key_pos: prompt positions with ``key_pos <= query_pos`` and, on a sliding-window layer,
            ``query_pos - key_pos < sliding_window`` (the model config's; 512 on Gemma 3).
        top: how many pairs and marginal contributors the lists and :meth:`QKAttribution.to_dict` give.

    Returns:
        :class:`QKAttribution`; ``pairs.sum()`` equals the score of the real attention module (its query and key
        after q/k-norm and RoPE, times ``query_pre_attn_scalar ** -0.5``) up to float rounding.

    Raises:
        GraphError: no model attached, a model or transcoder set that does not give this graph's active features,
        or a layer, head or position out of range, a key after the query (causal mask), a key outside the
        sliding window.

    Cost: the first call on a graph re-runs the model twice (the frozen capture and the rotary embeddings) and
    encodes the transcoders (cached per graph); each call after that is a few small matrix products per layer.
    """
    prep = _prepared(graph)
    layer, head, q, k, top = _check(graph, prep, layer, head, query_pos, key_pos, top)
    fwd = prep.fwd
    gm = graph.replacement.model
    attn = gm.layers[layer].self_attn
    dh = fwd.head_dim
    kv = head // (fwd.n_heads // fwd.n_kv)
    with torch.no_grad(), resident(gm.model, attn):
        w_q = _f64(attn.q_proj.weight[head * dh : (head + 1) * dh])
        w_k = _f64(attn.k_proj.weight[kv * dh : (kv + 1) * dh])
        scaling = float(getattr(attn, "scaling", gm.text_model.config.query_pre_attn_scalar**-0.5))
        p_q, q_vec = _side_map(fwd, layer, q, w_q, attn.q_norm, prep.rope[layer])
        p_k, k_vec = _side_map(fwd, layer, k, w_k, attn.k_norm, prep.rope[layer])
    q_terms, q_rows = _side_terms(graph, prep, layer, q, p_q)
    k_terms, k_rows = _side_terms(graph, prep, layer, k, p_k)
    pairs = scaling * (q_rows @ k_rows.T)
    score = scaling * float(q_vec @ k_vec)
    return QKAttribution(
        layer=layer, head=head, kv_head=kv, query_pos=q, key_pos=k, score=score,
        probability=float(fwd.patterns[layer, head, q, k]), q_terms=q_terms, k_terms=k_terms, pairs=pairs, top=top,
        info={"scaling": scaling, "sliding_window": _sliding_window(graph, layer),
              "rounding": score - float(pairs.sum())},
    )


def attention_row(graph: AttributionGraph, layer: int, head: int, query_pos: int) -> Tensor:
    """Head ``head`` of ``layer``'s attention pattern at ``query_pos``: the probability of each key position.

    Args:
        graph: an :class:`~.graph.AttributionGraph` with its model and transcoders attached (as :func:`qk_attribution`).
        layer: 0..n_layers-1. head: a query head, 0..n_heads-1. query_pos: a prompt position.

    Returns:
        ``[query_pos + 1]`` float32, the key positions ``0..query_pos``: the softmax of the head's scores from the
        prompt's own forward (the frozen pattern the graph's edges run through; keys outside a sliding window and
        a zeroed chat prefix hold what the model gave them). Sums to 1.

    Raises:
        GraphError: no model attached, or a layer, head or position out of range (as :func:`qk_attribution`).

    Cost: the first call on a graph captures the prompt (shared with :func:`qk_attribution`); later calls index it.
    """
    prep = _prepared(graph)
    layer, head, q, _, _ = _check(graph, prep, layer, head, query_pos, query_pos, 1)
    return prep.fwd.patterns[layer, head, q, : q + 1].detach().float().cpu().clone()


def default_target(graph: AttributionGraph, layer: int, query_pos: int) -> int:
    """The node a trace is filed under when none is named: the most likely logit node when the query is the last
    position (the head's output reaches the logits there), else the error node of ``layer`` at the query position
    (the first node the head's output reaches: the MLP of its own layer)."""
    if query_pos == graph.n_pos - 1 and graph.n_logits:
        return int(graph.logit_slice.start)
    return int(graph.error_slice.start + layer * graph.n_pos + query_pos)


def trace_head(
    graph: AttributionGraph,
    layer: int,
    head: int,
    query_pos: int,
    key_pos: int,
    *,
    top: int = 10,
    target: Any = None,
) -> QKAttribution:
    """:func:`qk_attribution`, filed in ``graph.info["qk_tracing"]`` under the Neuronpedia id of ``target`` (a node
    reference as ``graph.node_index`` takes it; default :func:`default_target`), which graph files save and the
    Neuronpedia export writes as that node's ``qk_tracing_results``. One trace per target node, as Neuronpedia's
    format holds: a later trace on the same node replaces the earlier. Raises GraphError as
    :func:`qk_attribution` does, or for an unknown target."""
    result = qk_attribution(graph, layer, head, query_pos, key_pos, top=top)
    node = default_target(graph, result.layer, result.query_pos) if target is None else graph.node_index(target)
    traces = graph.info.setdefault(INFO_KEY, {})
    traces[graph.node_id(node)] = result.to_dict()
    return result
