"""The heatmap's binary payload: CSR buffers that decode to exactly the backend's activations."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.errors import GemscopeError
from gemscope_widgets.widgets.payload import (
    FLOAT16_MAX,
    PromptView,
    decode_payload,
    encode_payload,
    format_value,
    payload_nbytes,
)

REPO = Path(__file__).resolve().parents[2]
TEXT = "Sparse autoencoders find features in the residual stream. Paris is the capital of France."
CHAT = [{"role": "user", "content": "What is the capital of Italy?"}]


def fake_sparse(rows: list[list[tuple[int, float]]], width: int, name: str = "fake") -> SimpleNamespace:
    """A SparseActivations stand-in for encoder-independent cases (huge widths, overflow)."""
    indptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    indices = np.array([f for r in rows for f, _ in r], dtype=np.int32)
    values = np.array([v for r in rows for _, v in r], dtype=np.float32)
    return SimpleNamespace(indptr=indptr, indices=indices, values=values, width=width, sae_name=name)


def view(n: int) -> PromptView:
    return PromptView(tokens=[f"t{i}" for i in range(n)], special=[False] * n, template=[False] * n)


def as_fp16(dense: np.ndarray) -> np.ndarray:
    return dense.astype(np.float16).astype(np.float32)


@pytest.fixture(scope="module")
def saes(gemma_scope_folders):
    return [load_sae(gemma_scope_folders["resid_post"]), load_sae(gemma_scope_folders["transcoder"])]


def test_round_trip_equals_the_backend_dense_activations(tiny_model, saes):
    acts = prompt_features(tiny_model, saes[:1], TEXT)
    header, blob = encode_payload([acts[0].prompt], [acts])
    decoded = decode_payload(header, blob).block(0, 0).dense()
    expected = acts[0].dense().numpy()
    assert expected.any(), "the fixture SAE should fire on the text"
    assert np.array_equal(decoded != 0, expected != 0), "non-zero pattern changed"
    np.testing.assert_array_equal(decoded, as_fp16(expected))  # exactly the fp16 rounding, nothing else
    np.testing.assert_allclose(decoded, expected, rtol=1e-3, atol=0)
    assert decoded[0].sum() == 0, "<bos> row must stay empty"


def test_prompts_and_saes_share_one_payload(tiny_model, saes):
    prompts = [TEXT, CHAT]
    rows = [prompt_features(tiny_model, saes, p) for p in prompts]
    header, blob = encode_payload([r[0].prompt for r in rows], rows)
    payload = decode_payload(json.dumps(header), blob)
    assert payload.n_prompts == 2
    assert len(header["blocks"]) == 4
    for p, row in enumerate(rows):
        for s, sparse in enumerate(row):
            np.testing.assert_array_equal(payload.block(p, s).dense(), as_fp16(sparse.dense().numpy()))
    chat = header["prompts"][1]
    assert chat["chat"] is True and header["prompts"][0]["chat"] is False
    assert chat["tokens"] == rows[1][0].prompt.tokens
    assert any(chat["special"]), "chat template tokens are marked special"
    assert sum(chat["template"]) > sum(chat["special"]), "the role lines are marked as template text"


def test_layout_dtypes_alignment_and_no_float_lists(tiny_model, saes):
    acts = prompt_features(tiny_model, saes, TEXT)
    header, blob = encode_payload([acts[0].prompt], [acts])
    assert header["bytes"] == len(blob)
    for block in header["blocks"]:
        assert block["indptr"]["dtype"] == "uint32"
        assert block["indices"]["dtype"] == "uint16"  # width 128 fits
        assert block["values"]["dtype"] == "float16"
        for ref in (block["indptr"], block["indices"], block["values"]):
            assert ref["offset"] % 4 == 0
        assert block["nnz"] == int(acts[block["sae"]].nnz)

    def floats(node):
        if isinstance(node, float):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from floats(v)
        elif isinstance(node, list):
            for v in node:
                yield from floats(v)

    assert list(floats(header)) == [], "numbers must travel in the binary blob"


def test_rows_are_sorted_largest_first_and_top_k_keeps_the_largest(tiny_model, saes):
    (sparse,) = prompt_features(tiny_model, saes[:1], TEXT)
    dense = as_fp16(sparse.dense().numpy())
    header, blob = encode_payload([sparse.prompt], [[sparse]], top_k=3)
    block = decode_payload(header, blob).block(0, 0)
    for t in range(dense.shape[0]):
        ids, values = block.row(t)
        order = sorted(np.flatnonzero(dense[t]), key=lambda f: (-dense[t, f], f))[:3]
        assert ids.tolist() == order
        np.testing.assert_array_equal(values.astype(np.float32), dense[t, order])
    assert header["top_k"] == 3
    assert header["blocks"][0]["nnz"] < sparse.nnz


def test_wide_saes_use_uint32_ids():
    width = 262144
    sparse = fake_sparse([[], [(262143, 2.5), (70000, 1.0)], [(3, 7.0)]], width)
    header, blob = encode_payload([view(3)], [[sparse]])
    assert header["blocks"][0]["indices"]["dtype"] == "uint32"
    assert header["saes"][0]["id_dtype"] == "uint32"
    block = decode_payload(header, blob).block(0, 0)
    assert block.row(1)[0].tolist() == [262143, 70000]
    assert block.row(2)[0].tolist() == [3]


def test_values_beyond_float16_are_clamped_and_counted():
    sparse = fake_sparse([[(1, 70000.0), (2, 3000.0)], [(1, 1e6)]], 16)
    header, blob = encode_payload([view(2)], [[sparse]])
    assert header["blocks"][0]["clamped"] == 2
    dense = decode_payload(header, blob).block(0, 0).dense()
    assert dense[0, 1] == FLOAT16_MAX and dense[1, 1] == FLOAT16_MAX
    assert dense[0, 2] == 3000.0


def test_corpus_maxima_travel_only_for_features_present():
    sparse = fake_sparse([[(5, 2.0)], [(9, 4.0), (5, 1.0)]], 16)
    maxima = np.arange(16, dtype=np.float32) * 10
    header, blob = encode_payload([view(2)], [[sparse]], feature_max=[maxima])
    assert decode_payload(header, blob).feature_max(0) == {5: 50.0, 9: 90.0}
    with pytest.raises(GemscopeError, match="one per feature"):
        encode_payload([view(2)], [[sparse]], feature_max=[maxima[:4]])


def test_a_128_token_prompt_at_50_features_per_token_fits_32_kb():
    rng = np.random.default_rng(0)
    rows = [
        list(zip(rng.choice(16384, 50, replace=False).tolist(), (rng.random(50) * 3000).tolist()))
        for _ in range(128)
    ]
    header, blob = encode_payload([view(128)], [[fake_sparse(rows, 16384)]])
    assert len(blob) == 129 * 4 + 128 * 50 * 4  # uint32 indptr + (uint16 id + fp16 value) per entry
    assert payload_nbytes(header, blob) <= 32 * 1024


def test_bad_input_is_refused_clearly():
    sparse = fake_sparse([[(1, 1.0)]], 16)
    with pytest.raises(GemscopeError, match="2 tokens but its activations have 1 rows"):
        encode_payload([view(2)], [[sparse]])
    with pytest.raises(GemscopeError, match="top_k"):
        encode_payload([view(1)], [[sparse]], top_k=0)
    with pytest.raises(GemscopeError, match="at least one prompt"):
        encode_payload([], [])
    header, blob = encode_payload([view(1)], [[sparse]])
    with pytest.raises(GemscopeError, match="truncated"):
        decode_payload(header, blob[:-2])
    with pytest.raises(GemscopeError, match="No activations for prompt 1"):
        decode_payload(header, blob).block(1, 0)


FORMAT_CASES = {
    0.0: "0",
    1000.5: "1001",  # an exact tie: halves go up (Python's "%g" would give 1000)
    12345.0: "12350",
    65504.0: "65500",
    9999.5: "10000",
    0.5: "0.5",
    2.0: "2",
    3.140625: "3.141",
    0.0001234: "0.0001234",
    1.1920928955078125e-07: "0.0000001192",
}


def test_format_value_rule():
    for value, text in FORMAT_CASES.items():
        assert format_value(value) == text, value
    assert format_value(np.float16(1234.5)) == "1234"  # the fp16 value (1234), not the float32 one


def test_format_value_matches_the_front_end(tmp_path):
    """The same numbers through js/lib/format.ts (bundled with esbuild, run by node)."""
    node = shutil.which("node")
    esbuild = REPO / "node_modules" / ".bin" / "esbuild"
    if node is None or not esbuild.exists():
        pytest.skip("node and the npm dev dependencies are needed (npm ci)")
    rng = np.random.default_rng(1)
    values = [*FORMAT_CASES, *rng.random(200).astype(np.float16).astype(float) * 4000]
    values += [float(np.float16(v)) for v in rng.random(100) * 60000]
    script = tmp_path / "format.mjs"
    subprocess.run(
        [str(esbuild), str(REPO / "js/lib/format.ts"), "--bundle", "--format=esm", f"--outfile={script}"],
        check=True,
        capture_output=True,
    )
    runner = tmp_path / "run.mjs"
    runner.write_text(
        "import { formatValue } from './format.mjs';\n"
        f"console.log(JSON.stringify({json.dumps(values)}.map(formatValue)));\n"
    )
    out = subprocess.run([node, str(runner)], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == [format_value(v) for v in values]
