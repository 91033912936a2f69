"""CrossLayerTR: the weights of many layers stored as one tensor ring.

``n_layers`` matrices ``W_l`` of shape ``(d_in, d_out)`` are the slices of a 3-way tensor
``T[i, j, l]`` kept as three cores::

    G_in    (R1, d_in,  R2)   shared by all layers
    G_out   (R2, d_out, R3)   shared by all layers
    G_layer (R3, L,     R1)   G_layer[:, l, :] belongs to layer l
    W_l[i, j] = trace(G_in[:, i, :] @ G_out[:, j, :] @ G_layer[:, l, :])
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from trkit import contract as _contract
from trkit.ring import TensorRing

__all__ = ["CrossLayerTR"]


class CrossLayerTR(nn.Module):
    """``n_layers`` linear maps ``d_in -> d_out`` sharing two tensor-ring cores.

    Args:
        d_in, d_out, n_layers: matrix shape and how many layers share the ring.
        ranks: ``(R1, R2, R3)`` or one int for all three bonds.
        bias: a per-layer bias of shape ``(n_layers, d_out)`` (zero-initialised).
    """

    def __init__(self, d_in: int, d_out: int, n_layers: int, ranks, bias: bool = True,
                 dtype=None, device=None):
        super().__init__()
        r1, r2, r3 = _three_ranks(ranks)
        for name, v in (("d_in", d_in), ("d_out", d_out), ("n_layers", n_layers)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.d_in, self.d_out, self.n_layers = int(d_in), int(d_out), int(n_layers)
        self.ranks = (r1, r2, r3)
        kw = {"dtype": dtype, "device": device}
        self.g_in = nn.Parameter(torch.empty(r1, d_in, r2, **kw))
        self.g_out = nn.Parameter(torch.empty(r2, d_out, r3, **kw))
        self.g_layer = nn.Parameter(torch.empty(r3, n_layers, r1, **kw))
        self.bias = nn.Parameter(torch.zeros(n_layers, d_out, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        """Draw cores so each reconstructed entry has standard deviation ``std``
        (default Kaiming-uniform's ``1/sqrt(3 d_in)``... i.e. ``sqrt(1/(3*d_in))``)."""
        if std is None:
            std = math.sqrt(1.0 / (3.0 * self.d_in))
        r1, r2, r3 = self.ranks
        # Entry = sum over r1*r2*r3 products of three i.i.d. N(0, s^2) factors: var = r1 r2 r3 s^6.
        s = (std ** 2 / (r1 * r2 * r3)) ** (1.0 / 6.0)
        with torch.no_grad():
            for p in (self.g_in, self.g_out, self.g_layer):
                p.normal_(0.0, s)

    @property
    def n_params(self) -> int:
        r1, r2, r3 = self.ranks
        n = r1 * self.d_in * r2 + r2 * self.d_out * r3 + r3 * self.n_layers * r1
        return n + (self.n_layers * self.d_out if self.bias is not None else 0)

    def ring(self) -> TensorRing:
        """The stacked tensor ``(d_in, d_out, n_layers)`` as a TensorRing (shares storage)."""
        return TensorRing([self.g_in, self.g_out, self.g_layer], validate=False)

    def weight(self, layer: int) -> torch.Tensor:
        """Dense ``W_layer`` of shape ``(d_in, d_out)``."""
        self._check_layer(layer)
        return _contract.contract("aib,bjc,ca->ij", self.g_in, self.g_out, self.g_layer[:, layer, :])

    def weights(self) -> torch.Tensor:
        """All layers at once, shape ``(n_layers, d_in, d_out)``."""
        return _contract.contract("aib,bjc,cla->lij", self.g_in, self.g_out, self.g_layer)

    def forward(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """``x @ W_layer + b_layer`` for ``x`` of shape ``(..., d_in)``; planned contraction."""
        self._check_layer(layer)
        if x.shape[-1] != self.d_in:
            raise ValueError(f"input has last dimension {x.shape[-1]}, expected d_in={self.d_in}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.d_in)
        y = _contract.contract("ti,aib,bjc,ca->tj", x2, self.g_in, self.g_out, self.g_layer[:, layer, :])
        if self.bias is not None:
            y = y + self.bias[layer]
        return y.reshape(*lead, self.d_out)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= int(layer) < self.n_layers:
            raise IndexError(f"layer {layer} out of range for n_layers={self.n_layers}")

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_out={self.d_out}, n_layers={self.n_layers}, ranks={self.ranks}, "
                f"bias={self.bias is not None}, n_params={self.n_params}")


def _three_ranks(ranks) -> tuple[int, int, int]:
    if isinstance(ranks, int):
        ranks = (ranks, ranks, ranks)
    ranks = tuple(int(r) for r in ranks)
    if len(ranks) != 3:
        raise ValueError(f"CrossLayerTR needs 3 ranks (R1, R2, R3), got {ranks}")
    if min(ranks) < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    return ranks
