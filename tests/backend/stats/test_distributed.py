"""A scan shared by two CPU processes (torchrun, gloo) equals the one-process scan exactly, and refuses skew."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gemscope_widgets.backend.stats.feature_stats import FeatureStats

WORKER = Path(__file__).with_name("distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, model_path, sae_folder, corpus, params, *, succeed: bool = True, **env) -> Path:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    corpus_file = tmp_path / "corpus.json"
    corpus_file.write_text(json.dumps(corpus))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(WORKER), str(model_path), str(sae_folder), str(out),
           str(corpus_file)]
    full_env = {**os.environ, "GEMSCOPE_TEST_PARAMS": json.dumps(params), "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parents[3])
    assert (done.returncode == 0) == succeed, done.stderr[-4000:]
    return out


def _seen(out: Path) -> list[int]:
    """Documents scanned by both processes since the last call (the record is cleared)."""
    docs = []
    for rank in (0, 1):
        record = out / f"seen-{rank}.txt"
        if record.exists():
            docs += [int(line) for line in record.read_text().split()]
            record.unlink()
    return sorted(docs)


def test_two_processes_equal_one(tmp_path, stats_cache, tiny_model, tiny_model_path, scan_sae, scan_sae_folder,
                                 scan_corpus, scan_params):
    out = _torchrun(tmp_path, tiny_model_path, scan_sae_folder, scan_corpus, scan_params)
    merged = FeatureStats.load(out / "stats")
    single = FeatureStats.scan(tiny_model, scan_sae, scan_corpus, cache=False, progress=False, batch_size=2,
                               **scan_params)
    assert merged.n_tokens == single.n_tokens
    assert torch.equal(merged.density, single.density) and torch.equal(merged.max_act, single.max_act)
    assert set(merged._tensors) == set(single._tensors)
    for name, tensor in single._tensors.items():
        assert torch.equal(merged._tensors[name], tensor), name
    f = int(torch.argmax(single.density))
    assert merged.examples(f, count=4) == single.examples(f, count=4)
    # The other process read the same statistics back from the shared cache.
    assert json.loads((out / "done-1.json").read_text())["n_tokens"] == single.n_tokens


def test_processes_with_different_corpora_are_refused(tmp_path, stats_cache, tiny_model_path, scan_sae_folder,
                                                      scan_corpus, scan_params):
    out = _torchrun(tmp_path, tiny_model_path, scan_sae_folder, scan_corpus, scan_params, GEMSCOPE_TEST_SKEW="1")
    for rank in (0, 1):
        message = (out / f"error-{rank}.txt").read_text()
        assert "disagree on corpus" in message and "[1]" in message
    assert not (out / "stats").exists()


def test_an_interrupted_distributed_scan_resumes_to_the_same_result(tmp_path, stats_cache, tiny_model,
                                                                    tiny_model_path, scan_sae, scan_sae_folder,
                                                                    scan_corpus, scan_params):
    params = {**scan_params, "checkpoint_docs": 4}
    n = len(scan_corpus)
    assert n >= 8, "the test needs two checkpoint blocks"
    out = _torchrun(tmp_path, tiny_model_path, scan_sae_folder, scan_corpus, params, succeed=False,
                    GEMSCOPE_TEST_FAIL_FROM_DOC="4")
    assert _seen(out) == list(range(4)) and not (out / "stats").exists()
    out = _torchrun(tmp_path, tiny_model_path, scan_sae_folder, scan_corpus, params)
    assert _seen(out) == list(range(4, n)), "the second run should start after the first block's checkpoint"
    merged = FeatureStats.load(out / "stats")
    single = FeatureStats.scan(tiny_model, scan_sae, scan_corpus, cache=False, progress=False, batch_size=2,
                               **params)  # the same blocks of 4 documents, hence the same batches
    assert merged.n_tokens == single.n_tokens
    for name, tensor in single._tensors.items():
        assert torch.equal(merged._tensors[name], tensor), name


if not hasattr(torch, "distributed") or not torch.distributed.is_available():  # pragma: no cover
    pytestmark = pytest.mark.skip("torch.distributed is not available")
