"""Multi-process training under ``torchrun``: process-group set-up, rank-0 helpers, reductions.

``torchrun --nproc_per_node N -m trkit_vlm train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
we then use DistributedDataParallel with the ``nccl`` backend on CUDA and ``gloo`` on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from trkit.errors import InputError, TrkitError

T = TypeVar("T")


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU."""
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(pref)
    except (RuntimeError, TypeError):
        raise InputError(f"device {pref!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {pref!r} asked for but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {pref!r} asked for but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if world <= 1:
        return DistInfo(device=device)
    if dist.is_initialized():
        return DistInfo(rank, world, local_rank, device, initialized_here=False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank, device, initialized_here=True)


def shutdown(info: DistInfo) -> None:
    """Leave the process group if this module joined it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T], info: DistInfo) -> T | None:
    """``fn()`` on rank 0 alone (``None`` on the other ranks). When it raises, every rank raises, so the
    other ranks stop instead of waiting forever at their next collective (rank 0 keeps its own error)."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except Exception as err:  # whatever it is, the other ranks must hear of it before it propagates
            error = err
    message = broadcast_object(None if error is None else " ".join(str(error).split()) or type(error).__name__, info)
    if error is not None:
        raise error
    if message is not None:
        raise TrkitError(f"rank 0 stopped: {message}")
    return result


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise sum over ranks (a copy; the input is unchanged)."""
    out = values.detach().clone()
    if info.distributed:
        dev = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
        out = out.to(dev)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out = out.to(values.device)
    return out
