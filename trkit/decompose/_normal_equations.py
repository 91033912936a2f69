"""The pieces of a TR-ALS core update: the right-hand side and the Gram matrix of the normal
equations, built from contractions so the subchain (the design matrix) is never formed.

For core ``k`` the model is ``X_(k) = G_k S_k`` with ``S_k`` the product of the other cores
(``r_k r_{k+1} x N / n_k``); the least-squares core solves ``G_k (S_k S_k^H) = X_(k) S_k^H``.
Used by :mod:`trkit.decompose.als` and :mod:`trkit.decompose.adaptive` (which merges two cores
and then treats them as one).

- ``Gram = S_k S_k^H`` is the ring product of the transfer matrices
  ``E_j = sum_i conj(G_j[:, i, :]) kron G_j[:, i, :]`` of the other cores (``r^2 x r^2``).
- ``RHS = X_(k) S_k^H`` contracts ``x`` (cyclically shifted to start at mode ``k``) with two
  short chains: the next ``p`` cores (``A``) and the remaining ones (``B``), split so that no
  intermediate has more than about ``r^2 sqrt(N)`` entries. One GEMM of ``2 N r^2`` FLOPs.
- Near an exact fit the normal equations lose accuracy (their condition number is the square of
  the subchain's): :func:`lstsq_core` then solves with ``S_k`` itself when it fits in memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from trkit._kernels import merge_chain

__all__ = ["ShiftedTensor", "split_point", "rhs_matrix", "gram_matrix", "subchain_matrix", "fit_estimate"]


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
    """``RHS[i_k, a, b] = sum x[i_k, ...] conj(S_k[b, ..., a])`` as an ``(n_k, r_k r_{k+1})`` matrix."""
    d = len(cores)
    if cores[0].is_complex():
        cores = [c.conj() for c in cores]
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
    """Ring product of the other transfer matrices ``P[(b b'), (a a')]`` -> the transposed Gram
    ``Gram^T[(a b), (a' b')]`` (equal to ``conj(Gram)``), the matrix the core's transposed
    normal equations ``Gram^T G_k^T = RHS^T`` need."""
    return prod.reshape(rb, rb, ra, ra).permute(2, 0, 3, 1).reshape(ra * rb, ra * rb)


def subchain_matrix(cores: list[torch.Tensor], k: int) -> torch.Tensor:
    """``S_k^T`` explicitly: ``(N / n_k, r_k r_{k+1})``, rows in the order of ``ShiftedTensor.get(k)``."""
    d = len(cores)
    chain = merge_chain([cores[(k + 1 + j) % d] for j in range(d - 1)])  # (r_{k+1}, N / n_k, r_k)
    return chain.permute(1, 2, 0).reshape(chain.shape[1], -1)


def fit_estimate(rhs: torch.Tensor, sol: torch.Tensor, gram_t: torch.Tensor) -> tuple[float, float]:
    """``(||x - model||^2, slack)`` from the last solve, for ``||x|| = 1``.

    ``||x||^2 - 2 Re<x, model> + ||model||^2`` cancels as the fit improves: ``slack`` bounds its
    rounding error (the inner products are each accurate to a few ``eps`` of their operands'
    norms), so the estimate is trusted only while it is well above ``slack``.
    """
    inner = float((sol.conj() * rhs).sum().real)
    model2 = float(((sol.conj() @ gram_t) * sol).sum().real)
    eps = torch.finfo(rhs.real.dtype).eps
    scale = 1.0 + abs(model2) + float(torch.linalg.vector_norm(rhs)) * float(torch.linalg.vector_norm(sol))
    return max(1.0 - 2.0 * inner + model2, 0.0), 64 * eps * scale
