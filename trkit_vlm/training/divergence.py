"""Non-finite losses: how training notices them, the error that stops a diverged run, and JSON without NaN.

A loss that turns NaN or infinite poisons the adapters a step later, and a run that goes on writes
chance-level metrics that look like a result. So every optimiser step checks that the loss of each of
its micro-batches is finite (agreed over all DDP ranks, so they stop or skip together) and, unless
``optim.skip_nonfinite`` asks to skip such steps, the run stops with :class:`TrainingDiverged` and
writes no metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from trkit.errors import TrkitError
from trkit_vlm.training.distributed import DistInfo, all_reduce_sum

__all__ = ["TrainingDiverged", "nonfinite_anywhere", "grads_finite", "diverged", "finite_or_none"]


class TrainingDiverged(TrkitError):
    """The loss or the adapter weights became NaN or infinite; the run wrote no metrics."""


def nonfinite_anywhere(local_bad: bool, info: DistInfo) -> bool:
    """True when this rank or any other saw a non-finite loss in the current optimiser step."""
    flag = torch.tensor([1.0 if local_bad else 0.0], dtype=torch.float64)
    return bool(all_reduce_sum(flag, info).item() > 0)


def grads_finite(params: Iterable[torch.Tensor]) -> bool:
    """Whether every gradient of ``params`` is finite (parameters without a gradient count as finite)."""
    grads = [p.grad for p in params if p.grad is not None]
    return all(bool(torch.isfinite(g).all()) for g in grads)


def diverged(what: str, epoch: int, step: int, lr: float) -> TrainingDiverged:
    """The error for a run that diverged at ``epoch`` (1-based) and optimiser ``step`` (1-based)."""
    return TrainingDiverged(
        f"training diverged: {what} at epoch {epoch}, step {step} (lr {lr:.4g}); no metrics were written. "
        "Lower optim.lr, set optim.max_grad_norm, or set optim.skip_nonfinite=true to skip such steps"
    )


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts and lists too) replaced by None, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value
