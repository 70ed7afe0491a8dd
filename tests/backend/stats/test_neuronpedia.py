"""Neuronpedia ids/links, and export files written in the documented jsonl.gz row layout."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.stats.importers.neuronpedia import (
    NeuronpediaImportError,
    feature_url,
    load_neuronpedia_export,
    neuronpedia_model_id,
    neuronpedia_source_id,
)
from gemscope_widgets.widgets.feature_pane import FeaturePane
from tests.fixtures.gemma_scope_files import write_gemma_scope_sae

SOURCE = "1-gemmascope-2-res-16k"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("google/gemma-3-270m", "gemma-3-270m"),
        ("google/gemma-3-270m-it", "gemma-3-270m-it"),
        ("google/gemma-3-1b-pt", "gemma-3-1b"),
        ("gemma-3-27b-it", "gemma-3-27b-it"),
        ("tiny-gemma-3", None),
        ("google/gemma-2-2b", None),
        (None, None),
    ],
)
def test_model_ids(name, expected):
    assert neuronpedia_model_id(name) == expected


@pytest.mark.parametrize(
    ("folder", "width", "expected"),
    [
        ("resid_post/layer_9_width_16k_l0_medium", None, "9-gemmascope-2-res-16k"),
        ("/cache/snap/abc/resid_post/layer_12_width_1m_l0_medium/", 1048576, "12-gemmascope-2-res-1m"),
        ("resid_post/layer_9_width_16k_l0_medium", 128, None),  # the folder name lies about the width
        ("resid_post/layer_9_width_16k_l0_small", None, None),  # Neuronpedia hosts only l0_medium residuals
        ("transcoder_all/layer_3_width_262k_l0_small_affine", None, "3-gemmascope-2-transcoder-262k"),
        ("transcoder_all/layer_3_width_262k_l0_small", None, None),
        ("mlp_out/layer_9_width_16k_l0_medium", None, None),
        ("demo-sae", None, None),
    ],
)
def test_source_ids(folder, width, expected):
    assert neuronpedia_source_id(folder, width) == expected


def test_feature_url_for_a_loaded_sae(tmp_path):
    base = dict(kind="sae", site="resid_post", layer=9, width=16384, d_in=8)
    hosted = load_sae_folder(write_gemma_scope_sae(
        tmp_path / "resid_post/layer_9_width_16k_l0_medium", model_name="google/gemma-3-270m", **base))
    assert feature_url(hosted, 1234) == "https://www.neuronpedia.org/gemma-3-270m/9-gemmascope-2-res-16k/1234"
    local = load_sae_folder(write_gemma_scope_sae(
        tmp_path / "my_sae", model_name="google/gemma-3-270m", **base))
    assert feature_url(local, 1234) is None
    other_model = load_sae_folder(write_gemma_scope_sae(
        tmp_path / "x/resid_post/layer_9_width_16k_l0_medium", model_name="tiny-gemma-3", **base))
    assert feature_url(other_model, 1) is None


def write_jsonl_gz(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


@pytest.fixture
def export_dir(tmp_path):
    """An export of features 2 and 5 in Neuronpedia's layout (rows as the Prisma tables store them)."""
    root = tmp_path / "gemma-3-270m" / SOURCE
    common = {"modelId": "gemma-3-270m", "layer": SOURCE}
    write_jsonl_gz(root / "features/batch-0.jsonl.gz", [
        {**common, "index": "2", "pos_str": [" Paris", " France"], "pos_values": [1.5, 1.25],
         "neg_str": [" dog"], "neg_values": [-0.75], "frac_nonzero": 0.0125, "maxActApprox": 9.0,
         "freq_hist_data_bar_values": [1.0, 3.0, 5.0], "freq_hist_data_bar_heights": [10, 4, 1],
         "topkCosSimIndices": [2, 7], "topkCosSimValues": [1.0, 0.4]},
        {**common, "index": "5", "pos_str": [], "pos_values": [], "neg_str": [], "neg_values": [],
         "frac_nonzero": 0.5, "freq_hist_data_bar_values": [], "freq_hist_data_bar_heights": []},
    ])
    write_jsonl_gz(root / "activations/batch-0.jsonl.gz", [
        {**common, "index": "2", "tokens": ["<bos>", "The", " capital", " Paris"], "values": [0, 0, 2.0, 8.5],
         "maxValue": 8.5, "maxValueTokenIndex": 3, "binMin": -1, "binMax": -1},
        {**common, "index": "2", "tokens": ["In", " France", "<b>x</b>"], "values": [0, 6.0, 1.0],
         "maxValue": 6.0, "maxValueTokenIndex": 1, "binMin": -1, "binMax": -1},
        {**common, "index": "2", "tokens": ["a", " city"], "values": [0.5, 2.5],
         "maxValue": 2.5, "maxValueTokenIndex": 1, "binMin": 2.0, "binMax": 3.0},
    ])
    write_jsonl_gz(root / "explanations/batch-0.jsonl.gz", [
        {**common, "index": "2", "description": "French places", "typeName": "oai_token-act-pair",
         "explanationModelName": "gpt-4o-mini"},
    ])
    return root


def test_export_becomes_feature_stats(export_dir):
    stats = load_neuronpedia_export(export_dir, width=16)
    assert stats.width == 16 and SOURCE in stats.source
    assert stats.explanation(2) == "French places"
    assert stats.explanation(5) is None
    assert float(stats.density[2]) == pytest.approx(0.0125)
    assert float(stats.density[5]) == pytest.approx(0.5)
    assert np.isnan(float(stats.density[0]))
    assert float(stats.max_act[2]) == pytest.approx(9.0)
    top = stats.examples(2, kind="top")
    assert [e.tokens for e in top] == [["<bos>", "The", " capital", " Paris"], ["In", " France", "<b>x</b>"]]
    assert top[0].peak == 3 and top[0].value == pytest.approx(8.5)
    quant = stats.examples(2, kind="quantile")
    assert len(quant) == 1 and quant[0].values == [0.5, 2.5]
    edges, counts = stats.histogram(2)
    np.testing.assert_allclose(edges, [0.0, 2.0, 4.0, 6.0])
    np.testing.assert_array_equal(counts, [10, 4, 1])
    assert stats.histogram(5) is None
    assert stats.stored_logits(2) == ([(" Paris", 1.5), (" France", 1.25)], [(" dog", -0.75)])


def test_export_loads_into_the_pane(export_dir, tiny_model, tmp_path):
    sae = load_sae_folder(write_gemma_scope_sae(tmp_path / "sae", kind="sae", layer=1, width=16, seed=2))
    features_only = load_neuronpedia_export(export_dir / "features", sae)  # one kind of file is enough
    assert features_only.n_examples(2) == 0 and features_only.stored_logits(2) is not None
    stats = load_neuronpedia_export(export_dir, sae)
    pane = FeaturePane(tiny_model, sae, stats, feature=2)
    assert pane.info["explanation"] == "French places"
    assert pane.logits["top"] == [[" Paris", 1.5], [" France", 1.25]]
    assert pane.examples["total"] == 2 and pane.quantiles["total"] == 1
    assert pane.examples["items"][1]["tokens"][2] == "<b>x</b>"  # text stays text; the view uses textContent
    np.testing.assert_array_equal(np.frombuffer(pane.histogram["counts"], "<f4"), [10, 4, 1])
    pane.show(7)  # not in the export: the pane still shows its logits, without examples
    assert pane.examples["total"] == 0 and pane.info["density"] is None and pane.logits["top"]


def test_export_errors_are_clear(export_dir, tmp_path):
    with pytest.raises(NeuronpediaImportError, match="another source"):
        load_neuronpedia_export(export_dir, width=2)
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write('{"index": "1", "description": "ok"}\n{not json\n')
    with pytest.raises(NeuronpediaImportError, match=r"bad\.jsonl\.gz, line 2"):
        load_neuronpedia_export(bad, width=4)
    (tmp_path / "plain.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(NeuronpediaImportError, match="Cannot read"):
        load_neuronpedia_export(tmp_path / "plain.txt.gz", width=4)
    with pytest.raises(NeuronpediaImportError, match="not found"):
        load_neuronpedia_export(tmp_path / "missing.jsonl.gz")
    empty = tmp_path / "empty"
    write_jsonl_gz(empty / "source.jsonl.gz", [{"id": SOURCE}])
    with pytest.raises(NeuronpediaImportError, match="no feature rows"):
        load_neuronpedia_export(empty)


def test_export_for_another_source_is_refused(export_dir, tmp_path):
    sae = load_sae_folder(write_gemma_scope_sae(
        tmp_path / "resid_post/layer_9_width_16k_l0_medium", kind="sae", layer=9, width=16384, d_in=8,
        model_name="google/gemma-3-270m"))
    with pytest.raises(NeuronpediaImportError, match="9-gemmascope-2-res-16k"):
        load_neuronpedia_export(export_dir, sae)
