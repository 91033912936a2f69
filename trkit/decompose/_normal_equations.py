"""The pieces of a TR-ALS core update: the right-hand side and the Gram matrix of the normal
equations, built from contractions so the subchain (the design matrix) is never formed.

For core ``k`` the model is ``X_(k) = G_k S_k`` with ``S_k`` the product of the other cores
(``r_k r_{k+1} x N / n_k``). Used by :mod:`trkit.decompose.als` and
:mod:`trkit.decompose.adaptive` (which merges two cores and then treats them as one).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from trkit._kernels import merge_chain

__all__ = ["ShiftedTensor", "split_point", "rhs_matrix", "gram_matrix"]


class ShiftedTensor:
    """``x`` cyclically shifted to start at mode ``k``; all ``d`` copies are kept when they fit
    in ``cache_bytes`` (a transpose per core otherwise costs about a third of a sweep)."""

    def __init__(self, x: torch.Tensor, cache_bytes: int = 1 << 30):
        self.x, self.shape = x, list(x.shape)
        d = x.ndim
        self.cache = {} if x.numel() * x.element_size() * d <= cache_bytes else None

    def get(self, k: int) -> torch.Tensor:
        if k == 0:
            return self.x.reshape(-1)
        if self.cache is not None and k in self.cache:
            return self.cache[k]
        left = int(np.prod(self.shape[:k]))
        out = self.x.reshape(left, -1).T.contiguous().reshape(-1)
        if self.cache is not None:
            self.cache[k] = out
        return out


def split_point(shape: list[int], k: int) -> int:
    """How many cores after ``k`` go into the chain ``A`` (the rest into ``B``)."""
    d = len(shape)
    best, best_cost = 0, math.inf
    for p in range(0, d - 1):
        n_l = int(np.prod([shape[(k + 1 + j) % d] for j in range(p)])) if p else 1
        n_r = int(np.prod([shape[(k + 1 + j) % d] for j in range(p, d - 1)]))
        cost = max(shape[k] * n_l, n_r)
        if cost < best_cost:
            best, best_cost = p, cost
    return best


def rhs_matrix(xk: torch.Tensor, cores: list[torch.Tensor], k: int, p: int) -> torch.Tensor:
    """``RHS[i_k, a, b] = sum x[i_k, ...] S_k[b, ..., a]`` as an ``(n_k, r_k r_{k+1})`` matrix."""
    d = len(cores)
    nk, ra, rb = cores[k].shape[1], cores[k].shape[0], cores[k].shape[2]
    left = [cores[(k + 1 + j) % d] for j in range(p)]
    right = [cores[(k + 1 + j) % d] for j in range(p, d - 1)]
    b_chain = merge_chain(right)  # (r_c, |R|, r_a)
    rc, n_r, _ = b_chain.shape
    n_l = xk.numel() // (nk * n_r)
    t = xk.reshape(nk * n_l, n_r) @ b_chain.permute(1, 0, 2).reshape(n_r, rc * ra)  # (nk |L|, rc ra)
    if p == 0:  # c is the b bond itself
        return t.reshape(nk, rc, ra).transpose(1, 2).reshape(nk, ra * rb)
    a_chain = merge_chain(left)  # (r_b, |L|, r_c)
    t = t.reshape(nk, n_l * rc, ra)
    out = torch.matmul(a_chain.reshape(rb, n_l * rc), t)  # (nk, rb, ra)
    return out.transpose(1, 2).reshape(nk, ra * rb)


def gram_matrix(prod: torch.Tensor, ra: int, rb: int) -> torch.Tensor:
    """Ring product of the other transfer matrices ``P[(b b'), (a a')]`` -> ``Gram[(a b), (a' b')]``."""
    return prod.reshape(rb, rb, ra, ra).permute(2, 0, 3, 1).reshape(ra * rb, ra * rb)
