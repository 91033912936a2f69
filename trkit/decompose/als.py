"""TR-ALS: one core at a time by least squares, through normal equations built from contractions.

The normal equations of each core update come from :mod:`trkit.decompose._normal_equations`
(the subchain is never formed); a sweep costs ``O(d r^6 + d n r^4)`` for all Grams (prefix
products carried along the sweep, suffix products computed once per sweep) plus one
``2 N r^2`` GEMM per core for the right-hand sides. After each solve the core is
QR-orthogonalised and the triangular factor pushed into the next core; the represented tensor
does not change but the next Gram stays well-conditioned.

Accuracy near an exact fit, where normal equations are at their weakest:

- The error after a sweep comes for free from the last solve
  (``||x||^2 - 2 Re<x, x_tr> + ||x_tr||^2``), but that difference cancels as the fit improves. When
  its rounding bound is not below 1e-4 of the error, or could decide the stopping rule
  (``stop_tol``), the error is measured densely (``||x - x_tr||``, one more contraction of the
  size of a right-hand side). So the history, the callback and the stopping rule all see
  accurate errors.
- Once the fit is within 1e-5 of exact, a core whose Gram is not well-conditioned is solved by
  QR least squares on its explicit subchain (when that has at most ``max(4 N, 2^22)`` entries),
  which reaches the working precision (~1e-14 in float64) where the normal equations stall
  around ``eps * cond``.
"""

from __future__ import annotations

import functools
import math

import torch

from trkit._kernels import transfer_matrix
from trkit.decompose._common import (
    check_max_iter,
    check_stop_tol,
    check_tensor,
    check_tol,
    generator_for,
    normalize_ranks,
    relative_error,
    solve_spd,
)
from trkit.decompose._normal_equations import (
    ShiftedTensor,
    fit_estimate,
    gram_matrix,
    rhs_matrix,
    split_point,
    subchain_matrix,
)
from trkit.decompose._run import IterationLog, scaled_ring, start_cores, to_working
from trkit.errors import InputError
from trkit.ring import TensorRing

__all__ = ["tr_als", "init_ring", "als_sweeps", "exact_floor", "random_cores"]


def random_cores(shape, gen: torch.Generator, dtype: torch.dtype, device, kind: str = "normal") -> torch.Tensor:
    """Seeded random entries drawn in double precision, then cast: a seed gives the same start in
    every precision. ``"normal"`` (complex: real and imaginary parts of variance 1/2) or
    ``"uniform"`` on [0, 1)."""
    wide = torch.complex128 if dtype.is_complex else torch.float64
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(*shape, generator=gen, dtype=wide, device=gen.device).to(device=device, dtype=dtype)


def init_ring(t: torch.Tensor, ranks: list[int], init, gen: torch.Generator, scale: float = 1.0):
    """Starting cores for the unit-norm working tensor ``t``: ``"svd"`` (TR-SVD at the ranks,
    padded with small noise where the ranks were clamped), ``"random"`` (normal entries scaled
    to norm 1), or a given ring (brought to the working scale ``1 / scale``).

    Also returns the start's relative error when it is known for free (TR-SVD), else None.
    """
    d, shape = t.ndim, list(t.shape)
    if isinstance(init, TensorRing):
        return start_cores(init, shape, scale, t.dtype, t.device), None
    if init == "random":
        cores = [random_cores((ranks[k], shape[k], ranks[(k + 1) % d]), gen, t.dtype, t.device) for k in range(d)]
        norm = float(TensorRing(cores, validate=False).norm())
        return [c / max(norm, 1e-300) ** (1 / d) for c in cores], None
    if init == "svd":
        import warnings

        from trkit.decompose.svd import tr_svd

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ring, info = tr_svd(t, ranks, return_info=True)
        cores = []
        for k, c in enumerate(ring.cores):  # pad clamped bonds with small noise up to the asked ranks
            r0, r1 = ranks[k], ranks[(k + 1) % d]
            pad = 1e-3 * float(c.abs().mean()) * random_cores((r0, shape[k], r1), gen, t.dtype, t.device)
            pad[: c.shape[0], :, : c.shape[2]] = c
            cores.append(pad)
        return cores, info.rel_error
    raise InputError(f"init must be 'svd', 'random' or a TensorRing, got {init!r}")


def exact_floor(dtype: torch.dtype) -> float:
    """Relative error below which a fit counts as exact (no sweep can do better in this precision)."""
    return 1e-13 if dtype in (torch.float64, torch.complex128) else 1e-6


def _accurate_solve_fits(shape: list[int], k: int, p: int) -> bool:
    """Whether the explicit subchain of core ``k`` (``N / n_k x p``) is small enough to build."""
    n = math.prod(shape)
    return (n // shape[k]) * p <= max(4 * n, 1 << 22)


def _solve(t_k, gram_t, rhs, cores, k, ridge, near_exact: bool, fits: bool) -> torch.Tensor:
    """The new core ``k`` as ``(n_k, r_k r_{k+1})``: normal equations, or QR least squares on the
    explicit subchain when the fit is near exact and the Gram is not well-conditioned."""
    sol = solve_spd(gram_t, rhs.mT, ridge).mT
    if not (near_exact and fits and ridge == 0):
        return sol
    chol, info = torch.linalg.cholesky_ex(gram_t)
    diag = chol.diagonal().real.abs()
    if int(info) == 0 and float(diag.max() / diag.min().clamp_min(1e-300)) < 10:
        return sol  # well-conditioned: the normal equations are as accurate as a QR solve
    s_t = subchain_matrix(cores, k)  # (N / n_k, r_k r_{k+1})
    return torch.linalg.lstsq(s_t, t_k.reshape(rhs.shape[0], -1).mT).solution.mT


def _sweep_error(t, cores, err2: float, slack: float, prev: float, prev_unc: float, stop_tol: float):
    """The relative error after a sweep and its uncertainty: the estimate from the last solve
    while it is accurate to 1e-4 and the stopping rule cannot be in doubt, else measured densely."""
    est = math.sqrt(err2)
    unc = slack / (2 * est) if est > 0 else math.inf  # from d(err^2) = 2 err d(err)
    decided = abs(prev - est) > stop_tol * est + 2 * (unc + prev_unc) if math.isfinite(prev) else True
    if unc <= 1e-4 * est and (decided or stop_tol == 0):
        return est, unc
    return float(torch.linalg.vector_norm(t - TensorRing(cores, validate=False).to_dense())), 0.0


def als_sweeps(t: torch.Tensor, cores: list[torch.Tensor], log: IterationLog, *, ridge: float = 0.0, ring=None):
    """Run ALS sweeps on the unit-norm tensor ``t`` in place; returns the best cores seen.

    ``log`` records the relative error after each sweep and decides when to stop; ``ring``
    turns working cores into the caller's ring for the callback.
    """
    d = len(cores)
    shape = list(t.shape)
    shifted = ShiftedTensor(t)
    splits = [split_point(shape, k) for k in range(d)]
    fits = [_accurate_solve_fits(shape, k, cores[k].shape[0] * cores[k].shape[2]) for k in range(d)]
    best, best_err, err, err_unc = None, math.inf, math.inf, 0.0
    floor = exact_floor(t.dtype)
    trans = [transfer_matrix(g) for g in cores]  # kept current core by core during the sweeps
    while True:
        suffix = [None] * (d + 1)  # suffix[k] = E_k ... E_{d-1}
        for k in range(d - 1, 0, -1):
            suffix[k] = trans[k] if suffix[k + 1] is None else trans[k] @ suffix[k + 1]
        prefix = None  # E_0 ... E_{k-1} with this sweep's updated cores
        near_exact = err < 1e-5
        for k in range(d):
            ra, nk, rb = cores[k].shape
            parts = [m for m in (suffix[k + 1] if k + 1 < d else None, prefix) if m is not None]
            prod = parts[0] if len(parts) == 1 else parts[0] @ parts[1]
            gram_t = gram_matrix(prod, ra, rb)
            rhs = rhs_matrix(shifted.get(k), cores, k, splits[k])
            sol = _solve(shifted.get(k), gram_t, rhs, cores, k, ridge, near_exact, fits[k])
            g = sol.reshape(nk, ra, rb).permute(1, 0, 2)
            if k == d - 1:
                err2, slack = fit_estimate(rhs, sol, gram_t)
                cores[k] = g.contiguous()
                trans[k] = transfer_matrix(cores[k])
            else:
                q, r = torch.linalg.qr(g.reshape(ra * nk, rb))
                cores[k] = q.reshape(ra, nk, -1)
                nxt = cores[k + 1]
                cores[k + 1] = (r @ nxt.reshape(nxt.shape[0], -1)).reshape(r.shape[0], *nxt.shape[1:])
                # core k is final for this sweep: its transfer serves the prefix now and the
                # suffixes of the next sweep
                trans[k] = transfer_matrix(cores[k])
                prefix = trans[k] if prefix is None else prefix @ trans[k]
        err, err_unc = _sweep_error(t, cores, err2, slack, err, err_unc, log.stop_tol)
        if err < best_err:
            best_err, best = err, [c.clone() for c in cores]
        if log.record(err, None if ring is None else lambda: ring(cores)):
            break
        if log.n_iter >= log.max_iter or (log.stop_tol > 0 and err < floor):
            log.converged = log.converged or err < floor
            break
    return best if best is not None else cores


def tr_als(
    x,
    rank=None,
    *,
    tol: float | None = None,
    stop_tol: float = 1e-7,
    max_iter: int = 100,
    init="svd",
    seed: int | None = 0,
    callback=None,
    verbose: bool = False,
    return_info: bool = False,
    ridge: float = 0.0,
):
    """Tensor-ring decomposition by alternating least squares (TR-ALS).

    Args:
        x: dense tensor ``(n_1, ..., n_d)``; real or complex, any device. The result keeps its
            dtype (float16/bfloat16 are computed in float32).
        rank: ranks (int or ``d`` ints; ``rank[k]`` enters core ``k``). Ranks with
            ``r_k r_{k+1} > N / n_k`` cannot be determined and are clamped with a ``UserWarning``.
        tol: relative error target: stop as soon as an iterate meets it (``info.tol_met``).
        stop_tol: stop when the relative error changes by less than this (relative) between
            sweeps, or reaches the working precision (1e-13 in double, 1e-6 in single); 0 runs
            all ``max_iter`` sweeps.
        max_iter: maximum number of sweeps.
        init: ``"svd"`` (TR-SVD at the ranks), ``"random"`` (seeded) or a ``TensorRing``.
            When the TR-SVD start already meets ``tol`` or reproduces ``x`` (an exact ring at
            its ranks) no sweep is run (``info.n_iter == 0``, no callback).
        seed: seed for random initialisation and padding (deterministic for a fixed seed).
        callback: ``callback(ring, info)`` after each sweep with the current iterate and the
            info so far; returning ``True`` stops.
        verbose: tqdm progress bar over sweeps.
        return_info: also return a :class:`~trkit.decompose.info.DecompositionInfo`
            (``rel_error`` is the dense error of the returned, best, iterate).
        ridge: extra relative ridge for the normal equations (0: only when Cholesky fails).

    Returns:
        ``TensorRing`` (best iterate over all sweeps) [, ``DecompositionInfo``].
    """
    x = check_tensor(x)
    if rank is None:
        raise InputError("tr_als needs rank (an int or one int per mode)")
    tol = None if tol is None else check_tol(tol)
    stop_tol, max_iter = check_stop_tol(stop_tol), check_max_iter(max_iter)
    work = to_working(x)
    t = work.t
    ranks = normalize_ranks(rank, list(t.shape))
    gen = generator_for(seed, t.device)
    with IterationLog(
        "tr_als", tol=tol, stop_tol=stop_tol, max_iter=max_iter, callback=callback, verbose=verbose
    ) as log:
        cores, start_err = init_ring(t, ranks, init, gen, work.scale)
        done = start_err is not None and (start_err < exact_floor(t.dtype) or (tol is not None and start_err <= tol))
        if done:  # TR-SVD already reproduced x (or met the target): sweeps cannot be needed
            log.converged = True
            log.history.append(start_err)
            best = cores
        else:
            as_ring = functools.partial(scaled_ring, scale=work.scale, dtype=work.out_dtype)
            best = als_sweeps(t, cores, log, ridge=ridge, ring=as_ring)
        out = scaled_ring(best, work.scale, work.out_dtype)
        if not return_info:
            return out
        err = start_err if done else relative_error(t, TensorRing(best, validate=False), 1.0)
        return out, log.info(err, out.ranks, n_iter=0 if done else None)
