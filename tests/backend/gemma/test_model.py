"""load_model: sources, both Gemma 3 classes, dtype rules, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gemscope_widgets.backend.gemma.model import cast_model, load_model, model_size, resolve_dtype, wrap_model
from gemscope_widgets.errors import ModelLoadError, UnsupportedDtypeError


@pytest.mark.parametrize("dtype", ["float16", "fp16", "half", torch.float16])
def test_fp16_is_refused_with_a_clear_message(tiny_model_path, dtype):
    with pytest.raises(UnsupportedDtypeError, match="float16.*bfloat16"):
        load_model(tiny_model_path, dtype=dtype)


def test_fp16_module_is_refused_when_wrapped(tiny_model):
    half = type(tiny_model.model)(tiny_model.model.config).to(torch.float16)
    with pytest.raises(UnsupportedDtypeError, match="float16"):
        wrap_model(half, tiny_model.tokenizer, "x")


def test_auto_dtype_is_fp32_on_cpu_and_bf16_on_cuda():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(UnsupportedDtypeError, match="Unsupported dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_both_model_classes_resolve_their_layers(tiny_model, tiny_vlm_model):
    assert type(tiny_model.model).__name__ == "Gemma3ForCausalLM"
    assert type(tiny_vlm_model.model).__name__ == "Gemma3ForConditionalGeneration"
    for gm in (tiny_model, tiny_vlm_model):
        assert type(gm.text_model).__name__ == "Gemma3TextModel"
        assert gm.n_layers == 4 and gm.d_model == 64
        assert gm.layers is gm.text_model.layers
        assert gm.final_norm is gm.text_model.norm
        assert gm.lm_head.weight.shape == (512, 64)
    # The conditional-generation class keeps its decoder under model.language_model (detected, not assumed).
    assert tiny_vlm_model.text_model is tiny_vlm_model.model.model.language_model


def test_bf16_load(tiny_model_path):
    gm = load_model(tiny_model_path, dtype="bfloat16", name="t")
    assert gm.dtype == torch.bfloat16
    assert next(gm.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("which", ["Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"])
def test_cast_model_equals_a_fresh_load_without_reading_the_checkpoint(tiny_model_path, tiny_vlm_path, tmp_path,
                                                                        which):
    source = tiny_model_path if which == "Gemma3ForCausalLM" else tiny_vlm_path
    folder = shutil.copytree(source, tmp_path / "ckpt")
    fresh = load_model(folder, dtype="bfloat16", name="t")
    gm = load_model(folder, dtype="float32", name="t")
    shutil.rmtree(folder)  # a copy that read the checkpoint again would fail now
    copy = cast_model(gm, "bfloat16")
    assert type(copy.model).__name__ == which and copy.dtype == torch.bfloat16
    assert copy.tokenizer is gm.tokenizer and copy.name == "t"
    want = dict(fresh.model.state_dict()) | dict(fresh.model.named_buffers())
    got = dict(copy.model.state_dict()) | dict(copy.model.named_buffers())
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    assert copy.lm_head.weight.data_ptr() == copy.embed.weight.data_ptr()  # still tied
    assert next(gm.model.parameters()).dtype == torch.float32  # the source is untouched
    with pytest.raises(UnsupportedDtypeError, match="float16"):
        cast_model(gm, "float16")


def test_loading_draws_no_hugging_face_bar_and_restores_its_settings(tiny_model_path, capfd):
    # Its "Loading weights" bar is an ipywidgets bar in a notebook, which a saved notebook reopens as "model not
    # found"; the package's own bars end as text (backend/progress.py).
    from transformers.utils import logging as hf_logging

    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    gm = load_model(tiny_model_path, dtype="float32", name="t")
    cast_model(gm, "bfloat16")
    assert "Loading weights" not in capfd.readouterr().err
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before


def test_bad_sources_get_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a local folder nor a Hugging Face id"):
        load_model("not a model name!")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="cuda"):
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        load_model(tmp_path, device="cuda")


def _populate_hub_cache(cache: Path, repo_id: str, files: Path) -> None:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_loads_from_the_cache_offline(tiny_model_path, tmp_path, monkeypatch):
    _populate_hub_cache(tmp_path, "someorg/gemma-3-tiny-it", tiny_model_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    # transformers 4.x copies the cache folder into its own module at import time.
    import transformers.utils.hub as transformers_hub

    monkeypatch.setattr(transformers_hub, "TRANSFORMERS_CACHE", str(tmp_path), raising=False)
    gm = load_model("someorg/gemma-3-tiny-it", device="cpu")
    assert gm.name == "someorg/gemma-3-tiny-it"
    assert gm.is_instruct
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model("someorg/not-cached", device="cpu")


def test_model_size_parsing():
    assert model_size("google/gemma-3-270m") == "270m"
    assert model_size("google/gemma-3-1b-it") == "1b"
    assert model_size("gemma-v3-27b-pt") == "27b"
    assert model_size("tiny-gemma-3") is None


@pytest.mark.real_model
def test_real_270m_loads_from_the_pypi_package_and_continues_sensibly(real_model):
    gm = real_model
    assert gm.name == "google/gemma-3-270m"
    assert (gm.n_layers, gm.d_model) == (18, 640)
    assert not gm.is_instruct
    prompt = gm.prompt("The capital of France is")
    with torch.inference_mode():
        out = gm.model.generate(prompt.input_ids[None], max_new_tokens=12, do_sample=False)
    text = gm.tokenizer.decode(out[0, len(prompt) :])
    assert "France" in text or "Paris" in text, text
    # A natural sentence has a low loss on the real weights (random weights give ~12.5 = ln 262144).
    ids = gm.prompt("The cat sat on the mat. It was a sunny day and the children were playing outside.").input_ids
    with torch.inference_mode():
        loss = gm.model(ids[None], labels=ids[None]).loss
    assert float(loss) < 4.5, float(loss)
