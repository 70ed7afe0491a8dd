"""Weights offloaded by accelerate (``device_map`` with ``"cpu"``/``"disk"``), made resident for code that reads them.

A module offloaded through accelerate keeps its parameters on the ``meta`` device; its ``AlignDevicesHook`` loads
them just before the module's forward and drops them just after. Code that reads weights outside a forward
(the attribution's frozen attention ``W_O``/``W_V``, the norms' gains, the unembedding) must load them the same
way: :func:`resident` runs the hooks' own load and unload around a block, one module at a time, so an offloaded
model stays offloaded everywhere else. Source: accelerate's ``hooks.AlignDevicesHook`` (``pre_forward`` /
``post_forward`` with ``offload=True``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


def offloads(hook: Any) -> bool:
    """Whether an accelerate hook (or one of a sequence of hooks) loads offloaded weights before forward."""
    if hook is None:
        return False
    return bool(getattr(hook, "offload", False)) or any(offloads(h) for h in getattr(hook, "hooks", ()))


def offloaded_modules(root: nn.Module) -> list[str]:
    """Names (as in ``root.named_modules()``) of the modules whose weights accelerate loads only for a forward."""
    return [name for name, m in root.named_modules() if offloads(getattr(m, "_hf_hook", None))]


@contextmanager
def resident(root: nn.Module, *modules: nn.Module) -> Iterator[None]:
    """Within the block, every parameter of ``modules`` (submodules of ``root``) is loaded on its execution device.

    The offloading modules that contain one of ``modules`` or lie inside one are loaded with their hook's
    ``pre_forward`` and unloaded with its ``post_forward`` when the block ends, also after an error. Nothing
    happens for a model without offloading. Tensors read inside the block and kept afterwards must be copies
    (``.clone()``, or a dtype conversion): the module's own parameters go back to ``meta``.
    """
    names = {id(m): name for name, m in root.named_modules()}
    wanted = [names[id(m)] for m in modules]

    def related(name: str) -> bool:
        return any(w == "" or name == w or w.startswith(name + ".") or name.startswith(w + ".") for w in wanted)

    hooked = [m for name, m in root.named_modules() if offloads(getattr(m, "_hf_hook", None)) and related(name)]
    loaded: list[nn.Module] = []
    try:
        for module in hooked:
            _hook(module).pre_forward(module)
            loaded.append(module)
        yield
    finally:
        for module in reversed(loaded):
            _hook(module).post_forward(module, None)


def _hook(module: nn.Module) -> Any:
    """The accelerate hook attached to ``module`` (``module._hf_hook``)."""
    return getattr(module, "_hf_hook")  # noqa: B009 - a module attribute mypy would read as Tensor | Module
