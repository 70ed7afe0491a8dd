"""A corpus scan shared by several processes with ``torch.distributed``: one process per GPU, or several on CPU.

Launch the same script in every process, e.g. on one machine with two GPUs (or two CPU processes)::

    torchrun --nproc_per_node 2 scan.py          # or: accelerate launch --num_processes 2 scan.py

where ``scan.py`` loads the model and SAE (``load_model(..., device=f"cuda:{LOCAL_RANK}")``) and calls
``FeatureStats.scan(gm, sae, corpus)``. When a process group is initialised (``torch.distributed
.init_process_group``; the scan initialises one itself when ``torchrun``'s environment is set and none exists:
NCCL when the SAE is on CUDA, gloo otherwise), the scan:

1. refuses to start unless every process has the same scan identity (model and SAE weights, corpus, parameters:
   :func:`~gemscope_widgets.backend.stats.store.cache_key`), naming the processes that differ;
2. cuts each block of documents into the same batches as a one-process scan and runs batch ``j`` in process
   ``j mod world``; every process keeps its own bounded state on its own device;
3. checkpoints every process's state after every block (``<cache folder>/shard-<rank>-of-<world>``); an
   interrupted scan resumes from the last block all processes finished;
4. merges the states exactly into process 0 (counts add, maxima, histograms brought to one scale, example
   tables by (key, document)): the result equals the one-process scan of the same corpus, same examples in
   the same order. Process 0 saves it to the cache; every process returns it (the others read it back from
   the cache folder, or get ``None`` with ``cache=False``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.stats.scan_state import ScanState
from gemscope_widgets.errors import GemscopeError

if TYPE_CHECKING:
    from gemscope_widgets.backend.stats.scan_state import ScanState


def _dist() -> Any:
    import torch.distributed as dist

    return dist


_OWN_GROUP = False  # whether the process group was initialised here (and is to be destroyed here)


def process_group(device: torch.device) -> tuple[int, int]:
    """``(rank, world)`` of the current process group, initialising one from ``torchrun``'s environment
    (``WORLD_SIZE`` > 1) when there is none (:func:`release_group` destroys it); ``(0, 1)`` for a one-process
    scan."""
    global _OWN_GROUP
    dist = _dist()
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
            return 0, 1
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _OWN_GROUP = True
    return dist.get_rank(), dist.get_world_size()


def release_group() -> None:
    """Destroy the process group :func:`process_group` initialised, if it did (a group the caller made is the
    caller's). A live gloo group at interpreter exit can abort the process ("terminate called without an active
    exception")."""
    global _OWN_GROUP
    dist = _dist()
    if _OWN_GROUP and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _OWN_GROUP = False


def _comm_device(device: torch.device) -> torch.device:
    return device if _dist().get_backend() == "nccl" else torch.device("cpu")


def check_same_scan(key: Mapping[str, Any], device: torch.device) -> None:
    """Raise :class:`GemscopeError` in every process unless all processes scan the same thing."""
    dist = _dist()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).digest()
    mine = torch.tensor(list(digest), dtype=torch.uint8, device=_comm_device(device))
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    parts = {name: hashlib.sha256(json.dumps(key[name], sort_keys=True, default=str).encode()).digest()
             for name in key}
    names = torch.tensor([b for d in parts.values() for b in d], dtype=torch.uint8, device=mine.device)
    every_names = [torch.zeros_like(names) for _ in every]
    dist.all_gather(every_names, names)
    differ = [r for r, d in enumerate(every) if not torch.equal(d, every[0])]
    if differ:
        fields = [name for i, name in enumerate(parts) if any(
            not torch.equal(n[32 * i : 32 * i + 32], every_names[0][32 * i : 32 * i + 32]) for n in every_names)]
        raise GemscopeError(
            f"The processes of this distributed scan disagree on {', '.join(fields)} (processes {differ} differ "
            "from process 0): every process must load the same model, SAE and corpus with the same parameters."
        )


def agree_on_start(next_doc: int, device: torch.device) -> bool:
    """Whether every process resumes from the same block (else all must start over)."""
    dist = _dist()
    mine = torch.tensor([next_doc], dtype=torch.int64, device=_comm_device(device))
    lo, hi = mine.clone(), mine.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return int(lo) == int(hi)


def total_tokens(n_tokens: int, device: torch.device) -> int:
    """Tokens scanned by all processes together."""
    dist = _dist()
    t = torch.tensor([n_tokens], dtype=torch.int64, device=_comm_device(device))
    dist.all_reduce(t)
    return int(t)


def barrier() -> None:
    _dist().barrier()


def merge_into_first(state: ScanState) -> None:
    """Send every process's state to process 0 and merge it there (exact; see :meth:`ScanState.merge_from`)."""
    dist = _dist()
    rank, world = dist.get_rank(), dist.get_world_size()
    comm = _comm_device(state.device)
    if rank == 0:
        for src in range(1, world):
            other = ScanState(state.W, state.p, comm)
            for tensor in other.state_dict().values():
                dist.recv(tensor, src=src)
            n = torch.zeros(1, dtype=torch.int64, device=comm)
            dist.recv(n, src=src)
            other.n_tokens = int(n)
            state.merge_from(other)
    else:
        for tensor in state.state_dict().values():
            dist.send(tensor.to(comm).contiguous(), dst=0)
        dist.send(torch.tensor([state.n_tokens], dtype=torch.int64, device=comm), dst=0)


__all__ = ["agree_on_start", "barrier", "check_same_scan", "merge_into_first", "process_group", "total_tokens"]
