"""Adaptive-rank TR-ALS: two-core (DMRG/BALS-like) sweeps whose bond ranks grow or shrink.

At bond ``(k, k+1)`` the merged core ``W (r_k, n_k n_{k+1}, r_{k+2})`` is solved by least
squares (normal equations from the other cores, as in TR-ALS) and split again by a truncated
SVD; the kept rank is the smallest whose discarded tail is below ``cut`` times ``||W||``,
capped by ``max_rank``. ``cut = max(tol, err / 2) / sqrt(d)`` follows the current error ``err``
so ranks grow gradually (a cut at ``tol`` right away keeps the noise of an early, poor fit and
the ranks explode); a bond grows by at most half its rank (and 2) per update, and plain TR-ALS sweeps at the new
ranks (until the error changes by < 1e-3 relative, at most 10) follow each two-core sweep. Once
``tol`` is met the cut is raised 1.5x per round to try smaller ranks. The returned ring is the
one with the fewest parameters among the iterates that met ``tol`` (else the lowest error).
"""

from __future__ import annotations

import math
import time

import torch

from trkit._kernels import transfer_matrix, truncation_rank
from trkit.decompose._common import (
    DecompositionInfo,
    check_max_rank,
    check_tensor,
    check_tol,
    progress,
    relative_error,
    solve_spd,
    start_cores,
)
from trkit.decompose._normal_equations import ShiftedTensor, gram_matrix, rhs_matrix, split_point
from trkit.decompose.als import als_sweeps
from trkit.errors import InputError
from trkit.ring import TensorRing

__all__ = ["tr_als_adaptive"]


def _two_core_update(shifted: ShiftedTensor, shape, cores, k: int, rel_cut: float, max_rank, ridge):
    d = len(cores)
    k1 = (k + 1) % d
    ra, nk, _ = cores[k].shape
    _, nk1, rb = cores[k1].shape
    others = [(k + 2 + j) % d for j in range(d - 2)]
    prod = transfer_matrix(cores[others[0]])
    for j in others[1:]:
        prod = prod @ transfer_matrix(cores[j])
    gram = gram_matrix(prod, ra, rb)
    merged_shape = [nk * nk1] + [shape[j] for j in others]
    placeholder = cores[k].new_empty(ra, nk * nk1, rb)
    ring_cores = [placeholder] + [cores[j] for j in others]
    # x cyclically shifted to start at mode k, with modes k and k+1 merged (a reshape)
    xk = shifted.get(k)
    rhs = rhs_matrix(xk, ring_cores, 0, split_point(merged_shape, 0))
    sol = solve_spd(gram, rhs.T, ridge).T  # (nk nk1, ra rb)
    w = sol.reshape(nk, nk1, ra, rb).permute(2, 0, 1, 3).reshape(ra * nk, nk1 * rb)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    # grow by at most half (and 2) per update: a bond that jumps to full rank keeps fit noise
    grow = cores[k].shape[2] + max(2, cores[k].shape[2] // 2)
    r = truncation_rank(s, rel_cut * float(torch.linalg.vector_norm(s)), min(max_rank, grow))
    cores[k] = u[:, :r].reshape(ra, nk, r)
    cores[k1] = (s[:r, None] * vh[:r]).reshape(r, nk1, rb)


def tr_als_adaptive(
    x,
    tol: float,
    max_rank: int | None = None,
    *,
    max_iter: int = 20,
    init=None,
    seed: int | None = 0,
    verbose: bool = False,
    ridge: float = 0.0,
    return_info: bool = False,
):
    """Tensor ring with ranks adapted per bond until ``||x - x_tr|| <= tol ||x||``.

    Args:
        x: dense tensor ``(n_1, ..., n_d)``, ``d >= 3`` (for ``d = 2`` TR-SVD is already optimal
            and is used).
        tol: relative error target (> 0).
        max_rank: cap on every bond rank (default 32: the normal equations of a merged core
            have ``(r_k r_{k+2})^2`` entries); ``tol`` may then be missed (``info.converged``).
        max_iter: maximum number of two-core sweeps.
        init: starting ring; default TR-SVD at ranks 2 (small ranks to grow from).
        seed, verbose, ridge: as in :func:`tr_als`.
        return_info: also return :class:`DecompositionInfo` (``history``: dense error per sweep;
            ``extra['params_history']``).

    Returns:
        ``TensorRing`` [, ``DecompositionInfo``].
    """
    from trkit.decompose.svd import tr_svd

    t0 = time.perf_counter()
    x = check_tensor(x)
    tol = check_tol(tol)
    max_rank = check_max_rank(max_rank)
    max_rank = 32 if max_rank is None else max_rank
    d = x.ndim
    xnorm = float(torch.linalg.vector_norm(x))
    if d < 3:
        ring = tr_svd(x, tol=tol, max_rank=max_rank)
        err = relative_error(x, ring, xnorm)
        info = DecompositionInfo(err, [err], ring.ranks, time.perf_counter() - t0, 0, err <= tol)
        return (ring, info) if return_info else ring
    if init is None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rank 2 may be clamped on tiny modes; fine for a start
            ring = tr_svd(x, rank=min(2, max_rank))
    elif isinstance(init, TensorRing):
        ring = TensorRing(start_cores(init, x.shape, x.dtype, x.device), validate=False)
    else:
        raise InputError("init must be None or a TensorRing")
    cores = [c.clone() for c in ring.cores]
    shifted = ShiftedTensor(x)
    shape = list(x.shape)
    err = relative_error(x, ring, xnorm)
    shrink = 1.0
    history, params = [err], [ring.n_params]
    best = (ring, err)
    n_iter = 0
    with progress(max_iter, verbose, "TR-ALS adaptive") as bar:
        for n_iter in range(1, max_iter + 1):  # noqa: B007 (the count is read after the loop)
            rel_cut = shrink * max(tol, 0.5 * err) / math.sqrt(d)
            for k in range(d):
                _two_core_update(shifted, shape, cores, k, rel_cut, max_rank, ridge)
            cores, *_ = als_sweeps(x, cores, max_iter=10, tol=1e-3, ridge=ridge)
            ring = TensorRing([c.clone() for c in cores], validate=False)
            err = relative_error(x, ring, xnorm)
            history.append(err)
            params.append(ring.n_params)
            b_ring, b_err = best
            improved = (err <= tol and (b_err > tol or ring.n_params < b_ring.n_params)) or (
                b_err > tol and err < b_err
            )
            if improved:
                best = (ring, err)
            bar.update(1)
            bar.set_postfix(rel_error=f"{err:.3e}", params=ring.n_params)
            if err <= tol:
                if not improved:
                    break  # a shrink attempt gained nothing: keep the smallest ring that met tol
                shrink *= 1.5
            else:
                if b_err <= tol:
                    break  # shrinking went too far; the best ring already meets tol
                if all(r >= max_rank for r in ring.ranks) and len(history) > 2 and abs(history[-2] - err) <= 1e-4 * err:
                    break  # capped and stalled
                if params[-1] <= params[-2]:
                    shrink *= 0.5  # ranks did not grow: cut deeper next round
    ring, err = best
    if not return_info:
        return ring
    return ring, DecompositionInfo(
        err, history, ring.ranks, time.perf_counter() - t0, n_iter, err <= tol, extra={"params_history": params}
    )
