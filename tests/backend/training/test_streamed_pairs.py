"""Transcoder training from activations on disk: bfloat16 memory-mapped files, the same fit as from memory, a group
of layers at a time, and nothing held after an interrupt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gemscope_widgets.backend.stats.corpus import default_corpus
from gemscope_widgets.backend.training import stacked_fit, transcoder_fit
from gemscope_widgets.backend.training.activations import token_windows
from gemscope_widgets.backend.training.jumprelu import StackedJumpReLU
from gemscope_widgets.backend.training.transcoders import (
    collect_mlp_pairs,
    fit_transcoders,
    store_mlp_pairs,
    train_transcoders,
)

OPTIONS = {"width": 32, "target_l0": 4, "steps": 40, "batch_size": 64, "resample_every": 10, "progress": False}


@pytest.fixture(scope="module")
def windows(tiny_model):
    return token_windows(tiny_model.tokenizer, default_corpus(max_docs=60), 64, max_windows=20)


@pytest.fixture(scope="module")
def stored(tiny_model, windows, tmp_path_factory):
    return store_mlp_pairs(tiny_model, windows, [0, 2, 3], tmp_path_factory.mktemp("pairs"), max_tokens=1000,
                           batch_size=4, progress=False)


def _mapped_files() -> set[str]:
    return {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if len(line.split()) >= 6}


def test_stored_pairs_are_bfloat16_files_mapped_from_disk(stored, tiny_model, windows):
    d = tiny_model.d_model
    assert stored.n == 1000 and stored.layers == (0, 2, 3)
    for f in (*stored.inputs.files, *stored.outputs.files):
        assert f.stat().st_size == 1000 * d * 2  # bfloat16, nothing else in the file
    x = stored.inputs[1]
    assert x.dtype == torch.bfloat16 and x.shape == (1000, d)
    assert str(stored.inputs.files[1]) in _mapped_files()  # memory-mapped, not read into memory
    del x
    # Written chunk by chunk, they hold exactly what one in-memory pass collects.
    xs, ys = collect_mlp_pairs(tiny_model, windows, [0, 2, 3], max_tokens=1000, dtype=torch.bfloat16, progress=False)
    for i in range(3):
        assert torch.equal(stored.inputs[i], xs[i]) and torch.equal(stored.outputs[i], ys[i])


def test_fit_from_disk_a_layer_at_a_time_equals_the_fit_in_memory(stored, tiny_model, windows, monkeypatch):
    xs, ys = collect_mlp_pairs(tiny_model, windows, [0, 2, 3], max_tokens=1000, dtype=torch.bfloat16, progress=False)
    ref, ref_reports = fit_transcoders(xs, ys, layers=[0, 2, 3], **OPTIONS)
    stacks = []
    real = transcoder_fit.fit_stacked

    def recording(x, *args, **kwargs):
        stacks.append(x.shape[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(transcoder_fit, "fit_stacked", recording)
    got, got_reports = fit_transcoders(stored.inputs, stored.outputs, layers=[0, 2, 3], layers_at_once=1, **OPTIONS)
    assert stacks == [1, 1, 1]  # never more than one layer's data at once
    for a, b in zip(ref, got):
        for key, value in a.items():
            torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-4 * float(value.abs().max()))
    for a, b in zip(ref_reports, got_reports):
        assert (a.layer, a.resampled, a.steps) == (b.layer, b.resampled, b.steps)
        assert b.fvu == pytest.approx(a.fvu, rel=1e-3) and b.l0 == pytest.approx(a.l0, rel=1e-3)


def test_group_size_follows_the_memory_budget():
    # 96k tokens of a 640-wide model in bfloat16: 246 MB per layer, two layers in the default 512 MiB.
    assert transcoder_fit.layers_per_group(96_000, 640, 640, 2) == 2
    assert transcoder_fit.layers_per_group(96_000, 640, 640, 4) == 1
    assert transcoder_fit.layers_per_group(96_000, 640, 640, 2, budget_bytes=1 << 30) == 4
    assert transcoder_fit.layers_per_group(10**9, 640, 640, 4) == 1


def _largest_tensor_in(tb) -> int:
    largest = 0
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, torch.Tensor):
                largest = max(largest, value.numel())
        tb = tb.tb_next
    return largest


def test_an_interrupt_in_training_frees_its_buffers_and_scratch_files(tiny_model, monkeypatch, tmp_path):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path / "cache"))
    real = StackedJumpReLU.normalise_decoder
    steps = []

    def interrupted(self):
        steps.append(1)
        if len(steps) == 5:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(StackedJumpReLU, "normalise_decoder", interrupted)
    texts = default_corpus(max_docs=60)
    with pytest.raises(KeyboardInterrupt) as info:
        train_transcoders(tiny_model, tmp_path / "set", corpus=texts, width=32, target_l0=4, n_tokens=1500,
                          steps=20, batch_size=64, ctx=64, progress=False)
    # The collected activations are 4 layers × 1500 tokens × 64 × 2 sides; no frame keeps anything that large.
    assert _largest_tensor_in(info.value.__traceback__) < 1500 * 64
    assert info.traceback[-1].name == "interrupted"
    assert not list((tmp_path / "cache" / "scratch").iterdir())  # the on-disk activations are gone
    assert not (tmp_path / "set").exists()
    assert stacked_fit.fit_stacked is not None


def test_scratch_left_by_a_killed_training_is_removed_by_the_next(monkeypatch, tmp_path):
    import socket
    import subprocess
    import sys

    from gemscope_widgets.backend.training.transcoders import scratch_folder

    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname().replace(".", "-")
    stale = tmp_path / "scratch" / f"mlp_pairs.{host}.{int(dead.stdout)}.abc"
    stale.mkdir(parents=True)
    (stale / "layer_0.in.bf16").write_bytes(b"\0" * 64)
    other_host = tmp_path / "scratch" / f"mlp_pairs.elsewhere.{int(dead.stdout)}.abc"
    other_host.mkdir()
    mine = scratch_folder()
    assert not stale.exists() and other_host.exists() and mine.is_dir()
    assert scratch_folder() != mine and mine.exists()  # a live process's folder stays


def test_a_model_loaded_for_the_activation_pass_is_released_before_the_fit(tiny_model, tiny_model_path, monkeypatch,
                                                                           tmp_path):
    """Given a loader, the training holds the loaded model through the activation pass only: during the fit no
    reference to it is left (a kernel already holding its own copy does not hold two through the fit), and the
    set equals the one trained from the model itself."""
    import gc
    import weakref

    from gemscope_widgets.backend.gemma.model import load_model
    from gemscope_widgets.backend.training import transcoders as training_module
    from tests.fixtures.models import TINY_NAME

    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path / "cache"))
    loaded: list[weakref.ref] = []
    alive_in_fit: list[bool] = []
    real_fit = training_module.fit_transcoders

    def loader():
        gm = load_model(tiny_model_path, device="cpu", dtype="float32", name=TINY_NAME)
        loaded.append(weakref.ref(gm.model))
        return gm

    def fit(*args, **kwargs):
        gc.collect()
        alive_in_fit.append(loaded[0]() is not None)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training_module, "fit_transcoders", fit)
    recipe = {"width": 32, "target_l0": 4, "n_tokens": 600, "steps": 10, "batch_size": 64, "ctx": 64,
              "progress": False, "corpus": default_corpus(max_docs=30)}
    from_loader = train_transcoders(loader, tmp_path / "a", **recipe)
    assert alive_in_fit == [False]
    loaded[0] = weakref.ref(tiny_model.model)  # the check sees a model that is still held: the caller's own
    from_model = train_transcoders(tiny_model, tmp_path / "b", **recipe)
    assert alive_in_fit == [False, True]
    from safetensors.torch import load_file

    for a, b in zip(sorted(from_loader.rglob("params.safetensors")), sorted(from_model.rglob("params.safetensors")),
                    strict=True):
        pa, pb = load_file(a), load_file(b)
        assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
