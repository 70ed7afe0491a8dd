"""attribute()'s memory: the estimate before the work, refusal with settings that fit, chunked ranking with the same
result, and no buffer held by the traceback after an interrupt."""

from __future__ import annotations

import ctypes
import os
import re

import numpy as np
import pytest
import torch

from gemscope_widgets.backend.circuits import attribution, attribution_memory
from gemscope_widgets.backend.circuits.attribution import attribute, compute_partial_influences
from gemscope_widgets.backend.circuits.attribution_memory import AttributionMemoryError, estimate_attribution_memory
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.backend.gemma.model import load_model
from gemscope_widgets.backend.memory import absent_bytes, available_memory
from gemscope_widgets.errors import AttributionError, GemscopeError

PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door"


@pytest.fixture(scope="module")
def tset(tiny_transcoder_root):
    return load_transcoders(tiny_transcoder_root / "affine", "transcoder_all")


def test_estimate_grows_with_the_prompt_and_the_feature_rows(tiny_model, tset):
    short, long = (estimate_attribution_memory(tiny_model, tset, t) for t in (16, 1024))
    assert 0 < short.total_bytes < long.total_bytes
    # The prior is the set's L0 summed over layers (8 per layer, 4 layers), times the tokens.
    assert short.active_per_token == pytest.approx(sum(d.config.l0 for d in tset.dictionaries))
    assert long.n_active == round(long.active_per_token * 1024)
    assert long.parts["edges"] == (4096 + 10) * (long.n_active + 5 * 1024 + 10) * 4
    # Fewer feature rows, less memory.
    fewer = estimate_attribution_memory(tiny_model, tset, 1024, max_feature_nodes=256)
    assert fewer.parts["edges"] < long.parts["edges"] / 10 and fewer.total_bytes < long.total_bytes


def test_refuses_before_the_forward_pass_with_a_short_message_and_settings_that_fit(tiny_model, tset, monkeypatch):
    ids = tiny_model.prompt(PROMPT).input_ids
    # With the prior set to this prompt's true rate, the refusal's suggestions can be checked exactly.
    n_active = attribute(tiny_model, tset, ids, max_feature_nodes=0, progress=False).n_active
    monkeypatch.setattr(attribution_memory, "active_per_token", lambda tset: n_active / len(ids))
    est = estimate_attribution_memory(tiny_model, tset, len(ids), max_feature_nodes=None)
    assert est.n_active == n_active
    no_rows = estimate_attribution_memory(tiny_model, tset, len(ids), max_feature_nodes=0)
    budget = (est.total_bytes + no_rows.total_bytes) // 2

    def no_forward(*args, **kwargs):
        raise AssertionError("the forward pass ran although the prompt could not fit")

    real_forward = attribution.capture_forward
    monkeypatch.setattr(attribution, "capture_forward", no_forward)
    with pytest.raises(AttributionMemoryError) as info:
        attribute(tiny_model, tset, ids, max_feature_nodes=None, memory_budget=budget, progress=False)
    message = str(info.value)
    assert isinstance(info.value, GemscopeError) and isinstance(info.value, AttributionError)
    assert len(message) < 400 and "\n" not in message
    assert f"{len(ids)}-token prompt" in message and "available" in message
    tokens = int(re.search(r"at most (\d+) tokens", message).group(1))
    rows = int(re.search(r"max_feature_nodes=(\d+)", message).group(1))
    assert 1 <= tokens < len(ids) and 0 <= rows < est.n_active
    monkeypatch.setattr(attribution, "capture_forward", real_forward)
    assert estimate_attribution_memory(tiny_model, tset, tokens, max_feature_nodes=None).total_bytes <= budget
    graph = attribute(tiny_model, tset, ids, max_feature_nodes=rows, memory_budget=budget, progress=False)
    assert graph.n_selected == rows and graph.info["memory_estimate_bytes"] <= budget


def test_exact_count_is_checked_before_the_rows(tiny_model, tset, monkeypatch):
    # A set whose stated L0 is far below what fires passes the prior check; the exact count must stop it.
    monkeypatch.setattr(attribution_memory, "active_per_token", lambda tset: 0.01)
    ids = tiny_model.prompt(PROMPT).input_ids
    low = estimate_attribution_memory(tiny_model, tset, len(ids), max_feature_nodes=None)

    def no_rows(*args, **kwargs):
        raise AssertionError("rows started although the exact count does not fit")

    monkeypatch.setattr(attribution, "pull_back", no_rows)
    with pytest.raises(AttributionMemoryError, match="active features"):
        attribute(tiny_model, tset, ids, max_feature_nodes=None, memory_budget=low.total_bytes + 1, progress=False)


def test_default_budget_is_the_memory_available_now():
    free = available_memory()
    assert free is not None and free > 0
    with open("/proc/meminfo") as fh:
        meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
    assert free <= meminfo["MemTotal"]


def test_chunked_ranking_equals_the_whole_matrix(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    edge = torch.randn(60, 400, generator=gen) * (torch.rand(60, 400, generator=gen) < 0.2)
    row_to_node = torch.cat([torch.arange(50), torch.arange(390, 400)])
    edge[:, 390:] = 0
    logit_p = torch.softmax(torch.randn(10, generator=gen), 0)
    whole = compute_partial_influences(edge, logit_p, row_to_node)
    monkeypatch.setattr(attribution, "RANKING_CHUNK_BYTES", 400 * 4 * 7)  # 7 rows per chunk
    chunked = compute_partial_influences(edge, logit_p, row_to_node)
    assert whole.abs().sum() > 0
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)


def _peak_rss_above_now(fn) -> float:
    """Peak resident memory (bytes) ``fn()`` adds above the resident memory before it (Linux ``clear_refs``)."""
    def status(key: str) -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))

    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    before = status("VmRSS:")
    fn()
    return status("VmHWM:") - before


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_ranking_a_large_matrix_holds_one_chunk_not_a_normalised_copy():
    # 2,010 rows x 32,000 columns (257 MB): features in four layers, each reading only lower layers, and 10 logits.
    gen = torch.Generator().manual_seed(0)
    n_rows, n_cols, n_feat = 2010, 32000, 2000
    layer_of = torch.where(torch.arange(n_cols) < n_feat, torch.arange(n_cols) * 4 // n_feat, -1)  # -1: not a feature
    edge = torch.randn(n_rows, n_cols, generator=gen)
    edge[:n_feat] *= layer_of[None, :] < layer_of[:n_feat, None]
    edge[:, -10:] = 0
    row_to_node = torch.cat([torch.arange(n_feat), torch.arange(n_cols - 10, n_cols)])
    logit_p = torch.softmax(torch.randn(10, generator=gen), 0)
    influence: list[torch.Tensor] = []
    extra = _peak_rss_above_now(lambda: influence.append(compute_partial_influences(edge, logit_p, row_to_node)))
    assert extra < edge.nbytes // 2, f"{extra / 2**20:.0f} MB for a {edge.nbytes / 2**20:.0f} MB matrix"
    part = edge.abs()
    part /= part.sum(dim=1, keepdim=True)
    prod, expected = torch.zeros(n_cols), torch.zeros(n_cols)
    prod[-10:] = logit_p
    for _ in range(5):  # logits, then four layers of features
        prod = prod[row_to_node] @ part
        expected += prod
    assert not (prod[row_to_node] @ part).any()
    torch.testing.assert_close(influence[0], expected, rtol=1e-5, atol=1e-9)


def test_graph_with_chunked_ranking_and_unselected_sums_is_the_same(tiny_model, tset, monkeypatch):
    kwargs = {"max_feature_nodes": 40, "batch_size": 8, "update_interval": 2, "progress": False}
    ref = attribute(tiny_model, tset, PROMPT, **kwargs)
    assert ref.n_active > 40
    monkeypatch.setattr(attribution, "RANKING_CHUNK_BYTES", 4 * ref.n_active * 3)
    got = attribute(tiny_model, tset, PROMPT, **kwargs)
    assert torch.equal(got.selected_features, ref.selected_features)
    torch.testing.assert_close(got.adjacency_matrix, ref.adjacency_matrix, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.unselected_input, ref.unselected_input, rtol=1e-5, atol=1e-6)


def _largest_tensor_in(tb) -> int:
    """Elements of the largest tensor any frame of traceback ``tb`` still holds in its locals."""
    largest = 0
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, torch.Tensor):
                largest = max(largest, value.numel())
            elif isinstance(value, (list, tuple)):
                largest = max([largest, *(v.numel() for v in value if isinstance(v, torch.Tensor))])
        tb = tb.tb_next
    return largest


def test_an_interrupt_leaves_no_buffer_held_by_the_traceback(tiny_model, tset, monkeypatch):
    real = attribution.pull_back
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(attribution, "pull_back", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        attribute(tiny_model, tset, PROMPT, max_feature_nodes=None, batch_size=4, progress=False)
    # The edge matrix alone is rows × (active + errors + tokens + logits); nothing near that size is left.
    assert _largest_tensor_in(info.value.__traceback__) < 5000
    assert info.traceback[-1].name == "interrupted"  # the traceback still says where it stopped


def test_budget_fields_and_bar_label(tiny_model, tset):
    est = estimate_attribution_memory(tiny_model, tset, 32)
    label = attribution._bar_desc(est, 8 * 2**30)
    assert label.startswith("Attribution rows (memory ≈") and "of 8.0 GB free" in label
    assert set(est.parts) == {"runtime", "model", "transcoders", "forward", "nodes", "edges", "ranking", "batch",
                              "graph"}
    assert attribution_memory.format_bytes(3 * 2**20) == "3 MB"


def _smaps_rss(address: int) -> int:
    """The resident bytes of the mapping holding ``address``, as the kernel reports them (/proc/self/smaps)."""
    with open("/proc/self/smaps") as fh:
        inside = False
        for line in fh:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("no mapping holds the address")


def test_absent_bytes_are_the_pages_not_yet_read_as_smaps_counts_them(tmp_path):
    path = tmp_path / "weights.bin"
    np.arange(3 << 20, dtype=np.float32).tofile(path)  # 12 MiB, in the page cache after the write
    mapped = np.memmap(path, dtype=np.float32, mode="c")  # a private file mapping, as safetensors loads
    whole = [(mapped.ctypes.data, mapped.nbytes)]
    assert absent_bytes(whole) == mapped.nbytes - _smaps_rss(mapped.ctypes.data) == mapped.nbytes
    float(mapped[: 1 << 20].sum())  # read the first third
    assert absent_bytes(whole) == mapped.nbytes - _smaps_rss(mapped.ctypes.data)
    assert absent_bytes(whole) == pytest.approx(mapped.nbytes * 2 / 3, abs=4096)
    # Overlapping ranges count once; an empty one counts nothing.
    assert absent_bytes([*whole, (mapped.ctypes.data + 4096, 8192), (mapped.ctypes.data, 0)]) == absent_bytes(whole)


def _unread(mapped_address: int) -> None:
    """Make the file mapping holding ``mapped_address`` look freshly loaded: its pages leave the resident set
    (``madvise(MADV_DONTNEED)``; unmodified private file pages are read back from the file when touched). A large
    checkpoint loads like that; the tiny one is small enough that loading it touches every page."""
    with open("/proc/self/maps") as fh:
        for line in fh:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= mapped_address < hi:
                assert line.split()[1] == "rw-p" and line.rstrip().endswith(".safetensors"), line
                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                assert libc.madvise(lo, hi - lo, 4) == 0, os.strerror(ctypes.get_errno())  # 4: MADV_DONTNEED
                return
    raise AssertionError("the weights are not memory-mapped")


def test_a_first_call_counts_the_model_weights_its_forward_makes_resident(tiny_model_path, tset, monkeypatch):
    gm = load_model(tiny_model_path, device="cpu", dtype="float32")  # its own copy: its pages can be dropped
    _unread(gm.model.get_input_embeddings().weight.data_ptr())
    weights = sum(t.numel() * 4 for t in {p.data_ptr(): p for p in gm.model.parameters()}.values())
    ids = gm.prompt(PROMPT).input_ids
    first = estimate_attribution_memory(gm, tset, len(ids), max_feature_nodes=None)
    assert first.parts["model"] == pytest.approx(weights, rel=0.05)
    graph = attribute(gm, tset, ids, max_feature_nodes=None, progress=False)
    later = estimate_attribution_memory(gm, tset, len(ids), max_feature_nodes=None, n_active=graph.n_active)
    assert later.parts["model"] < 0.05 * weights and later.parts["transcoders"] == 0
    # The estimate the call showed and checked kept the weights as they were before its forward pass.
    shown = attribution_memory.with_active(first, gm, tset, graph.n_active, None)
    assert graph.info["memory_estimate_bytes"] == shown.total_bytes
    assert shown.total_bytes - later.total_bytes == first.parts["model"] - later.parts["model"] + first.parts[
        "transcoders"]
    # Where the pages cannot be read, the model counts as resident and the whole set as not (the cautious side).
    monkeypatch.setattr(attribution_memory, "absent_bytes", lambda ranges: None)
    blind = estimate_attribution_memory(gm, tset, len(ids), max_feature_nodes=None)
    set_bytes = sum(b.numel() * b.element_size() for d in tset.dictionaries for b in d.buffers())
    assert blind.parts["model"] == 0 and blind.parts["transcoders"] == set_bytes
