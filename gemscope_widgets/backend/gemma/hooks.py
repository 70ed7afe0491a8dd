"""Registering hooks so that they are always removed, and stopping a forward pass early."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import cast

import torch
from torch import nn

from gemscope_widgets.backend.gemma.sites import Site

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


class StopForward(Exception):
    """Raised from a hook to end the forward pass once the deepest activation needed is computed."""


def _output_hook(fn: HookFn, owner: int) -> Callable[..., object]:
    def hook(module: nn.Module, args: tuple[object, ...], output: object) -> object:
        if threading.get_ident() != owner:
            return None
        # transformers v5 layers return a Tensor, v4 a tuple whose first element is the hidden state.
        tensor = cast(torch.Tensor, output[0] if isinstance(output, tuple) else output)
        new = fn(tensor)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def _input_hook(fn: HookFn, owner: int) -> Callable[..., object]:
    def hook(module: nn.Module, args: tuple[object, ...]) -> tuple[object, ...] | None:
        if threading.get_ident() != owner:
            return None
        new = fn(cast(torch.Tensor, args[0]))
        return None if new is None else (new, *args[1:])

    return hook


@contextlib.contextmanager
def hooked(*pairs: tuple[Site, HookFn]) -> Iterator[None]:
    """Attach ``fn`` at each site for the duration of the block; removed on every exit path.

    ``fn`` receives the activation; returning a tensor replaces it, returning ``None`` leaves it.
    Hooks act only on forward passes run by the thread that entered the block: a heatmap computed in the
    kernel while a steering widget generates in its own thread neither sees nor stops the other's pass.
    """
    owner = threading.get_ident()
    handles = []
    try:
        for site, fn in pairs:
            if site.kind == "output":
                handles.append(site.module.register_forward_hook(_output_hook(fn, owner)))
            else:
                handles.append(site.module.register_forward_pre_hook(_input_hook(fn, owner)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def stop_after(module: nn.Module) -> tuple[Site, HookFn]:
    """A pair for :func:`hooked` that ends the forward pass after ``module`` has run."""

    def stop(_: torch.Tensor) -> None:
        raise StopForward

    return Site(hook_point="<stop>", layer=-1, module=module, kind="output"), stop
