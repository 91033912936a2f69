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

import functools
import math
import warnings

import torch

from trkit._kernels import transfer_matrix, truncation_rank
from trkit.decompose._common import (
    check_max_iter,
    check_max_rank,
    check_stop_tol,
    check_tensor,
    check_tol,
    normalize_ranks,
    relative_error,
    solve_spd,
)
from trkit.decompose._normal_equations import ShiftedTensor, gram_matrix, rhs_matrix, split_point
from trkit.decompose._run import IterationLog, scaled_ring, start_cores, to_working
from trkit.decompose.als import als_sweeps
from trkit.decompose.info import AdaptiveInfo
from trkit.errors import InputError
from trkit.ring import TensorRing

__all__ = ["tr_als_adaptive"]


def _two_core_update(shifted: ShiftedTensor, shape, cores, k: int, rel_cut: float, cap: int, ridge):
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
    r = truncation_rank(s, rel_cut * float(torch.linalg.vector_norm(s)), min(cap, grow))
    cores[k] = u[:, :r].reshape(ra, nk, r)
    cores[k1] = (s[:r, None] * vh[:r]).reshape(r, nk1, rb)


def tr_als_adaptive(
    x,
    rank=None,
    *,
    tol: float | None = None,
    stop_tol: float = 1e-4,
    max_iter: int = 20,
    init=None,
    seed: int | None = 0,
    callback=None,
    verbose: bool = False,
    return_info: bool = False,
    max_rank: int | None = None,
    ridge: float = 0.0,
):
    """Tensor ring with ranks adapted per bond until ``||x - x_tr|| <= tol ||x||``.

    Args:
        x: dense tensor ``(n_1, ..., n_d)``, real or complex (for ``d = 2`` TR-SVD is already
            optimal and is used).
        rank: cap on each bond (an int for all, or one per bond); ``tol`` may then be missed
            (``info.tol_met``). Default: ``max_rank``.
        tol: relative error target (required; 0 means as exact as the caps allow).
        stop_tol: once every bond is at its cap, stop when the error changes by less than this
            (relative) between sweeps.
        max_iter: maximum number of two-core sweeps.
        init: starting ring; default TR-SVD at ranks 2 (small ranks to grow from).
        seed: unused (the method is deterministic); accepted for the common signature.
        callback: ``callback(ring, info)`` after each sweep; returning ``True`` stops.
        verbose: tqdm progress bar over sweeps.
        return_info: also return an :class:`~trkit.decompose.info.AdaptiveInfo`
            (``history``: dense error per sweep; ``params_history``).
        max_rank: cap on every bond (default 32: the normal equations of a merged core have
            ``(r_k r_{k+2})^2`` entries).
        ridge: extra relative ridge for the normal equations, as in :func:`~trkit.tr_als`.

    Returns:
        ``TensorRing`` [, ``AdaptiveInfo``].
    """
    from trkit.decompose.svd import tr_svd

    if tol is None and isinstance(rank, float):
        warnings.warn(
            "tr_als_adaptive(x, tol) is deprecated: the second argument is the rank cap now; pass tol=...",
            DeprecationWarning,
            stacklevel=2,
        )
        rank, tol = None, rank
    x = check_tensor(x)
    if tol is None:
        raise InputError("tr_als_adaptive needs tol (a relative error target)")
    tol = check_tol(tol)
    stop_tol, max_iter = check_stop_tol(stop_tol), check_max_iter(max_iter)
    max_rank = check_max_rank(max_rank)
    work = to_working(x)
    t = work.t
    d, shape = t.ndim, list(t.shape)
    caps = [32 if max_rank is None else max_rank] * d
    if rank is not None:
        caps = [min(c, r) for c, r in zip(caps, normalize_ranks(rank, shape, caps=[t.numel() ** 2] * d, warn=False))]

    as_ring = functools.partial(scaled_ring, scale=work.scale, dtype=work.out_dtype)
    with IterationLog(
        "tr_als_adaptive",
        tol=tol,
        stop_tol=stop_tol,
        max_iter=max_iter,
        callback=callback,
        verbose=verbose,
        info_cls=AdaptiveInfo,
    ) as log:
        if d < 3:
            ring = tr_svd(t, caps, tol=tol)
            err = relative_error(t, ring, 1.0)
            log.converged = err <= tol
            log.history.append(err)
            out = as_ring(ring.cores)
            info = log.info(err, out.ranks, n_iter=0, params_history=[out.n_params])
            return (out, info) if return_info else out
        if init is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # rank 2 may be clamped on tiny modes; fine for a start
                ring = tr_svd(t, [min(2, c) for c in caps])
        else:
            ring = TensorRing(start_cores(init, shape, work.scale, t.dtype, t.device), validate=False)
        cores = [c.clone() for c in ring.cores]
        shifted = ShiftedTensor(t)
        err = relative_error(t, ring, 1.0)
        shrink = 1.0
        history, params = [err], [ring.n_params]
        best = (ring, err)
        while log.n_iter < max_iter:
            rel_cut = shrink * max(tol, 0.5 * err) / math.sqrt(d)
            for k in range(d):
                _two_core_update(shifted, shape, cores, k, rel_cut, caps[(k + 1) % d], ridge)
            polish = IterationLog("tr_als", tol=None, stop_tol=1e-3, max_iter=10)
            cores = als_sweeps(t, cores, polish, ridge=ridge)
            ring = TensorRing([c.clone() for c in cores], validate=False)
            err = relative_error(t, ring, 1.0)
            history.append(err)
            params.append(ring.n_params)
            b_ring, b_err = best
            improved = (err <= tol and (b_err > tol or ring.n_params < b_ring.n_params)) or (
                b_err > tol and err < b_err
            )
            if improved:
                best = (ring, err)
            if log.record(err, lambda cs=cores: as_ring(cs), check=False, params=ring.n_params):
                break
            if err <= tol:
                if not improved:
                    break  # a shrink attempt gained nothing: keep the smallest ring that met tol
                shrink *= 1.5
            else:
                if b_err <= tol:
                    break  # shrinking went too far; the best ring already meets tol
                at_caps = all(ring.ranks[j] >= caps[j] for j in range(d))
                if at_caps and len(history) > 2 and abs(history[-2] - err) <= stop_tol * err:
                    break  # capped and stalled
                if params[-1] <= params[-2]:
                    shrink *= 0.5  # ranks did not grow: cut deeper next round
        ring, err = best
        log.converged = err <= tol
        out = as_ring(ring.cores)
        if not return_info:
            return out
        return out, log.info(err, out.ranks, params_history=params[1:])
