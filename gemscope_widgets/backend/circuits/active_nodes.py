"""The source nodes of one prompt in an attribution graph, and the input directions of its feature targets.

Method: "Circuit Tracing: Revealing Computational Graphs in Language Models" (Ameisen et al., 2025); the node kinds
and their order follow circuit-tracer 0.5.0 (``circuit_tracer/attribution/attribute.py``): active transcoder
features (JumpReLU on the captured MLP inputs, none at the zeroed leading positions), error nodes (each MLP output
minus the transcoder's reconstruction, per layer and position), the constant part of each MLP output (``b_dec``, and
the whole output at zeroed positions), and token nodes (the scaled embeddings). Used by :mod:`.attribution`
(rows of the graph), :mod:`.qk` and :mod:`.head_loadings` (the same sources re-made for a graph's prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gemscope_widgets.backend.circuits.replacement import FrozenForward
from gemscope_widgets.backend.circuits.transcoder_set import TranscoderSet


@dataclass
class ActiveNodes:
    """The sources of one prompt's attribution graph (``n`` active features, ``L`` layers, ``T`` positions).

    ``active [n, 3]`` (layer, pos, feature) in layer order, then position, then feature; ``values [n]`` their
    activations, ``pre [n]`` their pre-activations, ``b_enc [n]`` their encoder biases. ``writers[j]`` lists, for
    output layer ``j``, ``(pos, cols [k], vectors [k, d])``: the columns of the features writing at ``pos`` and what
    each writes (``activation × decoder row``). ``err [L, T, d]`` error vectors (zero at zeroed positions),
    ``const [L, T, d]`` the constant part of each MLP output, ``tok [T, d]`` the token nodes' vectors (the scaled
    embeddings), ``skip`` each layer's skip matrix ``[d, d]`` where the transcoder has one. Tensors of ``active``,
    ``values``, ``pre`` and ``b_enc`` are on the CPU, the others on the model's device.
    """

    active: Tensor  # [n, 3] (layer, pos, feature)
    values: Tensor  # [n]
    pre: Tensor  # [n] pre-activations
    b_enc: Tensor  # [n]
    writers: dict[int, list[tuple[int, Tensor, Tensor]]]  # target layer -> [(pos, cols, vectors [k, d])]
    err: Tensor  # [L, T, d]
    const: Tensor  # [L, T, d]
    tok: Tensor  # [T, d]
    skip: dict[int, Tensor]  # layer -> [d, d]

    @property
    def n_active(self) -> int:
        return int(self.active.shape[0])


def active_nodes(fwd: FrozenForward, tset: TranscoderSet, n_zero: int, device: torch.device) -> ActiveNodes:
    """The sources of the prompt captured in ``fwd`` (a :func:`~.replacement.capture_forward`; ``fwd.x [L, T, d]``).

    ``n_zero`` leading positions (``<bos>``, see :func:`~.replacement.zero_positions`) get no features and no
    error: their MLP outputs are constants. Work runs on ``device``; see :class:`ActiveNodes` for the shapes.
    """
    n_layers, n_pos, d = fwd.x.shape
    rows, values, pres, b_encs = [], [], [], []
    per_layer: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # layer -> (positions, features, activations)
    for layer in tset.layers:
        w_enc = tset.w_enc(layer).to(device)
        b_enc = tset.b_enc(layer).to(device)
        pre = fwd.x[layer] @ w_enc + b_enc  # [T, W]
        acts = torch.relu(pre) * (pre > tset.threshold(layer).to(device))
        acts[:n_zero] = 0
        pos, feat = acts.nonzero(as_tuple=True)
        per_layer[layer] = (pos, feat, acts[pos, feat])
        rows.append(torch.stack([torch.full_like(pos, layer), pos, feat], 1))
        values.append(acts[pos, feat])
        pres.append(pre[pos, feat])
        b_encs.append(b_enc[feat])
    empty = torch.zeros(0, device=device)
    active = torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long, device=device)
    # Reconstruction, errors and constants per layer the MLP output of which is (partly) explained.
    err = fwd.mlp_out.clone()
    const = torch.zeros_like(err)
    skips: dict[int, Tensor] = {}
    writers: dict[int, list[tuple[int, Tensor, Tensor]]] = {}
    offsets, start = {}, 0
    for layer in tset.layers:
        offsets[layer] = start
        start += len(per_layer[layer][0])
    for j in tset.output_layers:
        recon = tset.b_dec(j).to(device).expand(n_pos, d).clone()
        skip = tset.skip(j)
        if skip is not None:
            skips[j] = skip.to(device)
            recon = recon + fwd.x[j] @ skips[j]
        cols_all, pos_all, vec_all = [], [], []
        for i in tset.layers:
            if j not in tset.target_layers(i):
                continue
            pos, feat, act = per_layer[i]
            if not len(pos):
                continue
            vec = act[:, None] * tset.write_vectors(i, feat)[j].to(device)
            recon.index_add_(0, pos, vec)
            cols_all.append(torch.arange(len(pos), device=device) + offsets[i])
            pos_all.append(pos)
            vec_all.append(vec)
        err[j] = fwd.mlp_out[j] - recon
        const[j] = tset.b_dec(j).to(device)
        if n_zero:
            skip_part = fwd.x[j, :n_zero] @ skips[j] if skip is not None else 0.0
            const[j, :n_zero] = fwd.mlp_out[j, :n_zero] - skip_part
        if cols_all:
            # One copy ordered by position (stable: each position keeps its column order), split into views.
            pos = torch.cat(pos_all)
            order = torch.argsort(pos, stable=True)
            cols, pos = torch.cat(cols_all)[order], pos[order]
            vec = torch.cat(vec_all)[order]
            vec_all.clear()
            where, counts = torch.unique_consecutive(pos, return_counts=True)
            sizes = counts.tolist()
            writers[j] = list(zip(where.tolist(), cols.split(sizes), vec.split(sizes)))
    # Layers without a transcoder: the whole MLP output is the error node (a constant at zeroed positions).
    for j in range(n_layers):
        if j not in tset.output_layers and n_zero:
            const[j, :n_zero] = fwd.mlp_out[j, :n_zero]
    err[:, :n_zero] = 0
    return ActiveNodes(
        active=active.cpu(),
        values=torch.cat(values).cpu() if values else empty.cpu(),
        pre=torch.cat(pres).cpu() if pres else empty.cpu(),
        b_enc=torch.cat(b_encs).cpu() if b_encs else empty.cpu(),
        writers=writers,
        err=err,
        const=const,
        tok=fwd.r_pre[0],
        skip=skips,
    )


def input_directions(fwd: FrozenForward, tset: TranscoderSet, active: Tensor, device: torch.device) -> Tensor:
    """Input directions ``[n, d]`` (on ``device``) at ``r_mid`` of the features ``active [n, 3]`` (layer, pos,
    feature): ``s_pf[l, pos] * w_enc[:, f]``, the pre-MLP norm scale times the encoder column, so that a feature's
    pre-activation is its direction dotted with ``r_mid`` plus ``b_enc``. Made per batch of targets rather than held
    for every active feature."""
    out = torch.empty(len(active), fwd.x.shape[-1], device=device)
    layer_of = active[:, 0]
    for layer in layer_of.unique().tolist():
        m = layer_of == layer
        pos, feat = active[m, 1].to(device), active[m, 2].to(device)
        out[m.to(device)] = fwd.s_pf[layer, pos] * tset.w_enc(layer).to(device)[:, feat].T
    return out
