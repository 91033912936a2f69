"""Fit a ring to an existing weight tensor: fixed ranks, a tolerance, or a parameter budget.

Built on :func:`trkit.tr_svd` (no decomposition code lives here). For a budget the search runs
two families of TR-SVD rings and keeps the lowest-error one that fits:

* a uniform cap on every rank (``max_rank = 1, 2, ...``, exponential then binary search), and
* a tolerance bisection (error-balanced, non-uniform ranks).

Every returned ring has been measured: its parameter count is within the budget and its relative
error is computed against the dense target, not estimated.
"""

from __future__ import annotations

import math
import warnings

import torch

from trkit.decompose._common import check_tol
from trkit.errors import InputError
from trkit.ring import TensorRing

__all__ = ["fit_ring"]

_EXACT_TOL = 1e-12
_TOL_BISECT_STEPS = 14


def _svd(x: torch.Tensor, x_norm: float, **kw) -> tuple[TensorRing, float]:
    import trkit

    with warnings.catch_warnings():
        # A rank cap below what tol needs is the point of a budget search; the error is measured below.
        warnings.filterwarnings("ignore", message="tr_svd: tol=.* not met", category=UserWarning)
        ring = trkit.tr_svd(x, **kw)
    err = float(torch.linalg.vector_norm(ring.to_dense() - x)) / max(x_norm, 1e-300)
    return ring, err


def fit_ring(
    x: torch.Tensor, tol: float | None = None, max_params: int | None = None, ranks=None, extra_params: int = 0
) -> tuple[TensorRing, dict]:
    """TR-SVD ring for ``x`` under ``ranks``, ``tol`` or ``max_params`` (which counts
    ``extra_params``, e.g. a bias, on top of the cores).

    Returns ``(ring, info)`` with ``info = {"rel_error", "ranks", "method", ...}``.
    Raises ValueError when ``max_params`` is below the smallest ring (all ranks 1).
    """
    if ranks is not None and (tol is not None or max_params is not None):
        raise InputError("give either ranks or tol/max_params, not both")
    if tol is not None:
        tol = check_tol(tol)
    x = x.detach()
    x_norm = float(torch.linalg.vector_norm(x))
    if ranks is not None:
        ring, err = _svd(x, x_norm, rank=ranks)
        return ring, {"rel_error": err, "ranks": ring.ranks, "method": "tr_svd(rank)"}
    if max_params is None:
        ring, err = _svd(x, x_norm, tol=tol if tol is not None else _EXACT_TOL)
        return ring, {
            "rel_error": err,
            "ranks": ring.ranks,
            "method": "tr_svd(tol)" if tol is not None else "tr_svd(exact)",
        }
    return _fit_budget(x, x_norm, int(max_params), tol, int(extra_params))


def _fit_budget(x, x_norm, max_params, tol, extra):
    smallest = sum(int(n) for n in x.shape) + extra
    if max_params < smallest:
        raise InputError(
            f"max_params={max_params} is smaller than the smallest ring for modes "
            f"{tuple(x.shape)}: all ranks 1 need {smallest} parameters"
            + (f" (including {extra} bias parameters)" if extra else "")
        )
    budget = max_params - extra
    tried: dict[tuple, tuple[TensorRing, float]] = {}

    def attempt(**kw):
        kw.setdefault("tol", _EXACT_TOL)  # tr_svd applies max_rank in tolerance mode
        ring, err = _svd(x, x_norm, **kw)
        tried.setdefault(ring.ranks, (ring, err))
        return ring, err

    # uniform rank cap: largest cap that fits (parameter counts grow with the cap)
    ok = 1
    ring, _ = attempt(max_rank=1)
    hi, prev_ranks = None, ring.ranks
    m = 2
    while hi is None:
        ring, _ = attempt(max_rank=m)
        if ring.n_params > budget:
            hi = m
        elif ring.ranks == prev_ranks:  # the cap no longer binds: this is the exact ring
            ok = m
            break
        else:
            ok, prev_ranks, m = m, ring.ranks, 2 * m
    if hi is not None:
        while hi - ok > 1:
            mid = (ok + hi) // 2
            ring, _ = attempt(max_rank=mid)
            ok, hi = (mid, hi) if ring.n_params <= budget else (ok, mid)
    # tolerance bisection (log scale): error-balanced ranks
    lo_t, hi_t = 1e-8, 1.0
    for _ in range(_TOL_BISECT_STEPS):
        mid_t = math.sqrt(lo_t * hi_t)
        ring, _ = attempt(tol=mid_t)
        lo_t, hi_t = (lo_t, mid_t) if ring.n_params <= budget else (mid_t, hi_t)
    fits = [(err, ring) for ring, err in tried.values() if ring.n_params <= budget]
    if tol is not None:  # a tolerance with a budget: smallest ring that meets it, if any fits
        meeting = [(ring.n_params, err, ring) for err, ring in fits if err <= tol]
        if meeting:
            n, err, ring = min(meeting, key=lambda t: (t[0], t[1]))
            return ring, {"rel_error": err, "ranks": ring.ranks, "method": "budget+tol", "candidates": len(tried)}
    err, ring = min(fits, key=lambda t: t[0])
    return ring, {"rel_error": err, "ranks": ring.ranks, "method": "budget", "candidates": len(tried)}
