"""A set of transcoders that replaces a model's MLPs: per-layer (plain or affine skip) transcoders, or one CLT.

Gemma Scope 2 publishes a transcoder for every layer (``transcoder_all/layer_{L}_width_{W}_l0_{S}[_affine]``)
and, for 270M and 1B, cross-layer transcoders (``clt/width_{W}_l0_{S}[_affine]``). Every transcoder reads
``model.layers.{L}.pre_feedforward_layernorm.output`` and writes ``model.layers.{L}.post_feedforward_layernorm
.output``; a CLT feature of layer ``i`` writes to every layer ``j >= i``. This module gathers one such set behind
a per-layer view (encoder of layer ``l``; decoders writing into layer ``j``; ``b_dec``; skip matrix) that the
attribution code reads, whatever the kind. Layers without a transcoder are simply absent (their MLP becomes
an error node). Loading goes through :func:`~gemscope_widgets.backend.dictionaries.loading.load_sae`
(local folders, the Hugging Face cache, offline aware).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gemscope_widgets.backend.dictionaries.compat import check_compatible
from gemscope_widgets.backend.dictionaries.folder import load_sae_folder
from gemscope_widgets.backend.dictionaries.hub import load_sae_from_hub
from gemscope_widgets.backend.dictionaries.sae import CrossLayerTranscoder, JumpReLUSAE
from gemscope_widgets.backend.gemma.names import parse_gemma_name, scope_width_label
from gemscope_widgets.backend.runtime import resolve_device
from gemscope_widgets.errors import SAEModelMismatch, TranscoderSetError

# Decoder layers per Gemma 3 size (the published configs' num_hidden_layers).
GEMMA3_LAYERS = {"270m": 18, "1b": 26, "4b": 34, "12b": 48, "27b": 62}
L0S = ("small", "medium", "big")
TRANSCODER_SITES = ("transcoder_all", "transcoder", "clt")
_READ = "pre_feedforward_layernorm.output"
_WRITE = "post_feedforward_layernorm.output"
_FOLDER = re.compile(r"^layer_(\d+)_width_(\w+?)_l0_(small|medium|big|\d+)(_affine)?(_seed_\d+)?$")


@dataclass(frozen=True)
class LayerDecoder:
    """Decoder of the features of ``source_layer`` into ``target_layer``: ``w_dec [W_source, d]``."""

    source_layer: int
    target_layer: int
    w_dec: Tensor


class TranscoderSet:
    """Per-layer view of a transcoder set (all tensors float32, on the transcoders' device).

    ``layers``: the layers that have features (sorted). For layer ``l`` in ``layers``: ``w_enc(l) [d, W_l]``,
    ``b_enc(l) [W_l]``, ``threshold(l) [W_l]``. For every layer ``j`` the set writes to (``output_layers``):
    ``decoders_into(j)`` (one :class:`LayerDecoder` per source layer ``i <= j``), ``b_dec(j) [d]``,
    ``skip(j) [d, d]`` or None (the affine skip: ``output += x_j @ skip(j)``).

    Feature indices are per layer (``0..W_l-1``), as in circuit-tracer and Neuronpedia's graph ids; for a CLT,
    :meth:`dictionary_feature` maps ``(layer, feature)`` to the CLT's own slot-by-slot numbering.
    """

    def __init__(self, transcoders: JumpReLUSAE | CrossLayerTranscoder | Iterable[JumpReLUSAE], *, scan: Any = None):
        if isinstance(transcoders, CrossLayerTranscoder):
            self.kind = "clt"
            self.clt: CrossLayerTranscoder | None = transcoders
            self.by_layer: dict[int, JumpReLUSAE] = {}
            cfg = transcoders.config
            self.layers = tuple(sorted(cfg.layers_in))
            if list(cfg.layers_in) != list(range(len(cfg.layers_in))):
                raise TranscoderSetError(
                    f"{cfg.name}: a cross-layer transcoder must read layers 0..n-1 in order, got {list(cfg.layers_in)}."
                )
            self.output_layers = tuple(sorted(cfg.layers_out))
            self.width = cfg.width
            self.layer_widths = dict(zip(self.layers, transcoders.slot_widths, strict=True))
            self.affine = cfg.affine
            self.model_name = cfg.model_name
            self.dictionaries: tuple[Any, ...] = (transcoders,)
        else:
            if isinstance(transcoders, JumpReLUSAE):
                transcoders = [transcoders]
            items = list(transcoders)
            if not items:
                raise TranscoderSetError("The transcoder set is empty: pass at least one transcoder.")
            self.kind = "transcoder"
            self.clt = None
            self.by_layer = {}
            for t in items:
                if isinstance(t, CrossLayerTranscoder):
                    raise TranscoderSetError(
                        f"{t.config.name} is a cross-layer transcoder; pass it alone, not inside a list."
                    )
                if not isinstance(t, JumpReLUSAE) or t.config.kind != "transcoder":
                    name = getattr(getattr(t, "config", None), "name", type(t).__name__)
                    kind = getattr(getattr(t, "config", None), "kind", type(t).__name__)
                    raise TranscoderSetError(
                        f"{name} is a {kind}, not a transcoder: attribution graphs need transcoders "
                        "(transcoder_all/… or clt/… folders of Gemma Scope 2)."
                    )
                cfg = t.config
                reads_writes = cfg.hook_in.endswith(_READ) and cfg.hook_out.endswith(_WRITE)
                if not reads_writes or cfg.layers_in != cfg.layers_out:
                    raise TranscoderSetError(
                        f"{cfg.name} reads {cfg.hook_in} and writes {cfg.hook_out}; a transcoder of a set must read "
                        f"model.layers.L.{_READ} and write model.layers.L.{_WRITE} of the same layer."
                    )
                layer = cfg.layer
                if layer in self.by_layer:
                    raise TranscoderSetError(
                        f"Two transcoders for layer {layer}: {self.by_layer[layer].config.name} and {cfg.name}. "
                        "Pass one per layer."
                    )
                self.by_layer[layer] = t
            widths = {t.config.width for t in self.by_layer.values()}
            if len(widths) > 1:
                detail = ", ".join(f"layer {k}: {t.config.width}" for k, t in sorted(self.by_layer.items()))
                raise TranscoderSetError(
                    f"The transcoders have different widths ({detail}). Use one width for the whole set."
                )
            models = {t.config.model_name for t in self.by_layer.values()}
            if len(models) > 1:
                raise TranscoderSetError(
                    f"The transcoders were trained on different models ({sorted(str(m) for m in models)}); "
                    "a set must come from one model."
                )
            self.layers = tuple(sorted(self.by_layer))
            self.output_layers = self.layers
            self.width = widths.pop()
            self.layer_widths = {k: self.width for k in self.layers}
            self.affine = any(t.config.affine for t in self.by_layer.values())
            self.model_name = models.pop()
            self.dictionaries = tuple(self.by_layer[k] for k in self.layers)
        self.d_model = self.dictionaries[0].config.d_in
        self.scan = scan if scan is not None else self._default_scan()

    # ---- identity ---------------------------------------------------------------------------------------------

    def _default_scan(self) -> str | list[str]:
        if self.clt is not None:
            return self.clt.config.name
        return [t.config.name for t in self.dictionaries]

    @property
    def names(self) -> list[str]:
        """The folder names of the set's dictionaries."""
        return [d.config.name for d in self.dictionaries]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        kind = "CLT" if self.clt is not None else ("affine skip-transcoders" if self.affine else "transcoders")
        return (
            f"TranscoderSet({kind}, layers {list(self.layers)}, width {self.width}, d_model {self.d_model}, "
            f"model {self.model_name!r})"
        )

    # ---- per-layer view -----------------------------------------------------------------------------------------

    def _slot(self, key: str, layer: int) -> Tensor:
        assert self.clt is not None
        return self.clt._slot(key, layer)

    def w_enc(self, layer: int) -> Tensor:
        """``[d, W_layer]`` encoder of ``layer``'s features."""
        return self._slot("w_enc", layer) if self.clt is not None else self.by_layer[layer].w_enc.float()

    def b_enc(self, layer: int) -> Tensor:
        return self._slot("b_enc", layer) if self.clt is not None else self.by_layer[layer].b_enc.float()

    def threshold(self, layer: int) -> Tensor:
        return self._slot("threshold", layer) if self.clt is not None else self.by_layer[layer].threshold.float()

    def b_dec(self, layer: int) -> Tensor:
        """``[d]`` decoder bias added to ``layer``'s MLP output (the set must write to ``layer``)."""
        return self._slot("b_dec", layer) if self.clt is not None else self.by_layer[layer].b_dec.float()

    def skip(self, layer: int) -> Tensor | None:
        """``[d, d]`` affine skip matrix of ``layer`` (``out += x @ skip``), or None."""
        if self.clt is not None:
            s = getattr(self.clt, f"affine_skip_connection_{layer}")
            return None if s is None else s.float()
        s = self.by_layer[layer].affine_skip_connection
        return None if s is None else s.float()

    def decoders_into(self, target_layer: int) -> list[LayerDecoder]:
        """Decoders writing into ``target_layer``'s MLP output, one per source layer (``i <= target_layer``)."""
        if self.clt is None:
            if target_layer not in self.by_layer:
                return []
            return [LayerDecoder(target_layer, target_layer, self.by_layer[target_layer].w_dec.float())]
        out = []
        for i in self.layers:
            if i > target_layer:
                break
            off = self.clt._dec_offsets[i]
            w = self._slot("w_dec", i)[:, target_layer - off]
            out.append(LayerDecoder(i, target_layer, w))
        return out

    def target_layers(self, source_layer: int) -> list[int]:
        """The layers a feature of ``source_layer`` writes to."""
        if self.clt is None:
            return [source_layer]
        return [j for j in self.output_layers if j >= source_layer]

    def write_vectors(self, layer: int, features: Tensor) -> dict[int, Tensor]:
        """``{target_layer: [n, d]}`` decoder rows of ``features`` (per-layer indices) of ``layer``."""
        if self.clt is None:
            return {layer: self.by_layer[layer].w_dec[features].float()}
        off = self.clt._dec_offsets[layer]
        w = getattr(self.clt, f"w_dec_{layer}")
        return {j: w[features, j - off].float() for j in self.target_layers(layer)}

    def dictionary(self, layer: int) -> Any:
        """The loaded dictionary holding ``layer``'s features (the CLT itself for a CLT)."""
        return self.clt if self.clt is not None else self.by_layer[layer]

    def dictionary_feature(self, layer: int, feature: int) -> int:
        """The feature's index in :meth:`dictionary` (per-layer index; offset slot by slot for a CLT)."""
        if self.clt is None:
            return int(feature)
        return int(self.clt._starts[layer] + feature)

    @property
    def device(self) -> torch.device:
        device: torch.device = next(iter(self.dictionaries[0].buffers())).device
        return device

    def to(self, device: Any) -> TranscoderSet:
        """Move every dictionary to ``device`` (in place); returns self."""
        for d in self.dictionaries:
            d.to(device)
        return self

    # ---- checks -------------------------------------------------------------------------------------------------

    def check_model(self, gm: Any) -> None:
        """Raise :class:`SAEModelMismatch` when the set cannot run on ``gm`` (model size, d_model, layers)."""
        for d in self.dictionaries:
            check_compatible(gm, d)
        if self.d_model != gm.d_model:
            raise SAEModelMismatch(
                f"The transcoder set reads vectors of size {self.d_model} but {gm.name} has d_model {gm.d_model}."
            )


# ---------------------------------------------------------------------------------------------------------------
# load_transcoders


def _width_label(width: Any) -> str:
    if width is None:
        raise TranscoderSetError(
            "Pass width=… (e.g. '16k', '65k', '262k') to pick a transcoder set from a hub repo."
        )
    if isinstance(width, int):
        return scope_width_label(width)
    return str(width).lower()


def _l0_label(l0: Any) -> str:
    if l0 is None:
        raise TranscoderSetError("Pass l0=… ('small', 'medium' or 'big') to pick a transcoder set from a hub repo.")
    return str(l0).lower()


def _folder_name(layer: int, width: str, l0: str, affine: bool) -> str:
    return f"layer_{layer}_width_{width}_l0_{l0}{'_affine' if affine else ''}"


def _matches(name: str, width: Any, l0: Any, affine: bool | None) -> tuple[int, str] | None:
    m = _FOLDER.match(name)
    if m is None:
        return None
    layer, w, s, aff, seed = m.groups()
    if seed:
        return None  # alternative seeds are picked only by explicit folder
    if width is not None and w != _width_label(width):
        return None
    if l0 is not None and s != _l0_label(l0):
        return None
    if affine is not None and bool(aff) != bool(affine):
        return None
    return int(layer), name


def _local_set(root: Path, site: str, width: Any, l0: Any, affine: bool | None,
               layers: Sequence[int] | None) -> list[Any]:
    if (root / "config.json").is_file():
        return [load_sae_folder(root)]
    only_clt = (root / "clt").is_dir() and not any(_FOLDER.match(q.name) for q in root.iterdir() if q.is_dir())
    if site != "clt" and not (root / site).is_dir() and only_clt:
        site = "clt"  # a root holding only a CLT (clt/width_…): no need to name the site
    base = root / site if (root / site).is_dir() else root
    if site == "clt":
        cands = sorted(p for p in base.iterdir() if p.is_dir() and (p / "config.json").is_file())
        if width is not None:
            cands = [p for p in cands if f"width_{_width_label(width)}" in p.name]
        if l0 is not None:
            cands = [p for p in cands if f"l0_{_l0_label(l0)}" in p.name]
        if affine is not None:
            cands = [p for p in cands if p.name.endswith("_affine") == bool(affine)]
        if len(cands) != 1:
            found = [p.name for p in cands] or "none"
            raise TranscoderSetError(
                f"{base} holds {len(cands)} matching CLT folders ({found}); narrow it with width=, l0=, affine=."
            )
        return [load_sae_folder(cands[0], name=f"clt/{cands[0].name}")]
    per_layer: dict[int, list[str]] = {}
    for p in sorted(base.iterdir()) if base.is_dir() else []:
        if p.is_dir() and (p / "config.json").is_file():
            hit = _matches(p.name, width, l0, affine)
            if hit is not None:
                per_layer.setdefault(hit[0], []).append(hit[1])
    if layers is not None:
        missing = [layer for layer in layers if layer not in per_layer]
        if missing:
            raise TranscoderSetError(
                f"No transcoder folder for layer(s) {missing} under {base} matching width={width!r}, l0={l0!r}, "
                f"affine={affine!r}."
            )
        per_layer = {k: v for k, v in per_layer.items() if k in set(layers)}
    if not per_layer:
        raise TranscoderSetError(
            f"No transcoder folders (layer_L_width_W_l0_S[_affine]) under {base} match width={width!r}, "
            f"l0={l0!r}, affine={affine!r}."
        )
    ambiguous = {k: v for k, v in per_layer.items() if len(v) > 1}
    if ambiguous:
        layer, names = next(iter(sorted(ambiguous.items())))
        raise TranscoderSetError(
            f"Several transcoders match layer {layer} under {base}: {names}. Narrow the choice with width=, l0= "
            "and affine=."
        )
    return [load_sae_folder(base / names[0], name=f"{base.name}/{names[0]}") for _, names in sorted(per_layer.items())]


def _hub_set(repo: str, site: str, width: Any, l0: Any, affine: bool | None,
             layers: Sequence[int] | None) -> list[Any]:
    w, s = _width_label(width), _l0_label(l0)
    aff = bool(affine)
    if site == "clt":
        folder = f"clt/width_{w}_l0_{s}{'_affine' if aff else ''}"
        return [load_sae_from_hub(repo, folder)]
    if layers is None:
        parsed = parse_gemma_name(repo)
        if parsed is None or parsed[1] not in GEMMA3_LAYERS:
            raise TranscoderSetError(
                f"Cannot tell how many layers {repo!r} covers; pass layers=range(n_layers)."
            )
        layers = range(GEMMA3_LAYERS[parsed[1]])
    return [load_sae_from_hub(repo, f"{site}/{_folder_name(layer, w, s, aff)}") for layer in layers]


def load_transcoders(
    repo_or_folder: str | os.PathLike[str] | Sequence[Any] | Any,
    site: str = "transcoder_all",
    *,
    width: str | int | None = None,
    l0: str | None = None,
    affine: bool | None = None,
    layers: Iterable[int] | None = None,
    device: Any = None,
) -> TranscoderSet:
    """Load a Gemma Scope 2 transcoder set: one transcoder per layer (plain or affine skip) or one CLT.

    ``repo_or_folder``:
      * a hub repo (``"google/gemma-scope-2-1b-pt"``): ``site`` ``"transcoder_all"`` (or ``"transcoder"``) loads
        ``{site}/layer_{L}_width_{width}_l0_{l0}[_affine]`` for every layer (or ``layers``); ``site="clt"`` loads
        ``clt/width_{width}_l0_{l0}[_affine]``. ``width`` ("16k", "65k", "262k", or an int) and ``l0``
        ("small", "medium", "big") are required; ``affine`` defaults to False. Files come from the Hugging Face
        cache (``HF_HUB_OFFLINE`` respected; a missing file's error gives the ``hf download`` command).
      * a local folder: one Gemma Scope 2 folder (a CLT, or a single transcoder), or a root holding
        ``{site}/layer_…`` folders (or ``layer_…`` folders directly), or a root holding only ``clt/width_…``
        folders; ``width``/``l0``/``affine`` filter, and more than one match for a layer is an error.
      * already loaded dictionaries: a list of transcoders or a ``CrossLayerTranscoder``.

    ``layers`` restricts the set to some layers (the others become error nodes in a graph).

    Raises :class:`TranscoderSetError` (a :class:`~gemscope_widgets.errors.SAELoadError`) for a non-transcoder,
    duplicate layers, mixed widths or models, or missing folders; loading errors of ``load_sae`` pass through.
    Check against a model with ``TranscoderSet.check_model(gm)`` (``attribute`` does).
    """
    layer_list = None if layers is None else sorted({int(x) for x in layers})
    if site not in TRANSCODER_SITES:
        raise TranscoderSetError(f"site={site!r} is not a transcoder site; use one of {TRANSCODER_SITES}.")
    if isinstance(repo_or_folder, TranscoderSet):
        tset = repo_or_folder
    elif isinstance(repo_or_folder, (JumpReLUSAE, CrossLayerTranscoder)):
        tset = TranscoderSet(repo_or_folder)
    elif isinstance(repo_or_folder, Sequence) and not isinstance(repo_or_folder, (str, bytes)):
        items: list[Any] = [*repo_or_folder]
        tset = TranscoderSet(items)
    else:
        text = os.fsdecode(repo_or_folder)
        local = Path(text).expanduser()
        if local.exists():
            dicts = _local_set(local, site, width, l0, affine, layer_list)
        elif re.fullmatch(r"[\w.-]+/[\w.-]+", text):
            dicts = _hub_set(text, site, width, l0, affine, layer_list)
        else:
            raise TranscoderSetError(
                f"{text!r} is neither a local folder nor a hub repo id such as 'google/gemma-scope-2-270m-pt'."
            )
        tset = TranscoderSet(dicts[0] if len(dicts) == 1 and isinstance(dicts[0], CrossLayerTranscoder) else dicts)
    if layer_list is not None and tset.clt is None:
        extra = [layer for layer in tset.layers if layer not in layer_list]
        if extra:
            tset = TranscoderSet([tset.by_layer[k] for k in tset.layers if k in layer_list], scan=None)
    if device is not None:
        tset.to(resolve_device(device, error=TranscoderSetError))
    return tset
