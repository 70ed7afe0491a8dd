"""``attribute``: the attribution graph of a prompt, from a Gemma 3 model and a transcoder set.

Method: "Circuit Tracing: Revealing Computational Graphs in Language Models" (Ameisen et al., 2025); the
algorithm and its defaults follow circuit-tracer 0.5.0 (``circuit_tracer/attribution/attribute.py``):

1. One forward pass of the real model captures what the local replacement model freezes (attention patterns,
   every RMSNorm scale) and each MLP's input and output (:mod:`.replacement`).
2. Active transcoder features (JumpReLU on the captured MLP inputs; none at ``<bos>``), error nodes (MLP output
   minus the transcoder's reconstruction, per layer and position), token nodes (the scaled embeddings), and logit
   nodes (the most likely next tokens until ``logit_probability`` of the mass, at most ``max_logits``; their
   direction is the unembedding row minus the mean row, so a logit node's input is ``logit - mean(logits)``).
   Feature, error and token nodes are made in :mod:`.active_nodes`.
3. Edges are direct effects: a target's input direction (a feature's encoder column at its layer and position,
   a logit's demeaned unembedding at the last position) is injected as a gradient and pulled back through the
   frozen linear model, layer by layer, in batches of targets; each source's edge is that gradient at its write
   site dotted with its output vector (``activation × decoder row``, summed over the layers a CLT feature writes
   to; the error vector; the token embedding). The pull-back is the transpose of the frozen map written out
   (no autograd), restricted to the layers below and the positions up to each batch's targets.
4. Feature rows are computed for the features with the largest influence on the logits, re-ranked as rows
   arrive, until ``max_feature_nodes`` (circuit-tracer's incremental selection).

Memory is estimated from the prompt length before any work and checked again with the exact number of active
features before the rows (:mod:`.attribution_memory`); a prompt that would not fit is refused with settings
that would. After an error or an interrupt no buffer stays held by the traceback.

The part of each target's input that comes from constants (``b_enc``, every ``b_dec`` upstream, the MLP outputs
at positions without nodes) is returned as ``bias_input``, so each row plus its bias equals the target's input.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gemscope_widgets.backend.circuits.active_nodes import ActiveNodes, active_nodes, input_directions
from gemscope_widgets.backend.circuits.attribution_memory import (
    RANKING_CHUNK_BYTES,
    AttributionMemory,
    check_fits,
    estimate_attribution_memory,
    with_active,
)
from gemscope_widgets.backend.circuits.graph import AttributionGraph
from gemscope_widgets.backend.circuits.replacement import (
    FrozenForward,
    Replacement,
    capture_forward,
    zero_positions,
)
from gemscope_widgets.backend.circuits.targets import resolve_targets
from gemscope_widgets.backend.circuits.transcoder_set import TranscoderSet, load_transcoders
from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.backend.memory import available_memory, format_bytes, released_on_error, return_freed_memory
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.errors import AttributionError

DEFAULT_MAX_FEATURE_NODES = 4096


def pull_back(
    fwd: FrozenForward, nodes: ActiveNodes, layers: Tensor, positions: Tensor, inject: Tensor, n_cols: int
) -> tuple[Tensor, Tensor]:
    """Rows ``[B, n_cols]`` (direct effects on each target) and constant parts ``[B]`` for a batch of targets.

    Step 3 of the method (Ameisen et al., 2025; see the module docstring): each target's input direction is
    injected as a gradient and pulled back through the frozen linear model ``fwd`` (attention patterns and norm
    scales fixed), layer by layer, as the transpose of the frozen map written out (no autograd); each source's
    edge is that gradient at its write site dotted with its output vector (``nodes``: feature writers, error and
    token vectors). ``layers[b]`` is the target's layer (``n_layers`` for a logit, injected at the final norm's
    input), ``positions[b]`` its position, ``inject[b] [d]`` its input direction at that residual point; ``n_cols``
    the row width (features, then ``n_layers × n_pos`` errors, then ``n_pos`` tokens). Only layers below each
    target and positions up to the batch's last target are visited. Each row plus its constant part equals the
    target's input.
    """
    n_layers, n_pos, d = fwd.x.shape
    device = inject.device
    b = len(layers)
    p = int(positions.max()) + 1
    top = int(layers.max())
    g = torch.zeros(b, p, d, device=device)
    rows = torch.zeros(b, n_cols, device=device)
    bias = torch.zeros(b, device=device)
    bidx = torch.arange(b, device=device)
    n_active = nodes.n_active
    mask = layers == n_layers
    if mask.any():
        g[bidx[mask], positions[mask]] += inject[mask]
    for layer in range(min(top, n_layers - 1), -1, -1):
        if layer < top:
            # g is the gradient at this layer's output (its MLP output adds straight into the residual).
            for pos, cols, vecs in nodes.writers.get(layer, ()):
                if pos < p:
                    rows[:, cols] += g[:, pos] @ vecs.T
            e0 = n_active + layer * n_pos
            rows[:, e0 : e0 + p] = torch.einsum("bpd,pd->bp", g, nodes.err[layer, :p])
            bias += torch.einsum("bpd,pd->b", g, nodes.const[layer, :p])
            skip = nodes.skip.get(layer)
            if skip is not None:
                g += fwd.s_pf[layer, :p] * (g @ skip.T)
        mask = layers == layer
        if mask.any():
            g[bidx[mask], positions[mask]] += inject[mask]
        g += fwd.attention_backward(layer, g)
    t0 = n_active + n_layers * n_pos
    rows[:, t0 : t0 + p] = torch.einsum("bpd,pd->bp", g, nodes.tok[:p])
    return rows, bias


def compute_partial_influences(edge_matrix: Tensor, logit_p: Tensor, row_to_node_index: Tensor,
                               max_iter: int = 128) -> Tensor:
    """Influence of every node on the logits from the rows computed so far (circuit-tracer's function).

    The row-normalised ``|edge_matrix|`` is made once when it takes at most ``RANKING_CHUNK_BYTES``. A larger
    matrix is not copied: each step takes ``|rows|`` chunk by chunk into one reused buffer of that size and
    weights them by the inverse row sums, ``(w / Σ|row|) @ |rows|`` (equal to 1e-6 relative; about 1.5× the
    whole copy's time on 2 CPU threads, and 64 MB instead of the matrix's size: 517 MB at 64 tokens).
    """
    n_rows, n_cols = edge_matrix.shape
    step = max(1, RANKING_CHUNK_BYTES // max(1, 4 * n_cols))
    if step >= n_rows:
        whole = edge_matrix.abs()
        whole /= whole.sum(dim=1, keepdim=True).clamp(min=1e-8)

        def apply(weights: Tensor) -> Tensor:
            return weights @ whole
    else:
        buffer = torch.empty(step, n_cols)
        chunks = [(a, min(a + step, n_rows)) for a in range(0, n_rows, step)]
        row_sums = torch.empty(n_rows)
        for a, b in chunks:
            row_sums[a:b] = torch.abs(edge_matrix[a:b], out=buffer[: b - a]).sum(dim=1)
        inverse = 1.0 / row_sums.clamp(min=1e-8)

        def apply(weights: Tensor) -> Tensor:
            scaled = weights * inverse
            out = torch.zeros(n_cols)
            for a, b in chunks:
                out.addmv_(torch.abs(edge_matrix[a:b], out=buffer[: b - a]).T, scaled[a:b])
            return out

    influences = torch.zeros(n_cols)
    prod = torch.zeros(n_cols)
    prod[-len(logit_p) :] = logit_p
    for _ in range(max_iter):
        prod = apply(prod[row_to_node_index])
        if not prod.any():
            break
        influences += prod
    else:
        raise AttributionError("Influence ranking failed to converge.")
    return influences


def _cost_order(layers: Tensor, positions: Tensor, batch_size: int, n_layers: int) -> Tensor:
    # A batch costs about (its highest layer) x (its last position): group a few layers, then sort by position.
    n = len(layers)
    chunk = max(1, math.ceil(4 * batch_size * n_layers / max(n, 1)))
    key = (layers // chunk) * (10**9) + positions * 1000 + layers
    return torch.argsort(key, stable=True)


def _as_ids(gm: Any, prompt: Any) -> tuple[Tensor, str]:
    """The prompt's ids by the one prompt rule (text, chat messages or token ids; one leading ``<bos>``)."""
    p = gm.prompt(prompt)
    text = p.source if isinstance(p.source, str) else gm.tokenizer.decode(p.input_ids.tolist())
    return p.input_ids, text


def attribute(
    model: Any,
    transcoders: Any,
    prompt: Any,
    *,
    max_logits: int = 10,
    logit_probability: float = 0.95,
    targets: Sequence[Any] | None = None,
    max_feature_nodes: int | None = DEFAULT_MAX_FEATURE_NODES,
    batch_size: int = 256,
    update_interval: int = 4,
    memory_budget: int | None = None,
    progress: bool = True,
) -> AttributionGraph:
    """Build the attribution graph of ``prompt``'s next-token prediction (see the module docstring).

    Args:
        model: a :class:`~gemscope_widgets.backend.gemma.model.GemmaModel` (any Gemma 3 size or class).
        transcoders: a :class:`TranscoderSet`, or anything :func:`load_transcoders` accepts (a list of per-layer
            transcoders, a CLT, a folder). A partial set is fine: layers without one are pure error nodes.
        prompt: text, chat messages, or token ids ``[T]`` (``<bos>`` first).
        max_logits / logit_probability: logit nodes are the most likely next tokens until their probabilities
            sum to ``logit_probability``, at most ``max_logits`` (circuit-tracer's ``max_n_logits`` /
            ``desired_logit_prob``).
        targets: what to explain instead of the top logits: tokens (``" Paris"`` or ids) and ``(label, vector)``
            directions such as :func:`~.targets.logit_difference` (``" Paris" − " Rome"``); see :mod:`.targets`.
        max_feature_nodes: how many active features get rows (by influence on the logits); None for all.
        batch_size: targets per pull-back; memory ``~ batch_size × T × d_model × 4`` bytes a few times over.
        update_interval: batches between re-rankings of the pending features (circuit-tracer's default 4).
        memory_budget: bytes the call may use (default: the memory available now, see
            :func:`~gemscope_widgets.backend.memory.available_memory`). The estimate
            (:func:`~.attribution_memory.estimate_attribution_memory`) is checked before the forward pass and again
            with the exact number of active features before the rows, and shown with the progress bar.
        progress: a tqdm bar over feature rows.

    Returns:
        An :class:`AttributionGraph` (unpruned; ``graph.prune()`` gives node/edge masks). Its ``bias_input`` and
        ``node_inputs`` satisfy ``adjacency_matrix.sum(1) + bias_input == node_inputs`` on feature and logit rows.

    Raises:
        SAEModelMismatch: the set was trained for another model (size, width, depth).
        TranscoderSetError: the set itself is malformed (see :func:`load_transcoders`).
        AttributionError: bad numeric arguments. PromptError: an empty or too long prompt.
        AttributionMemoryError: the estimate exceeds ``memory_budget``; the message names a shorter prompt, a
            ``max_feature_nodes`` or a ``batch_size`` that fits.
    """
    if int(batch_size) < 1:
        raise AttributionError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if int(max_logits) < 1:
        raise AttributionError(f"max_logits must be at least 1, got {max_logits!r}.")
    if not 0.0 < float(logit_probability) <= 1.0:
        raise AttributionError(f"logit_probability must be in (0, 1], got {logit_probability!r}.")
    if max_feature_nodes is not None and int(max_feature_nodes) < 0:
        raise AttributionError(f"max_feature_nodes must be >= 0 or None, got {max_feature_nodes!r}.")
    with released_on_error():  # an interrupt leaves no buffer held by the notebook's last traceback
        return _attribute(
            model, transcoders, prompt, max_logits=max_logits, logit_probability=logit_probability, targets=targets,
            max_feature_nodes=max_feature_nodes, batch_size=int(batch_size), update_interval=update_interval,
            memory_budget=memory_budget, progress=progress,
        )


def _attribute(
    gm: Any,
    transcoders: Any,
    prompt: Any,
    *,
    max_logits: int,
    logit_probability: float,
    targets: Sequence[Any] | None,
    max_feature_nodes: int | None,
    batch_size: int,
    update_interval: int,
    memory_budget: int | None,
    progress: bool,
) -> AttributionGraph:
    t_start = time.perf_counter()
    tset = transcoders if isinstance(transcoders, TranscoderSet) else load_transcoders(transcoders)
    tset.check_model(gm)
    ids, text = _as_ids(gm, prompt)
    n_zero = zero_positions(gm, ids)
    device = gm.device
    budget = memory_budget if memory_budget is not None else available_memory()
    est = estimate_attribution_memory(
        gm, tset, len(ids), max_feature_nodes=max_feature_nodes, batch_size=batch_size, max_logits=max_logits
    )
    if budget is not None:
        check_fits(gm, tset, est, budget, max_feature_nodes=max_feature_nodes)
    with torch.no_grad():
        fwd = capture_forward(gm, ids)
        nodes = active_nodes(fwd, tset, n_zero, device)
        est = with_active(est, gm, tset, nodes.n_active, max_feature_nodes)
        if budget is not None:
            check_fits(gm, tset, est, budget, max_feature_nodes=max_feature_nodes)
        chosen = resolve_targets(gm, fwd, targets, max_logits, logit_probability)
        logit_ids, logit_probs, logit_vecs, logit_inputs = chosen.ids, chosen.weights, chosen.vecs, chosen.inputs
        t_setup = time.perf_counter()
        n_layers, n_pos, _ = fwd.x.shape
        n_active = nodes.n_active
        n_logits = len(logit_ids)
        logit_offset = n_active + (n_layers + 1) * n_pos
        total = logit_offset + n_logits
        n_feat = n_active if max_feature_nodes is None else min(int(max_feature_nodes), n_active)
        edge = torch.zeros(n_feat + n_logits, total)
        row_bias = torch.zeros(n_feat + n_logits)
        row_to_node = torch.zeros(n_feat + n_logits, dtype=torch.long)
        rows, bias = pull_back(
            fwd,
            nodes,
            torch.full((n_logits,), n_layers, device=device),
            torch.full((n_logits,), n_pos - 1, device=device),
            fwd.s_final[n_pos - 1] * logit_vecs,
            logit_offset,
        )
        edge[:n_logits, :logit_offset] = rows.cpu()
        row_bias[:n_logits] = bias.cpu()
        row_to_node[:n_logits] = torch.arange(n_logits) + logit_offset
        st = n_logits
        visited = torch.zeros(n_active, dtype=torch.bool)
        n_visited = 0
        feat_layers, feat_pos = nodes.active[:, 0], nodes.active[:, 1]
        bar = progress_bar(total=n_feat, desc=_bar_desc(est, budget), disable=not progress, leave=False)
        try:
            while n_visited < n_feat:
                if n_feat == n_active:
                    pending = torch.arange(n_active)
                else:
                    influence = compute_partial_influences(edge[:st], logit_probs, row_to_node[:st])
                    rank = torch.argsort(influence[:n_active], descending=True)
                    queue = min(update_interval * batch_size, n_feat - n_visited)
                    pending = rank[~visited[rank]][:queue]
                pending = pending[_cost_order(feat_layers[pending], feat_pos[pending], batch_size, n_layers)]
                for start in range(0, len(pending), batch_size):
                    idx = pending[start : start + batch_size]
                    rows, bias = pull_back(
                        fwd,
                        nodes,
                        feat_layers[idx].to(device),
                        feat_pos[idx].to(device),
                        input_directions(fwd, tset, nodes.active[idx], device),
                        logit_offset,
                    )
                    end = st + len(idx)
                    edge[st:end, :logit_offset] = rows.cpu()
                    row_bias[st:end] = bias.cpu() + nodes.b_enc[idx]
                    row_to_node[st:end] = idx
                    visited[idx] = True
                    st = end
                    n_visited += len(idx)
                    bar.update(len(idx))
                    del rows, bias
                    return_freed_memory()  # the pull-back's temporaries, so the heap does not grow batch by batch
        finally:
            bar.close()
    t_rows = time.perf_counter()

    selected = torch.where(visited)[0]
    row_unselected = torch.zeros(n_feat + n_logits)
    if n_feat < n_active:
        unvisited = ~visited
        step = max(1, RANKING_CHUNK_BYTES // max(1, 4 * n_active))  # no full copy of the unselected columns
        row_unselected = torch.cat(
            [edge[a : a + step, :n_active][:, unvisited].sum(1) for a in range(0, edge.shape[0], step)]
        )
        keep_cols = torch.cat([selected, torch.arange(n_active, total)])
        edge = edge[:, keep_cols]
    order = row_to_node.argsort()
    edge, row_bias, row_unselected = edge[order], row_bias[order], row_unselected[order]
    n_nodes = edge.shape[1]
    adjacency = torch.zeros(n_nodes, n_nodes)
    adjacency[:n_feat] = edge[:n_feat]
    adjacency[n_nodes - n_logits :] = edge[n_feat:]
    bias_input = torch.zeros(n_nodes)
    bias_input[:n_feat] = row_bias[:n_feat]
    bias_input[n_nodes - n_logits :] = row_bias[n_feat:]
    unselected_input = torch.zeros(n_nodes)
    unselected_input[:n_feat] = row_unselected[:n_feat]
    unselected_input[n_nodes - n_logits :] = row_unselected[n_feat:]
    node_inputs = torch.zeros(n_nodes)
    node_inputs[:n_feat] = nodes.pre[selected]
    node_inputs[n_nodes - n_logits :] = logit_inputs

    graph = AttributionGraph(
        input_string=text,
        input_tokens=ids.cpu(),
        active_features=nodes.active,
        activation_values=nodes.values,
        selected_features=selected,
        adjacency_matrix=adjacency,
        logit_tokens=logit_ids,
        logit_probabilities=logit_probs,
        bias_input=bias_input,
        n_layers=n_layers,
        node_inputs=node_inputs,
        unselected_input=unselected_input,
        input_token_strings=token_strings(gm.tokenizer, ids.tolist()),
        logit_token_strings=chosen.labels,
        model_name=str(gm.name),
        scan=tset.scan,
        info={
            "transcoders": repr(tset),
            "transcoder_layers": list(tset.layers),
            "transcoder_kind": tset.kind,
            "zero_positions": n_zero,
            "n_active": n_active,
            "max_feature_nodes": max_feature_nodes,
            "memory_estimate_bytes": est.total_bytes,
            "batch_size": int(batch_size),
            "seconds": {
                "setup": round(t_setup - t_start, 3),
                "rows": round(t_rows - t_setup, 3),
                "total": round(time.perf_counter() - t_start, 3),
            },
        },
    )
    graph.replacement = Replacement(gm, tset, n_zero, target_vectors=chosen.vecs.detach().cpu())
    return graph


def _bar_desc(est: AttributionMemory, budget: int | None) -> str:
    """The rows bar's label: the memory estimate, and the budget it was checked against."""
    of = f" of {format_bytes(budget)} free" if budget is not None else ""
    return f"Attribution rows (memory {est}{of})"
