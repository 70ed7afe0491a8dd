"""The one parser of Gemma, Gemma Scope 2, SAELens and Neuronpedia names.

- Gemma model names: Hugging Face ids (``google/gemma-3-1b-it``, ``google/gemma-3-270m``), the older
  ``gemma-v3-270m-pt`` spelling some configs carry, and Gemma Scope 2 repo ids
  (``google/gemma-scope-2-270m-pt``), all read as ``(generation, size, instruct)``.
- Gemma Scope 2 folder names inside a release repo: ``resid_post/layer_9_width_16k_l0_medium[_affine]``.
- SAELens release names for Gemma Scope 2 (``gemma-scope-2-270m-pt-res`` + ``layer_9_width_16k_l0_medium``).
- Neuronpedia ids: the model id (``gemma-3-270m``, ``gemma-3-1b-it``) and the source id
  (``9-gemmascope-2-res-16k``) of the two families Neuronpedia hosts.

Sources: the repo and folder layout of ``google/gemma-scope-2-*`` on the Hugging Face hub, SAELens'
``pretrained_saes.yaml`` (release names) and Neuronpedia's feature URLs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import NamedTuple

GEMMA_SIZES = ("270m", "1b", "4b", "12b", "27b")  # the Gemma 3 sizes Gemma Scope 2 covers
# Top-level folders of a Gemma Scope 2 release repo.
SCOPE_SITE_FOLDERS = (
    "resid_post",
    "mlp_out",
    "attn_out",
    "transcoder",
    "resid_post_all",
    "mlp_out_all",
    "attn_out_all",
    "transcoder_all",
    "clt",
    "crosscoder",
)
_SIZE = r"\d+(?:\.\d+)?[mb]"
_MODEL = re.compile(rf"gemma-?v?(\d+)-({_SIZE})(?:-(pt|it))?\b")
_SCOPE_REPO = re.compile(rf"gemma-scope-2-({_SIZE})-(pt|it)\b")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_SCOPE_REPO_ID = re.compile(r"^(google/gemma-scope-2-[\w.-]+)/(.+)$")  # "<repo id>/<folder>" in one string
_HF_GEMMA3 = re.compile(rf"^(?:google/)?gemma-3-({'|'.join(GEMMA_SIZES)})(?:-(pt|it))?$", re.IGNORECASE)
_SAELENS_RELEASE = re.compile(rf"^gemma-scope-2-({'|'.join(GEMMA_SIZES)})-(pt|it)-(res|mlp|att|transcoders)(-all)?$")
_SAELENS_SITE = {"res": "resid_post", "mlp": "mlp_out", "att": "attn_out", "transcoders": "transcoder"}
_SCOPE_FOLDER = re.compile(
    rf"(?:^|/)(?P<site>{'|'.join(SCOPE_SITE_FOLDERS)})/"
    r"layer_(?P<layer>\d+)_width_(?P<width>\d+[km]?)_l0_(?P<l0>small|medium|big|\d+)(?P<affine>_affine)?/?$"
)
_WIDTH_UNITS = {"": 1, "k": 1000, "m": 1000_000}
# Neuronpedia hosts resid_post (l0 medium) and affine transcoders (l0 small) of these widths.
_NEURONPEDIA_WIDTHS = ("16k", "65k", "262k", "1m")


class GemmaName(NamedTuple):
    """What a Gemma model or Gemma Scope repo name says: ``generation`` ("3"), ``size`` ("270m"), ``instruct``."""

    generation: str
    size: str
    instruct: bool


def parse_gemma_name(name: str | None) -> GemmaName | None:
    """``"google/gemma-3-1b-it"`` -> ``GemmaName("3", "1b", True)``; None if it is not a Gemma name.

    Gemma Scope 2 repo ids parse too: ``"google/gemma-scope-2-270m-pt"`` -> ``("3", "270m", False)``.
    A name without ``-it`` counts as pretrained.
    """
    if not name:
        return None
    low = name.lower()
    m = _MODEL.search(low)
    if m is not None:
        return GemmaName(m.group(1), m.group(2), m.group(3) == "it")
    m = _SCOPE_REPO.search(low)
    return GemmaName("3", m.group(1), m.group(2) == "it") if m else None


def model_size(name: str | None) -> str | None:
    """The Gemma 3 size ("270m", "1b", ...) in a model or Gemma Scope repo name, else None."""
    parsed = parse_gemma_name(name)
    return parsed.size if parsed is not None and parsed.generation == "3" else None


def is_instruct_name(name: str) -> bool:
    """True for an instruction-tuned checkpoint name (it ends in ``-it``, as every Gemma -it id does)."""
    return name.rstrip("/").lower().endswith("-it")


def normalise_model_name(name: object) -> str | None:
    """``gemma-v3-270m-pt`` / ``google/gemma-3-270m-pt`` -> ``google/gemma-3-270m`` (the HF id); others kept."""
    if not isinstance(name, str) or not name.strip():
        return None
    name = name.strip().replace("gemma-v3-", "gemma-3-")
    if "/" not in name and name.startswith("gemma-"):
        name = "google/" + name
    # The 270m base model is published without the -pt suffix.
    return re.sub(r"^google/gemma-3-270m-pt$", "google/gemma-3-270m", name)


def is_hub_id(text: str) -> bool:
    """True for a Hugging Face repo id (``owner/name``)."""
    return _HUB_ID.match(text) is not None


def scope_repo_id(size: str, instruct: bool) -> str:
    """The Gemma Scope 2 release repo for a Gemma 3 size: ``google/gemma-scope-2-1b-it``."""
    return f"google/gemma-scope-2-{size}-{'it' if instruct else 'pt'}"


def split_scope_path(text: str) -> tuple[str, str] | None:
    """``"google/gemma-scope-2-270m-pt/resid_post/layer_9_..."`` -> ``(repo_id, folder)``, else None."""
    m = _SCOPE_REPO_ID.match(text)
    return (m.group(1), m.group(2)) if m else None


@dataclass(frozen=True)
class ScopeFolder:
    """A parsed Gemma Scope 2 folder name: ``transcoder_all/layer_9_width_16k_l0_small_affine``."""

    site: str  # the top-level folder: resid_post, transcoder_all, ...
    layer: int
    width_label: str  # "16k" as written
    width: int  # 16384
    l0: str  # "small" / "medium" / "big", or a number as written
    affine: bool


def parse_scope_folder(path: str | PurePath | None) -> ScopeFolder | None:
    """Parse the Gemma Scope 2 folder that ``path`` ends in (a repo path or a local path), else None."""
    if not path:
        return None
    m = _SCOPE_FOLDER.search(str(path).replace("\\", "/").rstrip("/"))
    if m is None:
        return None
    label = m.group("width")
    return ScopeFolder(
        site=m.group("site"),
        layer=int(m.group("layer")),
        width_label=label,
        width=_width_of_label(label),
        l0=m.group("l0"),
        affine=bool(m.group("affine")),
    )


def _width_of_label(label: str) -> int:
    # Gemma Scope widths are powers of two written as truncated thousands or millions: 65k is 65536.
    digits, unit = (label[:-1], label[-1]) if label[-1] in "km" else (label, "")
    value = int(digits) * _WIDTH_UNITS[unit]
    return value if not unit else 1 << round(math.log2(value))


def scope_width_label(width: int) -> str:
    """``16384`` -> ``"16k"``, ``262144`` -> ``"262k"``, ``1048576`` -> ``"1m"``, as Gemma Scope 2 folders write it."""
    if width >= 1000_000:
        return f"{width // 1000_000}m"
    return f"{width // 1000}k" if width >= 1000 else str(width)


def resolve_saelens_name(release: str, sae_id: str) -> tuple[str, str] | None:
    """``("gemma-scope-2-270m-pt-res", "layer_9_width_16k_l0_medium")`` -> ``(repo_id, folder)``, else None.

    SAELens keeps the site folder in some ids (``transcoder/layer_...``); it is accepted with or without.
    """
    m = _SAELENS_RELEASE.match(release)
    if m is None:
        return None
    size, variant, site, all_suffix = m.groups()
    site_folder = _SAELENS_SITE[site] + ("_all" if all_suffix else "")
    sae_id = sae_id.strip("/")
    head, _, rest = sae_id.partition("/")
    if rest and head in SCOPE_SITE_FOLDERS:
        sae_id = rest
    return f"google/gemma-scope-2-{size}-{variant}", f"{site_folder}/{sae_id}"


def neuronpedia_model_id(model_name: str | None) -> str | None:
    """Neuronpedia's model id for a Gemma 3 model name (``google/gemma-3-1b-pt`` → ``gemma-3-1b``), else None.

    Neuronpedia writes the HF name without ``google/`` and without ``-pt``.
    """
    if not model_name:
        return None
    m = _HF_GEMMA3.match(model_name.strip())
    if m is None:
        return None
    size, variant = m.group(1).lower(), (m.group(2) or "pt").lower()
    return f"gemma-3-{size}" + ("-it" if variant == "it" else "")


def neuronpedia_source_id(folder: str | PurePath | None, width: int | None = None) -> str | None:
    """Neuronpedia's source id for a Gemma Scope 2 folder path, or None when Neuronpedia does not host it.

    ``folder`` is the path inside the release repo (``resid_post/layer_9_width_16k_l0_medium``); a local
    path that ends in such a folder works too. ``width``, when given, must agree with the folder name.
    """
    parsed = parse_scope_folder(folder)
    if parsed is None or parsed.width_label not in _NEURONPEDIA_WIDTHS:
        return None
    if width is not None and parsed.width != int(width):
        return None
    w = parsed.width_label
    if parsed.site in ("resid_post", "resid_post_all") and parsed.l0 == "medium" and not parsed.affine:
        return f"{parsed.layer}-gemmascope-2-res-{w}"
    if parsed.site == "transcoder_all" and parsed.l0 == "small" and parsed.affine:
        return f"{parsed.layer}-gemmascope-2-transcoder-{w}"
    return None
