"""Gemma Scope 2 cross-layer transcoders (type ``clt``): one ``params_layer_{i}.safetensors`` per layer."""

from __future__ import annotations

from pathlib import Path

from gemscope_widgets.backend.dictionaries.config import FolderConfig
from gemscope_widgets.backend.dictionaries.layered import LayeredDictionary, load_slots


class CrossLayerTranscoder(LayeredDictionary):
    """Gemma Scope 2 cross-layer transcoder (kind ``clt``): one ``params_layer_{i}`` file per layer.

    Features of layer ``i`` read ``pre_feedforward_layernorm.output`` of layer ``i`` and write to the
    ``post_feedforward_layernorm.output`` of every layer ``j >= i``. ``w_dec_i`` is stored either with the
    full target axis ``[W_i, n_layers, d]`` (entries ``j < i`` are ignored) or as ``[W_i, n_layers - i, d]``.
    """

    _first_target_is_source = True

    @classmethod
    def from_folder(cls, folder: Path, cfg: FolderConfig, layer_files: list[Path]) -> CrossLayerTranscoder:
        """Load every ``params_layer_{i}`` file (memory-mapped) and check the layout."""
        return cls(*load_slots(folder, cfg, layer_files))

    @property
    def n_layers(self) -> int:
        """Number of layers the CLT spans (one file each)."""
        return self.n_slots

    def feature_layer(self, f: int) -> int:
        """Source layer of feature ``f``."""
        return self.config.layers_in[self.feature_slot(f)[0]]
