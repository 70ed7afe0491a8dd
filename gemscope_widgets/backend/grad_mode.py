"""Gradients on, whatever the caller's autograd mode: the one way gradient-based tools enter autograd.

Notebooks often run analysis under ``torch.inference_mode()`` or ``torch.no_grad()``. Inside those, a tool that
needs a backward pass (feature dependence by gradient × activation, training) would build no graph and end in
torch's "element 0 of tensors does not require grad". :func:`gradients_on` turns inference mode off and gradients
on for its block only; the caller's mode is restored when the block ends, also after an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def gradients_on() -> Iterator[None]:
    """``torch.inference_mode(False)`` and ``torch.enable_grad()`` for the block (PyTorch autograd modes).

    Tensors made before the block under inference mode stay inference tensors: use them as inputs (read-only),
    never update them in place inside the block.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield
