"""Neuronpedia feature ids and links, and import of Neuronpedia's bulk export (jsonl.gz rows).

Neuronpedia names a Gemma Scope 2 feature ``{model_id}/{source_id}/{index}``, e.g.
``gemma-3-270m/9-gemmascope-2-res-16k/1234``. Only two Gemma Scope 2 families are hosted there:
the ``resid_post/layer_L_width_W_l0_medium`` SAEs (``{L}-gemmascope-2-res-{W}``) and the
``transcoder_all/layer_L_width_W_l0_small_affine`` transcoders (``{L}-gemmascope-2-transcoder-{W}``).
Anything else (local or demo SAEs, other sites or L0s) has no Neuronpedia page and gets no link.
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.gemma.names import neuronpedia_model_id, neuronpedia_source_id, parse_scope_folder
from gemscope_widgets.backend.stats.feature_stats import Example, FeatureStats
from gemscope_widgets.errors import NeuronpediaImportError

if TYPE_CHECKING:
    from gemscope_widgets.backend.stats.feature_stats import FeatureStats

NEURONPEDIA_URL = "https://www.neuronpedia.org"


def _sae_folder(sae: Any) -> str | None:
    """The folder path an SAE was loaded from, as far as its config tells."""
    cfg = getattr(sae, "config", sae)
    for attr in ("folder", "path", "name", "source"):
        value = getattr(cfg, attr, None)
        if isinstance(value, (str, Path)) and parse_scope_folder(value) is not None:
            return str(value)
    return None


def neuronpedia_ids(sae: Any, model_name: str | None = None) -> tuple[str, str] | None:
    """``(model_id, source_id)`` for a loaded SAE, or None when it has no Neuronpedia page.

    The model id comes from the SAE's own ``model_name`` (the model it was trained on), falling back to
    ``model_name``; the SAE's site, layer, width and L0 come from the folder it was loaded from.
    """
    cfg = getattr(sae, "config", sae)
    model_id = neuronpedia_model_id(getattr(cfg, "model_name", None)) or neuronpedia_model_id(model_name)
    source_id = neuronpedia_source_id(_sae_folder(sae), getattr(cfg, "width", None))
    if model_id is None or source_id is None:
        return None
    return model_id, source_id


def neuronpedia_url(model_id: str, source_id: str, index: int) -> str:
    """The feature page URL, e.g. ``https://www.neuronpedia.org/gemma-3-270m/9-gemmascope-2-res-16k/1234``."""
    return f"{NEURONPEDIA_URL}/{model_id}/{source_id}/{int(index)}"


def feature_url(sae: Any, index: int, model_name: str | None = None) -> str | None:
    """Neuronpedia URL of feature ``index`` of ``sae``, or None when Neuronpedia does not host that SAE."""
    ids = neuronpedia_ids(sae, model_name)
    return None if ids is None else neuronpedia_url(*ids, index)


# --- export import -------------------------------------------------------------------------------------


@dataclass
class NeuronpediaFeature:
    """Everything an export says about one feature."""

    index: int
    explanations: list[str] = field(default_factory=list)
    # per explanation, its scores {"type (scorer model)": value} (Neuronpedia's ExplanationScore rows)
    explanation_scores: list[dict[str, float]] = field(default_factory=list)
    pos: list[tuple[str, float]] = field(default_factory=list)
    neg: list[tuple[str, float]] = field(default_factory=list)
    frac_nonzero: float | None = None
    max_act: float | None = None
    hist_values: list[float] = field(default_factory=list)
    hist_heights: list[float] = field(default_factory=list)
    # (tokens, values, is_top): Neuronpedia marks the top bin with binMin == -1; other bins are quantiles.
    activations: list[tuple[list[str], list[float], bool]] = field(default_factory=list)
    cos_sim: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class NeuronpediaExport:
    """A parsed export: the features it describes, and the model/source ids its rows name."""

    features: dict[int, NeuronpediaFeature]
    model_id: str | None = None
    source_id: str | None = None


def _export_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.name.endswith((".jsonl", ".jsonl.gz")))
            if not found:
                raise NeuronpediaImportError(
                    f"No .jsonl or .jsonl.gz files under {p}. Point at the folder holding Neuronpedia's "
                    "features/, activations/ and explanations/ batches, or at the files themselves."
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise NeuronpediaImportError(f"Neuronpedia export file not found: {p}.")
    return files


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise NeuronpediaImportError(
                        f"{path}, line {lineno}: not JSON ({exc.msg}). Neuronpedia exports hold one JSON "
                        "object per line."
                    ) from None
                if not isinstance(row, dict):
                    raise NeuronpediaImportError(f"{path}, line {lineno}: expected a JSON object per line.")
                yield row
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise NeuronpediaImportError(f"Cannot read {path}: {exc}. Is it a (gzipped) jsonl file?") from None


def _floats(row: dict[str, Any], key: str) -> list[float]:
    return [float(v) for v in (row.get(key) or [])]


def _explanation_scores(entry: dict[str, Any], path: Path) -> dict[str, float]:
    """``{"type (model)": value}`` from an explanation's ``scores`` list (Neuronpedia's ExplanationScore fields
    ``explanationScoreTypeName``, ``explanationScoreModelName``, ``value``)."""
    out: dict[str, float] = {}
    for score in entry.get("scores") or []:
        if not isinstance(score, dict) or score.get("value") is None:
            continue
        kind = str(score.get("explanationScoreTypeName") or "score")
        model = score.get("explanationScoreModelName")
        try:
            out[f"{kind} ({model})" if model else kind] = float(score["value"])
        except (TypeError, ValueError):
            raise NeuronpediaImportError(f"{path}: explanation score {score['value']!r} is not a number.") from None
    return out


def _add_explanation(feat: NeuronpediaFeature, text: str, scores: dict[str, float]) -> None:
    """One explanation (the same text from two files merges its scores)."""
    if text in feat.explanations:
        feat.explanation_scores[feat.explanations.index(text)].update(scores)
    else:
        feat.explanations.append(text)
        feat.explanation_scores.append(scores)


def read_neuronpedia_export(paths: str | Path | Iterable[str | Path]) -> NeuronpediaExport:
    """Parse Neuronpedia export rows (features, activations, explanations; jsonl or jsonl.gz).

    Rows are recognised by their fields, so files may be passed in any order or as one folder.
    """
    features: dict[int, NeuronpediaFeature] = {}
    model_ids: set[str] = set()
    source_ids: set[str] = set()
    n_rows = 0
    for path in _export_files(paths):
        for row in _rows(path):
            if "index" not in row:
                continue  # model.jsonl, source.jsonl and friends describe the release, not a feature
            try:
                index = int(row["index"])
            except (TypeError, ValueError):
                raise NeuronpediaImportError(f"{path}: feature index {row['index']!r} is not an integer.") from None
            feat = features.setdefault(index, NeuronpediaFeature(index))
            n_rows += 1
            if row.get("modelId"):
                model_ids.add(str(row["modelId"]))
            if row.get("layer"):
                source_ids.add(str(row["layer"]))
            if "description" in row or isinstance(row.get("explanations"), list):
                # an explanations/ row, or an explanation-scores/ row holding its explanations with their scores
                entries = row["explanations"] if isinstance(row.get("explanations"), list) else [row]
                for entry in entries:
                    if isinstance(entry, dict) and entry.get("description"):
                        _add_explanation(feat, str(entry["description"]), _explanation_scores(entry, path))
            elif "tokens" in row and "values" in row:
                tokens, values = [str(t) for t in row["tokens"]], _floats(row, "values")
                if len(tokens) != len(values):
                    raise NeuronpediaImportError(
                        f"{path}: activation row for feature {index} has {len(tokens)} tokens but "
                        f"{len(values)} values."
                    )
                bin_min = row.get("binMin")
                is_top = bin_min is None or float(bin_min) == -1
                feat.activations.append((tokens, values, is_top))
            elif any(k in row for k in ("pos_str", "frac_nonzero", "freq_hist_data_bar_heights")):
                feat.pos = list(zip(map(str, row.get("pos_str") or []), _floats(row, "pos_values")))
                feat.neg = list(zip(map(str, row.get("neg_str") or []), _floats(row, "neg_values")))
                if row.get("frac_nonzero") is not None:
                    feat.frac_nonzero = float(row["frac_nonzero"])
                if row.get("maxActApprox"):
                    feat.max_act = float(row["maxActApprox"])
                feat.hist_values = _floats(row, "freq_hist_data_bar_values")
                feat.hist_heights = _floats(row, "freq_hist_data_bar_heights")
                if len(feat.hist_values) != len(feat.hist_heights):
                    # Some producers sent n+1 edges with n heights; keep the bar centres parallel.
                    n = min(len(feat.hist_values), len(feat.hist_heights))
                    feat.hist_values, feat.hist_heights = feat.hist_values[:n], feat.hist_heights[:n]
                feat.cos_sim = [
                    (int(i), float(v))
                    for i, v in zip(row.get("topkCosSimIndices") or [], row.get("topkCosSimValues") or [])
                    if int(i) != index
                ]
    if n_rows == 0:
        raise NeuronpediaImportError(
            "The Neuronpedia export holds no feature rows (rows with an 'index' field). Expected the "
            "features/, activations/ or explanations/ jsonl.gz batches of one source."
        )
    return NeuronpediaExport(
        features,
        model_id=next(iter(model_ids)) if len(model_ids) == 1 else None,
        source_id=next(iter(source_ids)) if len(source_ids) == 1 else None,
    )


def _bar_edges(centres: list[float]) -> list[float]:
    """Bin edges around bar centres: midpoints inside, half a neighbour gap beyond each end."""
    if len(centres) == 1:
        c = centres[0]
        half = abs(c) * 0.05 or 0.5
        return [c - half, c + half]
    mids = [(a + b) / 2 for a, b in itertools.pairwise(centres)]
    return [centres[0] - (mids[0] - centres[0]), *mids, centres[-1] + (centres[-1] - mids[-1])]


def export_to_stats(export: NeuronpediaExport, width: int, sae_name: str = "") -> FeatureStats:
    """A :class:`FeatureStats` holding what the export says: examples (top bin and quantile bins), density,
    max activation, histogram, explanations and logit tokens. Features it does not mention have none of
    these (NaN density and max)."""
    beyond = [i for i in export.features if not 0 <= i < width]
    if beyond:
        raise NeuronpediaImportError(
            f"The Neuronpedia export has feature {max(beyond)} but the SAE has {width} features: the export "
            f"belongs to another source (it names {export.source_id or 'no source'}). Import the export of "
            "this SAE's source."
        )
    density = torch.full((width,), float("nan"))
    max_act = torch.full((width,), float("nan"))
    examples: dict[str, dict[int, list[Any]]] = {"top": {}, "quantile": {}}
    histograms, explanations, logits, scores = {}, {}, {}, {}
    for i, feat in export.features.items():
        if feat.frac_nonzero is not None:
            density[i] = feat.frac_nonzero
        for kind in ("top", "quantile"):
            rows = sorted(
                ((t, v) for t, v, top in feat.activations if top == (kind == "top") and v),
                key=lambda r: -max(r[1]),
            )
            exs = []
            for tokens, values in rows:
                peak = max(range(len(values)), key=values.__getitem__)
                exs.append(Example(tokens=tokens, values=values, peak=peak, value=values[peak], position=peak))
            if exs:
                examples[kind][i] = exs
        best = max([*(e.value for e in examples["top"].get(i, [])), feat.max_act or 0.0])
        if best > 0:
            max_act[i] = best
        if feat.hist_heights:
            histograms[i] = (_bar_edges(feat.hist_values), [round(h) for h in feat.hist_heights])
        if feat.explanations:
            # the best-scored explanation when any carries scores (mean of its scores), else the first
            best = max(range(len(feat.explanations)), key=lambda j: (
                bool(feat.explanation_scores[j]),
                sum(feat.explanation_scores[j].values()) / max(1, len(feat.explanation_scores[j])), -j))
            explanations[i] = feat.explanations[best]
            if feat.explanation_scores[best]:
                scores[i] = feat.explanation_scores[best]
        if feat.pos or feat.neg:
            logits[i] = (feat.pos, feat.neg)
    source = "neuronpedia" + (f" {export.model_id}/{export.source_id}" if export.source_id else "")
    return FeatureStats.from_parts(
        sae_name=sae_name, width=width, source=source, density=density, max_act=max_act,
        examples=examples, histograms=histograms, explanations=explanations, logits=logits,
        explanation_scores=scores,
    )


def load_neuronpedia_export(
    paths: str | Path | Iterable[str | Path], sae: Any = None, *, width: int | None = None
) -> FeatureStats:
    """Feature statistics from Neuronpedia export files (a folder, or features/activations/explanations files).

    ``sae`` (or ``width``) fixes the number of features; an export naming a different Neuronpedia source than
    ``sae`` maps to is refused.
    """
    export = read_neuronpedia_export(paths)
    name = ""
    if sae is not None:
        width = int(sae.config.width)
        name = str(sae.config.name)
        ids = neuronpedia_ids(sae)
        if ids is not None and export.source_id is not None and export.source_id != ids[1]:
            raise NeuronpediaImportError(
                f"The export is for Neuronpedia source {export.source_id!r} but this SAE is {ids[1]!r}. "
                "Import the export of this SAE's source."
            )
    if width is None:
        width = max(export.features) + 1
    return export_to_stats(export, width, name)
