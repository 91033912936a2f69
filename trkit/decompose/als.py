"""TR-ALS: one core at a time by least squares, through normal equations built from contractions.

For core ``k`` the model is ``X_(k) = G_k S_k`` with ``S_k`` the product of the other cores
(the "subchain", ``r_k r_{k+1} x N / n_k``). ``S_k`` is never formed:

- ``Gram = S_k S_k^T`` is the ring product of the transfer matrices
  ``E_j = sum_i G_j[:, i, :] kron G_j[:, i, :]`` (``r^2 x r^2``) of the other cores; prefix
  products are carried along the sweep and suffix products computed once per sweep, so a sweep
  costs ``O(d r^6 + d n r^4)`` for all Grams.
- ``RHS = X_(k) S_k^T`` contracts ``x`` (cyclically shifted to start at mode ``k``) with two
  short chains: the next ``p`` cores (``A``) and the remaining ones (``B``), split so that no
  intermediate has more than about ``r^2 sqrt(N)`` entries. One GEMM of ``2 N r^2`` FLOPs.

After each solve the core is QR-orthogonalised and the triangular factor pushed into the next
core; the represented tensor does not change but the next Gram stays well-conditioned.
The fit comes for free from the last solve: ``||x - x_tr||^2 = ||x||^2 - 2<x, x_tr> + ||x_tr||^2``.
"""

from __future__ import annotations

import math
import time

import torch

from trkit._kernels import transfer_matrix
from trkit.decompose._common import (
    DecompositionInfo,
    check_tensor,
    check_tol,
    generator_for,
    normalize_ranks,
    progress,
    relative_error,
    solve_spd,
    start_cores,
)
from trkit.decompose._normal_equations import ShiftedTensor, gram_matrix, rhs_matrix, split_point
from trkit.errors import InputError
from trkit.ring import TensorRing

__all__ = ["tr_als", "init_ring"]


def init_ring(x: torch.Tensor, ranks: list[int], init, gen: torch.Generator) -> tuple[list[torch.Tensor], float | None]:
    """Starting cores: ``"svd"`` (TR-SVD at the ranks, padded), ``"random"``, or a given ring.

    Also returns the start's relative error when it is known for free (TR-SVD), else None.
    """
    d, shape = x.ndim, list(x.shape)
    if isinstance(init, TensorRing):
        return start_cores(init, shape, x.dtype, x.device), None
    if init == "random":
        cores = [
            torch.randn(ranks[k], shape[k], ranks[(k + 1) % d], generator=gen, dtype=x.dtype, device=gen.device).to(
                x.device
            )
            for k in range(d)
        ]
        ring = TensorRing(cores, validate=False)
        scale = (float(torch.linalg.vector_norm(x)) / max(float(ring.to_dense().norm()), 1e-300)) ** (1 / d)
        return [c * scale for c in cores], None
    if init == "svd":
        import warnings

        from trkit.decompose.svd import tr_svd

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ring, info = tr_svd(x, rank=ranks, return_info=True)
        cores = []
        for k, c in enumerate(ring.cores):  # pad clamped bonds with small noise up to the asked ranks
            r0, r1 = ranks[k], ranks[(k + 1) % d]
            pad = (
                1e-3
                * float(c.abs().mean())
                * torch.randn(r0, shape[k], r1, generator=gen, dtype=x.dtype, device=gen.device).to(x.device)
            )
            pad[: c.shape[0], :, : c.shape[2]] = c
            cores.append(pad)
        return cores, info.rel_error
    raise InputError(f"init must be 'svd', 'random' or a TensorRing, got {init!r}")


def _exact_floor(dtype: torch.dtype) -> float:
    """Relative error below which a fit counts as exact (no sweep can do better in this precision)."""
    return 1e-13 if dtype == torch.float64 else 1e-6


def als_sweeps(
    x: torch.Tensor,
    cores: list[torch.Tensor],
    *,
    max_iter: int,
    tol: float,
    callback=None,
    verbose: bool = False,
    desc: str = "TR-ALS",
    ridge: float = 0.0,
):
    """Run ALS sweeps in place; returns ``(best_cores, history, n_iter, converged)``.

    ``history[j]`` is the relative error after sweep ``j`` (from the normal equations).
    """
    d = len(cores)
    shape = list(x.shape)
    xnorm2 = float(torch.linalg.vector_norm(x)) ** 2
    shifted = ShiftedTensor(x)
    splits = [split_point(shape, k) for k in range(d)]
    history, best, best_err = [], None, math.inf
    converged, it = False, 0
    floor = 1e-7 if x.dtype == torch.float64 else 3e-4  # the fit formula cancels below this
    trans = [transfer_matrix(g) for g in cores]  # kept current core by core during the sweeps
    with progress(max_iter, verbose, desc) as bar:
        for it in range(1, max_iter + 1):
            suffix = [None] * (d + 1)  # suffix[k] = E_k ... E_{d-1}
            suffix[d] = None
            for k in range(d - 1, 0, -1):
                suffix[k] = trans[k] if suffix[k + 1] is None else trans[k] @ suffix[k + 1]
            prefix = None  # E_0 ... E_{k-1} with this sweep's updated cores
            for k in range(d):
                ra, nk, rb = cores[k].shape
                parts = [m for m in (suffix[k + 1] if k + 1 < d else None, prefix) if m is not None]
                prod = parts[0] if len(parts) == 1 else parts[0] @ parts[1]
                gram = gram_matrix(prod, ra, rb)
                rhs = rhs_matrix(shifted.get(k), cores, k, splits[k])
                sol = solve_spd(gram, rhs.T, ridge).T  # (n_k, ra rb)
                g = sol.reshape(nk, ra, rb).permute(1, 0, 2)
                if k == d - 1:
                    inner = float((rhs * sol).sum())
                    model2 = float(((sol @ gram) * sol).sum())
                    err2 = max(xnorm2 - 2 * inner + model2, 0.0)
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
            err = math.sqrt(err2 / xnorm2) if xnorm2 > 0 else math.sqrt(err2)
            if err < floor:  # the normal-equation fit has cancelled to noise: measure densely
                dense = TensorRing(cores, validate=False).to_dense()
                err = float(torch.linalg.vector_norm(x - dense)) / max(math.sqrt(xnorm2), 1e-300)
            history.append(err)
            if err < best_err:
                best_err, best = err, [c.clone() for c in cores]
            bar.update(1)
            bar.set_postfix(rel_error=f"{err:.3e}")
            if callback is not None and callback(it, err, TensorRing(cores, validate=False)) is True:
                break
            if len(history) > 1:
                change = abs(history[-2] - err) / max(err, 1e-300)
                if change < tol:
                    converged = True
                    break
            if err < _exact_floor(x.dtype):
                converged = True
                break
    return best if best is not None else cores, history, it, converged


def tr_als(
    x,
    rank,
    init="svd",
    max_iter: int = 100,
    tol: float = 1e-7,
    callback=None,
    seed: int | None = 0,
    verbose: bool = False,
    ridge: float = 0.0,
    return_info: bool = False,
):
    """Tensor-ring decomposition by alternating least squares (TR-ALS).

    Args:
        x: dense tensor ``(n_1, ..., n_d)``; float32/float64 on any device.
        rank: ranks (int or ``d`` ints; ``rank[k]`` enters core ``k``). Ranks with
            ``r_k r_{k+1} > N / n_k`` cannot be determined and are clamped with a ``UserWarning``.
        init: ``"svd"`` (TR-SVD at the ranks), ``"random"`` (seeded) or a ``TensorRing``.
            When the TR-SVD start already reproduces ``x`` (relative error below 1e-13 in
            float64, 1e-6 in float32: an exact ring at its ranks) no sweep is run
            (``info.n_iter == 0``, ``info.history == [start error]``, no callback).
        max_iter: maximum number of sweeps.
        tol: stop when the relative change of the relative error between sweeps is below this.
        callback: ``callback(sweep, rel_error, ring)`` after each sweep; returning ``True`` stops.
        seed: seed for random initialisation and padding (deterministic for a fixed seed).
        verbose: tqdm progress bar over sweeps.
        ridge: extra relative ridge for the normal equations (0: only when Cholesky fails).
        return_info: also return :class:`DecompositionInfo` (``rel_error`` is the dense error of
            the returned, best, iterate).

    Returns:
        ``TensorRing`` (best iterate over all sweeps) [, ``DecompositionInfo``].
    """
    t0 = time.perf_counter()
    x = check_tensor(x)
    tol = check_tol(tol)
    if int(max_iter) < 1:
        raise InputError(f"max_iter must be >= 1, got {max_iter}")
    ranks = normalize_ranks(rank, list(x.shape))
    gen = generator_for(seed, x.device)
    cores, start_err = init_ring(x, ranks, init, gen)
    if start_err is not None and start_err < _exact_floor(x.dtype):
        # TR-SVD already reproduced x (an exact ring at its ranks): sweeps cannot improve it
        best, history, n_iter, converged = cores, [start_err], 0, True
    else:
        best, history, n_iter, converged = als_sweeps(
            x, cores, max_iter=int(max_iter), tol=tol, callback=callback, verbose=verbose, ridge=ridge
        )
    ring = TensorRing(best, validate=False)
    if not return_info:
        return ring
    err = start_err if n_iter == 0 else relative_error(x, ring)
    return ring, DecompositionInfo(
        rel_error=err,
        history=history,
        ranks=ring.ranks,
        time_s=time.perf_counter() - t0,
        n_iter=n_iter,
        converged=converged,
    )
