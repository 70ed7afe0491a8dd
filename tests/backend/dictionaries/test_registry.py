"""load_sae dispatches on the Gemma Scope 2 ``type``; crosscoders get one class per layout."""

from __future__ import annotations

import json

import pytest
import torch

from gemscope_widgets.backend.dictionaries.crosscoder import Crosscoder, PerSlotCrosscoder, SharedLatentCrosscoder
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.backend.dictionaries.registry import DICTIONARY_TYPES, dictionary_class
from gemscope_widgets.errors import SAELoadError
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae

WRITERS = {
    "sae": {"kind": "sae", "layer": 1},
    "transcoder": {"kind": "transcoder", "layer": 1},
    "clt": {"kind": "clt", "width": 64},
    "crosscoder": {"kind": "crosscoder", "layer": (0, 2), "width": 64},
}


def test_every_gemma_scope_type_has_a_class_and_loads_into_it(tmp_path):
    assert set(DICTIONARY_TYPES) == set(WRITERS)
    for kind, options in WRITERS.items():
        sae = load_sae(write_gemma_scope_sae(tmp_path / kind, **options))
        assert sae.config.kind == kind
        assert isinstance(sae, dictionary_class(kind))


def test_unknown_type_names_the_known_ones(tmp_path):
    folder = write_gemma_scope_sae(tmp_path / "s", kind="sae", layer=1)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "type": "topk"}))
    with pytest.raises(SAELoadError, match=r"type 'topk'.*sae, transcoder, clt, crosscoder"):
        load_sae(folder)
    with pytest.raises(SAELoadError, match="known types"):
        dictionary_class("topk")


@pytest.mark.parametrize(("layout", "cls"), [("per_slot", PerSlotCrosscoder), ("shared", SharedLatentCrosscoder)])
def test_crosscoder_layouts_are_classes(tmp_path, layout, cls):
    cc = load_sae(write_gemma_scope_sae(tmp_path / layout, kind="crosscoder", layer=(0, 2), width=64,
                                        crosscoder_layout=layout))
    assert type(cc) is cls and isinstance(cc, Crosscoder)
    assert cc.shared_latent == (layout == "shared")
    # Built directly from the same slots, the base class picks the same layout.
    slots = [{k.rsplit("_", 1)[0]: v for k, v in cc.state_dict().items() if k.endswith(f"_{i}")} for i in range(2)]
    if layout == "shared":
        for s in slots:
            s["b_enc"], s["threshold"] = cc.b_enc, cc.threshold
    assert type(Crosscoder(cc.config, slots)) is cls
    x = torch.randn(3, 2, cc.config.d_in)
    torch.testing.assert_close(type(cc)(cc.config, slots)(x), cc(x))
