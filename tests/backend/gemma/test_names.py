"""The one parser of Gemma, Gemma Scope 2, SAELens and Neuronpedia names."""

from __future__ import annotations

import pytest

from gemscope_widgets.backend.gemma import names
from gemscope_widgets.backend.gemma.names import (
    GemmaName,
    ScopeFolder,
    is_hub_id,
    is_instruct_name,
    model_size,
    parse_gemma_name,
    parse_scope_folder,
    scope_repo_id,
    scope_width_label,
    split_scope_path,
)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("google/gemma-3-270m", "270m"),
        ("google/gemma-3-1b-it", "1b"),
        ("gemma-v3-27b-pt", "27b"),
        ("google/gemma-scope-2-4b-it", "4b"),  # a Gemma Scope 2 repo names its model's size
        ("google/gemma-2-2b", None),  # another generation: no Gemma 3 size
        ("tiny-gemma-3", None),
        ("", None),
    ],
)
def test_model_size(name, size):
    assert model_size(name) == size


def test_parsed_names_read_as_fields_and_as_tuples():
    parsed = parse_gemma_name("google/gemma-3-12b-it")
    assert parsed == GemmaName("3", "12b", True) == ("3", "12b", True)
    assert (parsed.generation, parsed.size, parsed.instruct) == ("3", "12b", True)
    assert scope_repo_id(parsed.size, parsed.instruct) == "google/gemma-scope-2-12b-it"
    assert parse_gemma_name(scope_repo_id("270m", False)) == ("3", "270m", False)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("resid_post/layer_9_width_16k_l0_medium", ScopeFolder("resid_post", 9, "16k", 16384, "medium", False)),
        (
            "/snap/x/transcoder_all/layer_40_width_262k_l0_small_affine/",
            ScopeFolder("transcoder_all", 40, "262k", 262144, "small", True),
        ),
        ("mlp_out/layer_0_width_1m_l0_big", ScopeFolder("mlp_out", 0, "1m", 1 << 20, "big", False)),
        ("layer_9_width_16k_l0_medium", None),  # no site folder
        ("resid_post/layer_9", None),
        ("demo-sae", None),
        (None, None),
    ],
)
def test_scope_folders(path, expected):
    assert parse_scope_folder(path) == expected


@pytest.mark.parametrize(("width", "label"), [(512, "512"), (4096, "4k"), (16384, "16k"), (65536, "65k"),
                                               (262144, "262k"), (1 << 20, "1m")])
def test_width_labels_round_trip(width, label):
    assert scope_width_label(width) == label
    assert parse_scope_folder(f"resid_post/layer_1_width_{label}_l0_small").width == width


def test_hub_ids_and_scope_paths():
    assert is_hub_id("google/gemma-3-1b-it") and not is_hub_id("gemma-3-270m") and not is_hub_id("a/b/c")
    assert split_scope_path("google/gemma-scope-2-270m-pt/resid_post/layer_9_width_16k_l0_medium") == (
        "google/gemma-scope-2-270m-pt",
        "resid_post/layer_9_width_16k_l0_medium",
    )
    assert split_scope_path("google/gemma-3-270m") is None
    assert is_instruct_name("google/gemma-3-1b-it/") and not is_instruct_name("google/gemma-3-1b-pt")


def test_every_other_module_uses_these_parsers():
    """Each name fact has one definition: the modules that need a parser import this one."""
    from gemscope_widgets.backend.dictionaries import compat
    from gemscope_widgets.backend.gemma import model
    from gemscope_widgets.backend.stats.importers import neuronpedia

    assert compat.parse_gemma_name is names.parse_gemma_name
    assert model.model_size is names.model_size
    assert neuronpedia.neuronpedia_model_id is names.neuronpedia_model_id
    assert neuronpedia.neuronpedia_source_id is names.neuronpedia_source_id
