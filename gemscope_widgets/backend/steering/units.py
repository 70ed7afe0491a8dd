"""Strength units: what ``1×`` on a steering slider means, the same for every prompt and every session.

A feature's unit is a high quantile of its **non-zero** activations over a fixed corpus sample: by default the
0.99 quantile (``p99``) over the first :data:`UNIT_TOKENS` tokens of the package's offline default corpus
(:func:`~gemscope_widgets.backend.stats.corpus.default_corpus`, documents of at most :data:`UNIT_DOC_TOKENS`
tokens, ``<bos>``/``<pad>`` positions left out by the heatmap's own rule). It is computed once per (model, SAE)
for all features in one batched pass and cached on disk (``cache_dir("units")``, safetensors + JSON, keyed by
the model's and the SAE's identity and by the sample), so it depends neither on the prompt nor on whether a
corpus scan has finished. A high quantile rather than the maximum: the maximum of a sample is a single outlier
that moves with the sample; p99 is where the feature's strong activations sit. A feature that never fires on
the sample gets the site-norm unit: the median norm of the activation at its write site(s) over the same tokens
divided by ``|w_dec[f]|``, so that ``1×`` adds a vector as long as a typical activation there.

Directions (:class:`~gemscope_widgets.backend.steering.spec.DirectionSpec`): ablation strengths are fractions
(unit 1); an added direction's unit is the length of the vector it was given as (for a difference-of-means
direction, the norm of the mean difference, so ``1×`` adds the whole difference, as Arditi et al. 2024 do).

``unit="typical"`` (the default of every entry point: ``generate``, ``next_token_probs``, ``Scope.generate``,
``Scope.steer``, ``Scope.chat``) reads a strength as a multiple of these units; ``unit="raw"`` takes it as it is
(activation or residual-stream units). :func:`strength_unit` is the one function every caller uses and
:func:`to_raw` the one conversion.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.dictionaries.base import stack_slots
from gemscope_widgets.backend.gemma.capture import capture
from gemscope_widgets.backend.gemma.prompts import masked_ids
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.stats.corpus import default_corpus, pad_batch, plan_batches, tokenize_docs
from gemscope_widgets.backend.stats.store import model_identity, sae_identity
from gemscope_widgets.backend.steering.spec import UNITS as UNITS  # re-exported: the units are defined in spec
from gemscope_widgets.backend.steering.spec import DirectionSpec, Spec, SteeringSpec, check_unit
from gemscope_widgets.cache import cache_dir, file_lock, key_digest, name_slug
from gemscope_widgets.errors import SteeringError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

UNIT_QUANTILE = 0.99
"""The quantile of a feature's non-zero activations over the sample that is its ``1×``."""
UNIT_TOKENS = 16_384
"""How many (non-``<bos>``) corpus tokens the unit sample holds."""
UNIT_DOC_TOKENS = 256
"""Documents of the sample are cut to this many tokens."""
_FORMAT = 1
_MAX_PAIRS = 64_000_000  # (token, feature) activations kept for the exact quantile: 512 MB; stop early beyond
_ACT_BUDGET = 1 << 25  # floats of encoded activations alive at once


@dataclass(frozen=True)
class StrengthUnit:
    """How many raw units one ``1×`` is, and where that number came from (shown beside every slider)."""

    value: float
    source: str
    kind: str  # "quantile", "site norm", "length", "fraction" or "raw"


RAW = StrengthUnit(1.0, "raw", "raw")


@dataclass
class FeatureUnits:
    """The units of every feature of one (model, SAE), from one pass over the fixed corpus sample.

    ``quantile_values [W]``: the ``quantile`` of each feature's non-zero activations (0 where it never fired);
    ``n_nonzero [W]``: how many sample tokens it fired on; ``site_norm``: median activation norm per write
    hook point over the sample; ``n_tokens``: tokens in the sample.
    """

    quantile_values: torch.Tensor
    n_nonzero: torch.Tensor
    site_norm: dict[str, float]
    n_tokens: int
    quantile: float
    key: dict[str, Any]

    def unit(self, sae: Any, feature: int) -> StrengthUnit:
        """The unit of ``feature`` of ``sae`` (the SAE these units were computed for)."""
        f = sae.check_feature(feature)
        value = float(self.quantile_values[f])
        if value > 0:
            return StrengthUnit(value, f"p{_percent(self.quantile)} of non-zero activations over "
                                f"{self.n_tokens:,} corpus tokens", "quantile")
        norms = [self.site_norm[hp] / max(float(d.float().norm()), 1e-12)
                 for hp, d in sae.write_directions(f).items() if hp in self.site_norm]
        if not norms or not sum(norms) > 0:
            return RAW
        return StrengthUnit(sum(norms) / len(norms), f"site norm (never fired in {self.n_tokens:,} corpus tokens)",
                            "site norm")

    def save(self, path: Path) -> None:
        """``path.safetensors`` (the tensors) and ``path.json`` (everything else), each written atomically."""
        from safetensors.torch import save_file

        tmp = path.with_suffix(".safetensors.tmp")
        save_file({"quantile_values": self.quantile_values.contiguous(), "n_nonzero": self.n_nonzero.contiguous()},
                  str(tmp))
        tmp.replace(path.with_suffix(".safetensors"))
        meta = {"key": self.key, "site_norm": self.site_norm, "n_tokens": self.n_tokens, "quantile": self.quantile}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, sort_keys=True))
        tmp.replace(path.with_suffix(".json"))

    @classmethod
    def load(cls, path: Path, key: dict[str, Any], width: int) -> FeatureUnits | None:
        """The units saved at ``path`` if they are complete and were computed for ``key``; else None."""
        from safetensors.torch import load_file

        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            tensors = load_file(str(path.with_suffix(".safetensors")))
        except (OSError, ValueError):
            return None
        if meta.get("key") != json.loads(json.dumps(key)):
            return None
        q, n = tensors.get("quantile_values"), tensors.get("n_nonzero")
        if q is None or n is None or q.shape != (width,) or n.shape != (width,):
            return None
        return cls(q, n, dict(meta["site_norm"]), int(meta["n_tokens"]), float(meta["quantile"]), key)


def _percent(q: float) -> str:
    return f"{100 * q:g}"


def exact_quantiles(feature: torch.Tensor, values: torch.Tensor, width: int, q: float) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """Per feature, the ``q`` quantile (linear interpolation, as ``numpy.quantile``) of the ``values`` that
    belong to it, and how many there are. ``feature [n]`` int64, ``values [n]``: returns ``[width]`` float32
    (0 for a feature with no values) and ``[width]`` int64."""
    counts = torch.bincount(feature, minlength=width)
    out = torch.zeros(width, dtype=torch.float32, device=values.device)
    if feature.numel() == 0:
        return out, counts
    by_value = torch.argsort(values, stable=True)
    order = by_value[torch.argsort(feature[by_value], stable=True)]
    v = values[order].float()
    starts = torch.cumsum(counts, 0) - counts
    has = counts > 0
    pos = q * (counts[has] - 1).double()
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, counts[has] - 1)
    frac = (pos - lo.double()).float()
    low, high = v[starts[has] + lo], v[starts[has] + hi]
    out[has] = low + frac * (high - low)
    return out, counts


def _sample_prompts(gm: GemmaModel, n_tokens: int, doc_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(input_ids [T], counted [T] bool)`` per document of the default corpus, in order, until exactly
    ``n_tokens`` counted tokens (positions of :func:`~gemscope_widgets.backend.gemma.prompts.masked_ids` tokens,
    ``<bos>`` and ``<pad>``, are not counted: the rule the heatmap and the corpus scan use)."""
    masked = torch.tensor(sorted(masked_ids(gm.tokenizer)), dtype=torch.long)
    texts = default_corpus(max_docs=None)
    docs: list[tuple[torch.Tensor, torch.Tensor]] = []
    total = 0
    for start in range(0, len(texts), 64):
        for ids in tokenize_docs(gm, texts[start : start + 64], doc_tokens):
            t = torch.tensor(ids, dtype=torch.long)
            counted = ~torch.isin(t, masked)
            if total + int(counted.sum()) >= n_tokens:  # cut the last document: exactly n_tokens in all
                end = int(torch.nonzero(counted.cumsum(0) == n_tokens - total)[0]) + 1
                docs.append((t[:end], counted[:end]))
                return docs
            docs.append((t, counted))
            total += int(counted.sum())
    return docs


def _identity(gm: GemmaModel, sae: Any, n_tokens: int, quantile: float, doc_tokens: int) -> dict[str, Any]:
    """What the units depend on: every weight of the model and of the SAE, the sample, the statistic."""
    return {
        "model": model_identity(gm),
        "sae": sae_identity(sae),
        "sample": {"corpus": "default", "tokens": n_tokens, "doc_tokens": doc_tokens},
        "quantile": quantile,
        "format": _FORMAT,
    }


def _cache_path(key: dict[str, Any]) -> Path:
    return cache_dir("units") / f"{name_slug(key['sae']['name'])}-{key_digest(key)}"


def compute_feature_units(
    gm: GemmaModel,
    sae: Any,
    *,
    n_tokens: int = UNIT_TOKENS,
    quantile: float = UNIT_QUANTILE,
    doc_tokens: int = UNIT_DOC_TOKENS,
    batch_tokens: int = 4096,
    progress: bool = True,
) -> FeatureUnits:
    """One pass over the sample: every feature's ``quantile`` of non-zero activations, exactly (all non-zero
    activations are kept, then sorted per feature), and the median activation norm at each write site.

    Cost: a forward pass over ``n_tokens`` tokens stopped after the SAE's deepest layer, plus the encoder.
    """

    if not 0 < quantile <= 1:
        raise SteeringError(f"The unit quantile must be in (0, 1], got {quantile}.")
    docs = _sample_prompts(gm, n_tokens, doc_tokens)
    reads = list(sae.read_hook_points)
    writes = list(dict.fromkeys(getattr(sae.config, "hook_points_out", ()) or ()))
    width, device = int(sae.width), gm.device
    feats, vals = [], []
    norms: dict[str, list[torch.Tensor]] = {hp: [] for hp in writes}
    kept, used = 0, 0
    batches = plan_batches([len(ids) for ids, _ in docs], batch_size=max(1, batch_tokens), batch_tokens=batch_tokens)
    total = sum(int(c.sum()) for _, c in docs)
    bar = progress_bar(total=total, desc=f"strength units ({sae.config.name})", unit="tok", disable=not progress,
               leave=False)
    try:
        for batch in batches:
            if kept > _MAX_PAIRS:
                break
            ids, attention = pad_batch([docs[i][0].tolist() for i in batch], gm.tokenizer.pad_token_id)
            counted = torch.zeros(ids.shape, dtype=torch.bool)
            for row, i in enumerate(batch):
                counted[row, : len(docs[i][1])] = docs[i][1]
            acts = capture(gm, ids, [*reads, *writes], attention_mask=attention)
            keep = counted.to(device)
            x = stack_slots({h: acts[h][keep] for h in reads}, reads)
            for hp in writes:
                norms[hp].append(acts[hp][keep].float().norm(dim=-1).cpu())
            step = max(1, _ACT_BUDGET // max(width, 1))
            with torch.inference_mode():
                for t0 in range(0, x.shape[0], step):
                    encoded = sae.encode(x[t0 : t0 + step]).float()
                    _, f = encoded.nonzero(as_tuple=True)
                    feats.append(f.cpu())
                    vals.append(encoded[encoded != 0].cpu())  # row-major, the same order as nonzero()
                    kept += int(f.numel())
            used += int(keep.sum())
            bar.update(int(keep.sum()))
    finally:
        bar.close()
    feature = torch.cat(feats) if feats else torch.zeros(0, dtype=torch.long)
    values = torch.cat(vals) if vals else torch.zeros(0)
    q_values, counts = exact_quantiles(feature, values, width, quantile)
    site_norm = {hp: float(torch.cat(v).median()) for hp, v in norms.items() if v}
    key = _identity(gm, sae, n_tokens, quantile, doc_tokens)
    return FeatureUnits(q_values, counts, site_norm, used, quantile, key)


_MEMO: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], FeatureUnits]] = weakref.WeakKeyDictionary()
_MEMO_LOCK = threading.Lock()


def feature_units(gm: GemmaModel, sae: Any, *, progress: bool = True, cache: bool = True) -> FeatureUnits:
    """The units of every feature of ``sae`` on ``gm``: from memory, else from the disk cache, else computed
    once (:func:`compute_feature_units`, with a progress bar) and cached."""
    memo_key = (id(gm.model), UNIT_TOKENS, UNIT_QUANTILE, UNIT_DOC_TOKENS)
    with _MEMO_LOCK:
        known = _MEMO.get(sae, {}).get(memo_key)
    if known is not None and cache:
        return known
    key = _identity(gm, sae, UNIT_TOKENS, UNIT_QUANTILE, UNIT_DOC_TOKENS)
    path = _cache_path(key)
    units = None
    with file_lock(path.with_suffix(".lock")):
        if cache:
            units = FeatureUnits.load(path, key, int(sae.width))
        if units is None:
            units = compute_feature_units(gm, sae, n_tokens=UNIT_TOKENS, quantile=UNIT_QUANTILE,
                                          doc_tokens=UNIT_DOC_TOKENS, progress=progress)
            if cache:
                units.save(path)
    with _MEMO_LOCK:
        _MEMO.setdefault(sae, {})[memo_key] = units
    return units


def strength_unit(gm: GemmaModel, spec: Spec, unit: str = "typical", *, progress: bool = True) -> StrengthUnit:
    """The one strength-unit function: how many raw units ``1×`` of ``spec`` is, and where that came from.

    ``spec`` is a validated :class:`SteeringSpec` (its ``sae`` set) or :class:`DirectionSpec`. ``unit``:
    ``"typical"`` (the module docstring's units) or ``"raw"`` (always 1).
    """
    if check_unit(unit) == "raw":
        return RAW
    if isinstance(spec, DirectionSpec):
        if spec.mode == "ablate":
            return StrengthUnit(1.0, "fraction of the component removed", "fraction")
        if spec.length and spec.length > 0:
            return StrengthUnit(float(spec.length), "the direction's length", "length")
        return RAW
    return feature_units(gm, spec.sae, progress=progress).unit(spec.sae, spec.feature)


def to_raw(gm: GemmaModel, specs: Sequence[Spec], unit: str = "typical") -> list[Spec]:
    """``specs`` (validated) with each strength turned into raw units and marked ``unit="raw"``: a spec's own
    ``unit`` wins over ``unit``, the run's. Ablations keep their fraction (their unit is 1 either way)."""
    check_unit(unit)
    out: list[Spec] = []
    for spec in specs:
        own = spec.unit or unit
        if own != "raw":
            value = strength_unit(gm, spec, own).value
            if isinstance(spec, SteeringSpec) or (isinstance(spec, DirectionSpec) and spec.mode == "add"):
                spec = replace(spec, strength=spec.strength * value)
        out.append(replace(spec, unit="raw"))
    return out
