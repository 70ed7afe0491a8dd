"""One process of a distributed scan, launched by test_distributed.py through torchrun (not a test module).

argv: model folder, SAE folder, output folder, corpus JSON file. Writes the merged statistics (rank 0) or the
error message of a refused scan (every rank) into the output folder, and appends the documents each rank
scanned to ``seen-{rank}.txt``. ``GEMSCOPE_TEST_FAIL_FROM_DOC=n`` makes a process die at its first batch with a
document >= n (an interrupted scan).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.gemma.model import load_model
from gemscope_widgets.backend.stats import scan as scan_module
from gemscope_widgets.backend.stats.feature_stats import FeatureStats
from gemscope_widgets.errors import GemscopeError


def main() -> None:
    model, sae_folder, out, corpus_file = sys.argv[1:5]
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    corpus = json.loads(Path(corpus_file).read_text())
    if os.environ.get("GEMSCOPE_TEST_SKEW") and rank == 1:
        corpus = corpus[:-1]  # this process sees another corpus: the scan must refuse
    gm = load_model(model, device="cpu", dtype="float32")
    sae = load_sae_folder(sae_folder)
    params = json.loads(os.environ["GEMSCOPE_TEST_PARAMS"])
    fail_from = int(os.environ.get("GEMSCOPE_TEST_FAIL_FROM_DOC", "-1"))
    real_batch = scan_module.Scanner.batch

    def batch(self: scan_module.Scanner, doc_ids: list[int], docs: list[list[int]]) -> None:
        if 0 <= fail_from <= max(doc_ids):
            os._exit(17)  # killed mid-scan: no clean-up, no goodbye to the other process
        with Path(out, f"seen-{rank}.txt").open("a") as fh:
            fh.write("".join(f"{d}\n" for d in doc_ids))
        real_batch(self, doc_ids, docs)

    scan_module.Scanner.batch = batch  # type: ignore[method-assign]
    try:
        stats = FeatureStats.scan(gm, sae, corpus, progress=False, batch_size=2, **params)
    except GemscopeError as exc:
        Path(out, f"error-{rank}.txt").write_text(str(exc))
        return
    if rank == 0:
        stats.save(Path(out) / "stats")
    Path(out, f"done-{rank}.json").write_text(json.dumps({"n_tokens": stats.n_tokens}))


if __name__ == "__main__":
    main()
