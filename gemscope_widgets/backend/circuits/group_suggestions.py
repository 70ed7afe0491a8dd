"""Suggested supernodes: features of a pruned graph that look like one job, for the user to accept or edit.

Grouping features by hand is how "Circuit Tracing" (Ameisen et al., 2025) reads its graphs (its supernodes, kept
by Neuronpedia's graph viewer in ``qParams.supernodes``); no tool proposes groups (circuit-tracer #20 asks for it).
A supernode stands for features that play one role, so the rule asks for what the merged node must keep: two kept
features are **linked** when

* they sit in the same bucket: the same token position (``by="position"``, the default) or the same band of
  ``layer_band`` consecutive layers (``by="layer_band"``), and
* their outgoing-edge vectors (columns of ``adjacency_matrix``: the direct effect on every node, pruned or not)
  have cosine similarity ≥ ``min_cosine`` (default 0.6: the two push the same targets the same way), and
* optionally, their logit-lens tokens (the ``top_tokens`` = 10 tokens each decoder vector promotes most through
  the final norm and unembedding, :mod:`~gemscope_widgets.backend.analysis.logit_lens`) overlap with Jaccard index
  ≥ ``min_token_overlap`` (default 0: off). Without a model attached (a graph read from a file) the tokens are
  unknown and this condition is dropped, which the result says.

Suggestions are the connected components (single linkage) of the links with at least two members, at most
``max_members`` per group (the most influential members), largest total influence first. A group whose
``retention`` (below) is under ``min_retention`` (default 0.8) is left out (``dropped`` counts them) and the rest
are measured again, until every suggestion keeps at least that share of its members' influence. Features already
in a supernode are left out. Nothing is changed in the graph: ``suggestion.accept(graph)`` (or
``graph.group(s.name, s.members)``) makes one a supernode.

How well a grouping preserves the graph's logit influence (stated per suggestion and for all together):
``retention`` is the supernode's influence on the logits computed **on the grouped graph** (members merged into one
node with summed edges, internal edges dropped; circuit-tracer's influence on the row-normalised ``|A|``) over the
sum of its members' influences on the original graph. It is 1 when the members' edges add without cancelling and
do not run through each other; it falls when their edges to a shared target have opposite signs (the group hides
the cancellation) or when one member feeds another (a path the group folds away). ``scores_before`` /
``scores_after`` are the graph's (replacement, completeness) scores (circuit-tracer's ``compute_graph_scores``)
without and with every suggestion merged.

The defaults, measured on the embedded Gemma 3 270M with its demo transcoder set (1,024 features a layer), on
four prompts ("Michael Jordan plays the sport of", "The Colosseum is in the country of", "The capital of France
is", "The opposite of hot is"), at the default pruning:

* ``max_feature_nodes=256``: 252 kept features, 4,454 same-position pairs. Outgoing-edge cosine: median 0.00, 90th
  percentile 0.25, 99th 0.48, 99.9th 0.85, max 0.997. Logit-lens Jaccard (top 10): 0 for 99.6% of the pairs
  (99.9th percentile 0.15, max 0.67), so the earlier default (cosine ≥ 0.7 and Jaccard ≥ 0.2) linked no pair at
  all, and any token condition keeps one pair at most: this set's features are too small for their logit lens to
  name a shared job, so tokens only name a group. ``max_feature_nodes=512``: 468 kept, 12,419 pairs, cosine 99th
  percentile 0.47, 99.9th 0.77, Jaccard > 0 for 0.44%.
* Cosine ≥ 0.6 links 0.47% of the pairs (0.34% at 512): 10 groups of 27 features (20 of 56 at 512); their
  retention is 0.53–1.0, median 0.94 (0.33–1.0, median 0.95). The retention floor of 0.8 leaves 7 groups of 21
  features (14 of 38 at 512; at least one on each prompt but the Colosseum one at 256): mostly the last
  position's final-layer features that push the same logits (``pos 6 ' of' → +' baseball'``: 4 features that
  raise ' basketball', ' hoops', ' football' and ' baseball' and lower ' the'), the
  first token's layer-0 features, and pairs of features at the subject's token. Their retention is 0.83–1.0
  (0.91–1.0); all groups of a graph together keep 0.94–0.97 of their influence, and the replacement and
  completeness scores are unchanged to three decimals. ``suggest_groups`` takes 0.2–3 s on these graphs.
* Looser or other similarities group more but keep less: cosine ≥ 0.5, 16 groups, retention down to 0.30; the
  cosine of the edges to kept nodes only (blind to cancellation through pruned ones) ≥ 0.7, retention down to
  0.12; the cosine of the edges weighted by each target's influence (what a merged node keeps in one step) is
  near 1 for any two features that mostly feed the same node (90th percentile 0.98), lumping 20–30 features at a
  token into one group of retention 0.66–0.8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gemscope_widgets.backend.analysis.logit_lens import feature_direction, norm_gain
from gemscope_widgets.backend.circuits.influence import compute_node_influence, graph_scores
from gemscope_widgets.backend.gemma.offload import resident
from gemscope_widgets.errors import GraphError

if TYPE_CHECKING:
    from gemscope_widgets.backend.circuits.graph import AttributionGraph

BUCKETS = ("position", "layer_band")
MIN_COSINE = 0.6
MIN_TOKEN_OVERLAP = 0.0
MIN_RETENTION = 0.8
TOP_TOKENS = 10


@dataclass
class GroupSuggestion:
    """One suggested supernode: ``name`` (made from its bucket and top shared token), ``members`` (node indices,
    most influential first), ``bucket`` (``("position", p)`` or ``("layer_band", first_layer)``), ``mean_cosine``
    (mean pairwise outgoing-edge cosine), ``shared_tokens`` (logit-lens tokens common to at least half the members),
    ``influence`` (sum of members' influences), ``retention`` (module docstring), ``target`` (the node the
    members' summed edges reach most strongly)."""

    name: str
    members: list[int]
    bucket: tuple[str, int]
    mean_cosine: float
    shared_tokens: list[str]
    influence: float
    retention: float
    target: int = -1

    def accept(self, graph: AttributionGraph, name: str | None = None) -> list[int]:
        """Make this suggestion a supernode of ``graph`` (``graph.group``), under ``name`` or its own."""
        return graph.group(name or self.name, self.members)


@dataclass
class GroupSuggestions:
    """``graph.suggest_groups()``'s answer: the suggestions, the settings used, and how well the grouping keeps
    the graph's logit influence (module docstring): ``scores_before`` / ``scores_after`` (replacement,
    completeness), ``influence_retained`` (all suggestions' grouped influence over their members' summed)."""

    suggestions: list[GroupSuggestion]
    settings: dict[str, Any]
    scores_before: tuple[float, float]
    scores_after: tuple[float, float]
    influence_retained: float
    used_tokens: bool = True
    kept: list[int] = field(default_factory=list, repr=False)
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.suggestions)

    def __getitem__(self, i: int) -> GroupSuggestion:
        return self.suggestions[i]

    def accept_all(self, graph: AttributionGraph) -> dict[str, list[int]]:
        """Make every suggestion a supernode; returns ``{name: members}``."""
        return {s.name: s.accept(graph) for s in self.suggestions}

    def __repr__(self) -> str:
        lines = [
            f"GroupSuggestions({len(self.suggestions)} group(s) of {len(self.kept)} kept features"
            + (f", {self.dropped} left out under retention {self.settings['min_retention']}" if self.dropped else "")
            + "; influence "
            f"retained {self.influence_retained:.3f}; replacement {self.scores_before[0]:.3f} -> "
            f"{self.scores_after[0]:.3f}, completeness {self.scores_before[1]:.3f} -> {self.scores_after[1]:.3f})"
        ]
        for s in self.suggestions:
            lines.append(f"  {s.name}: {len(s.members)} nodes, cos {s.mean_cosine:.2f}, retention {s.retention:.3f}")
        return "\n".join(lines)


def edge_cosines(adjacency: Tensor, nodes: Sequence[int]) -> Tensor:
    """``[n, n]`` cosine similarity of the outgoing-edge vectors (adjacency columns) of ``nodes`` (0 for a node
    without edges)."""
    cols = adjacency[:, list(nodes)].T.double()
    unit = cols / cols.norm(dim=1, keepdim=True).clamp(min=1e-30)
    cosines: Tensor = (unit @ unit.T).float()
    return cosines


def logit_lens_tokens(graph: AttributionGraph, nodes: Sequence[int], k: int = TOP_TOKENS) -> list[list[int]]:
    """The ``k`` token ids each feature node's decoder direction promotes most (logit lens through the final norm's
    gain and the unembedding; summed over the layers a CLT feature writes to)."""
    rep = graph.replacement
    gm, tset = rep.model, rep.transcoders
    feats = graph.selected_active_features
    dirs = torch.stack([
        feature_direction(gm, tset.dictionary(int(feats[n, 0])), tset.dictionary_feature(int(feats[n, 0]),
                                                                                           int(feats[n, 2])))
        for n in nodes
    ])
    with resident(gm.model, gm.final_norm):
        dirs = dirs * norm_gain(gm.final_norm).cpu()
    out: list[list[int]] = []
    with resident(gm.model, gm.lm_head), torch.no_grad():
        w_u = gm.lm_head.weight
        for chunk in dirs.split(64):
            logits = chunk.to(w_u.device, w_u.dtype) @ w_u.T
            out += torch.topk(logits.float(), min(k, logits.shape[-1]), dim=-1).indices.cpu().tolist()
    return out


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """``|a ∩ b| / |a ∪ b|`` of two token-id lists (0 for two empty lists)."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


def _components(n: int, links: Sequence[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in links:
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def merged_influence(graph: AttributionGraph, groups: Sequence[Sequence[int]]) -> tuple[Tensor, list[list[int]],
                                                                                          Tensor]:
    """The graph with each of ``groups`` merged into one node (summed edges, internal edges dropped, as
    :func:`~.supernodes.grouped`): ``(influence [n_merged] on the merged graph, members per merged node,
    adjacency [n_merged, n_merged])``. Groups must be disjoint and hold no logit node."""
    of = {m: g for g, ms in enumerate(groups) for m in ms}
    members: list[list[int]] = []
    placed: dict[int, int] = {}
    for i in range(graph.n_nodes):
        g = of.get(i)
        if g is None:
            members.append([i])
        elif g not in placed:
            placed[g] = len(members)
            members.append(sorted(groups[g]))
    assign = torch.zeros(len(members), graph.n_nodes)
    for k, ms in enumerate(members):
        assign[k, ms] = 1.0
    adjacency = assign @ graph.adjacency_matrix.float() @ assign.T
    adjacency.fill_diagonal_(0.0)
    weights = assign @ graph.logit_weights
    return compute_node_influence(adjacency, weights), members, adjacency


def suggest_groups(
    graph: AttributionGraph,
    *,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    by: str = "position",
    layer_band: int = 3,
    min_cosine: float = MIN_COSINE,
    min_token_overlap: float = MIN_TOKEN_OVERLAP,
    min_retention: float = MIN_RETENTION,
    top_tokens: int = TOP_TOKENS,
    max_members: int | None = 12,
) -> GroupSuggestions:
    """Suggest supernodes among the features ``graph.prune(node_threshold, edge_threshold)`` keeps (module
    docstring for the rule, the measures and how the defaults were chosen). Raises GraphError for an unknown
    bucket, thresholds outside [0, 1] (cosine: [-1, 1]) or a ``layer_band`` / ``max_members`` below 1 / 2."""
    if by not in BUCKETS:
        raise GraphError(f"Unknown bucket {by!r}: group features by 'position' or 'layer_band'.")
    if not -1.0 <= float(min_cosine) <= 1.0 or not 0.0 <= float(min_token_overlap) <= 1.0:
        raise GraphError("min_cosine must be in [-1, 1] and min_token_overlap in [0, 1].")
    if not 0.0 <= float(min_retention) <= 1.0:
        raise GraphError("min_retention must be in [0, 1] (the share of its members' influence a group keeps).")
    if int(layer_band) < 1 or (max_members is not None and int(max_members) < 2) or int(top_tokens) < 1:
        raise GraphError("layer_band and top_tokens must be at least 1, max_members at least 2 (or None).")
    kept_mask = graph.prune(node_threshold, edge_threshold).node_mask
    taken = {m for ms in graph.supernodes.values() for m in ms}  # already grouped by the user: left alone
    kept = [n for n in kept_mask[: graph.n_selected].nonzero().flatten().tolist() if n not in taken]
    influence = graph.node_influence()
    feats = graph.selected_active_features
    use_tokens = graph.replacement is not None and min_token_overlap > 0
    tokens = logit_lens_tokens(graph, kept, top_tokens) if use_tokens and kept else [[] for _ in kept]
    cos = edge_cosines(graph.adjacency_matrix, kept) if kept else torch.zeros(0, 0)

    def bucket(n: int) -> int:
        return int(feats[n, 1]) if by == "position" else int(feats[n, 0]) // int(layer_band)

    links = [
        (i, j)
        for i in range(len(kept))
        for j in range(i + 1, len(kept))
        if bucket(kept[i]) == bucket(kept[j])
        and float(cos[i, j]) >= min_cosine
        and (not use_tokens or jaccard(tokens[i], tokens[j]) >= min_token_overlap)
    ]
    groups = []
    for comp in _components(len(kept), links):
        comp.sort(key=lambda i: -float(influence[kept[i]]))
        if max_members is not None:
            comp = comp[: int(max_members)]
        groups.append(comp)
    groups.sort(key=lambda c: -sum(float(influence[kept[i]]) for i in c))

    # Merge every group, leave out those under the retention floor, and measure the rest again (a group's
    # retention depends a little on the others merged beside it) until all keep at least the floor.
    n_linked = len(groups)
    while True:
        member_sets = [[kept[i] for i in comp] for comp in groups]
        merged, members, merged_adj = merged_influence(graph, member_sets)
        index_of = {tuple(ms): k for k, ms in enumerate(members)}
        grouped_influence = [float(merged[index_of[tuple(sorted(ms))]]) for ms in member_sets]
        totals = [float(influence[ms].sum()) for ms in member_sets]
        low = [k for k, (g, t) in enumerate(zip(grouped_influence, totals, strict=True))
               if not (t > 0 and g >= min_retention * t)]
        if not low:
            break
        groups = [comp for k, comp in enumerate(groups) if k not in set(low)]

    if graph.replacement is not None and groups and not use_tokens:  # tokens only to name the groups
        flat = [i for comp in groups for i in comp]
        found = dict(zip(flat, logit_lens_tokens(graph, [kept[i] for i in flat], top_tokens), strict=True))
        tokens = [found.get(i, []) for i in range(len(kept))]
    tok = graph.replacement.model.tokenizer if graph.replacement is not None else None
    suggestions = []
    names: set[str] = set()
    for comp, ms, total, kept_influence in zip(groups, member_sets, totals, grouped_influence, strict=True):
        counts: dict[int, int] = {}
        for i in comp:
            for t in tokens[i]:
                counts[t] = counts.get(t, 0) + 1
        shared_ids = sorted((t for t, c in counts.items() if c >= 2 and 2 * c >= len(comp)), key=lambda t: -counts[t])
        shared = [tok.decode([t]) for t in shared_ids] if tok is not None else []
        summed = graph.adjacency_matrix[:, ms].sum(1)
        target = int(summed.abs().argmax())
        pairs = [float(cos[i, j]) for a, i in enumerate(comp) for j in comp[a + 1:]]
        b = bucket(ms[0])
        name = _name(graph, by, b, int(layer_band), shared, target, float(summed[target]))
        base, k = name, 2
        while name in names:
            name, k = f"{base} ({k})", k + 1
        names.add(name)
        suggestions.append(GroupSuggestion(
            name=name,
            members=ms,
            bucket=(by, b * (1 if by == "position" else int(layer_band))),
            mean_cosine=sum(pairs) / len(pairs),
            shared_tokens=shared,
            influence=total,
            retention=kept_influence / total,
            target=target,
        ))
    summed_total = sum(totals)
    before = graph_scores(graph.adjacency_matrix, graph.logit_weights, graph.token_slice, graph.error_slice)
    after = before if not member_sets else _merged_scores(graph, members, merged_adj)
    return GroupSuggestions(
        suggestions=suggestions,
        settings={"by": by, "layer_band": int(layer_band), "min_cosine": float(min_cosine),
                  "min_token_overlap": float(min_token_overlap), "min_retention": float(min_retention),
                  "top_tokens": int(top_tokens), "max_members": max_members, "node_threshold": node_threshold,
                  "edge_threshold": edge_threshold},
        scores_before=before,
        scores_after=after,
        influence_retained=sum(grouped_influence) / summed_total if summed_total > 0 else float("nan"),
        used_tokens=use_tokens,
        kept=kept,
        dropped=n_linked - len(groups),
    )


def _name(graph: AttributionGraph, by: str, b: int, band: int, shared: list[str], target: int, weight: float) -> str:
    """``pos 5 ' is' → +' Paris'``: the bucket (with the position's token), then the logit-lens token the members
    share, else the node their summed edges reach most (a logit's token, a feature's layer and index) with the
    sign of that summed edge (− when the group suppresses it)."""
    if by == "position":
        strings = graph.input_token_strings or []
        text = strings[b] if b < len(strings) else ""
        where = f"pos {b} {text!r}" if text else f"pos {b}"
    else:
        where = f"L{b * band}-{b * band + band - 1}"
    if shared:
        return f"{where}: {shared[0].strip() or repr(shared[0])}"
    kind, layer, _, feature = graph.node_info(target)
    if kind == "logit":
        j = target - graph.logit_slice.start
        what = repr(graph.logit_token_strings[j]) if graph.logit_token_strings else f"logit {feature}"
    elif kind == "feature":
        what = f"L{layer} #{feature}"
    else:
        what = f"{kind} L{layer}" if kind == "error" else kind
    return f"{where} → {'+' if weight >= 0 else '−'}{what}"


def _merged_scores(graph: AttributionGraph, members: list[list[int]], adjacency: Tensor) -> tuple[float, float]:
    """``(replacement, completeness)`` of the merged graph: token, error and logit nodes are never merged, so
    they keep their order, only shifted by the merged features."""
    first = {ms[0]: k for k, ms in enumerate(members)}
    e0 = first[graph.error_slice.start]
    t0 = first[graph.token_slice.start]
    weights = torch.zeros(len(members))
    for k, ms in enumerate(members):
        weights[k] = graph.logit_weights[ms].sum()
    n_err = graph.error_slice.stop - graph.error_slice.start
    n_tok = graph.token_slice.stop - graph.token_slice.start
    return graph_scores(adjacency, weights, slice(t0, t0 + n_tok), slice(e0, e0 + n_err))
