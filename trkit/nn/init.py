"""Variance-preserving random initialisation of tensor-ring cores.

A reconstructed entry is a sum of ``prod_k r_k`` products of ``d`` core entries (one per core).
With independent zero-mean cores of standard deviation ``s_k`` the products are uncorrelated, so

    Var(W[i, j]) = (prod_k r_k) * prod_k s_k^2.

Choosing ``s_k = (target_var / prod_k r_k) ** (1 / (2 d))`` for every core gives the reconstructed
weight exactly the target variance (Kaiming, Xavier, or torch's ``nn.Linear`` default) whatever
the ranks; drawing cores i.i.d. with a guessed scale does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from trkit.errors import InputError

__all__ = ["target_std", "core_std", "init_ring_"]

_SCHEMES = ("kaiming", "xavier", "torch")

# the names torch.nn.init.calculate_gain accepts
Nonlinearity = Literal[
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
]


def target_std(
    fan_in: int, fan_out: int, scheme: str | float = "kaiming", nonlinearity: Nonlinearity = "relu"
) -> float:
    """Standard deviation a dense ``(fan_out, fan_in)`` weight would get.

    Args:
        scheme: ``"kaiming"`` (``gain / sqrt(fan_in)``, torch's ``kaiming_normal_``),
            ``"xavier"`` (``gain * sqrt(2 / (fan_in + fan_out))``, ``xavier_normal_``),
            ``"torch"`` (``1 / sqrt(3 fan_in)``, the std of ``nn.Linear``'s default
            ``kaiming_uniform_(a=sqrt(5))``), or a float (used as the std itself).
        nonlinearity: passed to ``torch.nn.init.calculate_gain`` for kaiming/xavier.
    """
    if isinstance(scheme, (int, float)) and not isinstance(scheme, bool):
        if scheme < 0:
            raise InputError(f"init std must be >= 0, got {scheme}")
        return float(scheme)
    if fan_in < 1 or fan_out < 1:
        raise InputError(f"fan_in and fan_out must be >= 1, got {fan_in}, {fan_out}")
    if scheme == "kaiming":
        return nn.init.calculate_gain(nonlinearity) / math.sqrt(fan_in)
    if scheme == "xavier":
        return nn.init.calculate_gain(nonlinearity) * math.sqrt(2.0 / (fan_in + fan_out))
    if scheme == "torch":
        return 1.0 / math.sqrt(3.0 * fan_in)
    raise InputError(f"unknown init scheme {scheme!r}; expected one of {_SCHEMES} or a float std")


def core_std(std: float, ranks: Sequence[int]) -> float:
    """Per-core std so that a ring with bond ``ranks`` reconstructs entries of std ``std``."""
    d = len(ranks)
    if d == 0:
        raise InputError("a ring needs at least one core")
    if std == 0:
        return 0.0
    # Work in logs: prod(ranks) overflows nothing here, but std**2 / prod can underflow for long rings.
    log_s = (2.0 * math.log(std) - sum(math.log(r) for r in ranks)) / (2.0 * d)
    return math.exp(log_s)


@torch.no_grad()
def init_ring_(cores: Sequence[torch.Tensor], std: float, generator: torch.Generator | None = None) -> None:
    """Fill ``cores`` (shapes ``(r_k, n_k, r_{k+1})``) in place with N(0, s^2), ``s = core_std``."""
    ranks = [int(c.shape[0]) for c in cores]
    s = core_std(std, ranks)
    for c in cores:
        c.normal_(0.0, s, generator=generator)
