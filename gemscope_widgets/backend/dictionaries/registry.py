"""The dictionary classes by Gemma Scope 2 ``type`` (``config.json``), which :func:`load_sae` dispatches on.

As SAELens keeps its architectures in a registry (``sae_lens/saes/``), a new kind is one class with a
``from_folder(folder, folder_config, layer_files)`` classmethod, registered here under its ``type``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TypeAlias

from gemscope_widgets.backend.dictionaries.clt import CrossLayerTranscoder
from gemscope_widgets.backend.dictionaries.config import FolderConfig
from gemscope_widgets.backend.dictionaries.crosscoder import Crosscoder
from gemscope_widgets.backend.dictionaries.jumprelu import JumpReLUSAE
from gemscope_widgets.errors import SAELoadError

AnySAE: TypeAlias = JumpReLUSAE | CrossLayerTranscoder | Crosscoder


class DictionaryClass(Protocol):
    def from_folder(self, folder: Path, cfg: FolderConfig, layer_files: list[Path]) -> AnySAE: ...


DICTIONARY_TYPES: dict[str, DictionaryClass] = {
    "sae": JumpReLUSAE,
    "transcoder": JumpReLUSAE,
    "clt": CrossLayerTranscoder,
    "crosscoder": Crosscoder,
}


DICTIONARY_NOUNS: dict[str, str] = {
    "sae": "SAE",
    "transcoder": "transcoder",
    "clt": "cross-layer transcoder",
    "crosscoder": "crosscoder",
}
"""What a dictionary of each Gemma Scope 2 ``type`` is called in text shown to people."""


def dictionary_noun(kind: str) -> str:
    """``"SAE"``, ``"transcoder"``, ``"cross-layer transcoder"`` or ``"crosscoder"`` for a config's ``kind``
    (``"dictionary"`` for a kind this package does not know)."""
    return DICTIONARY_NOUNS.get(kind, "dictionary")


def dictionary_class(kind: str) -> DictionaryClass:
    """The class that loads dictionaries of Gemma Scope 2 ``type`` ``kind``."""
    try:
        return DICTIONARY_TYPES[kind]
    except KeyError:
        known = ", ".join(DICTIONARY_TYPES)
        raise SAELoadError(f"No dictionary class for type {kind!r}; known types are {known}.") from None
