"""Rounding: lower the ranks of a tensor ring without ever forming the dense tensor.

Three steps, each keeping an exact account of the error it makes:

1. **Sum structure.** A sum of rings (what ``a + b`` builds) has block-diagonal cores. The ring is
   split into the connected components of its cores' nonzero pattern (a closed path around the
   ring stays inside one component, so the tensor is the sum of the component rings; a component
   that does not reach every bond contributes exactly nothing and is dropped). Components whose
   cores are proportional core by core (``a + a``, ``p + 3 p``) are merged into one. No error.
2. **Truncation** (after Mickelin & Karaman 2020): open the ring at one bond and treat it as a
   tensor train whose two boundary bonds carry the same index; right-to-left orthogonalise
   (LQ), then left-to-right truncated SVDs round every internal bond. Then rotate the ring by
   ``d // 2`` so the bond that stayed open becomes internal, and repeat. A truncation of the open
   chain ``Z`` changes the ring by at most ``sqrt(r_open)`` times the discarded singular values'
   norm (the trace of an ``r x r`` matrix is at most ``sqrt(r)`` times its Frobenius norm): the
   sum of those is a rigorous bound on the error, accurate down to rounding.
3. **Refinement** (``refine=n``): up to ``n`` ALS sweeps against the input in TR format; kept only
   if they lower the error.

The reported error is the smaller of two upper bounds: the truncation bound, and the error
computed through ring inner products (``||a - b||^2 = <a, a> - 2 Re<a, b> + <b, b>``, each a
transfer-matrix sweep, plus a bound on its rounding, since that difference loses about half the
digits when ``b`` is very close to ``a``: floor about ``1e-7`` relative in float64).
The ring is rounded at unit norm and scaled back, so huge or tiny rings round like any other.
"""

from __future__ import annotations

import math
import warnings

import torch

from trkit._kernels import truncation_rank
from trkit.algebra import add, inner
from trkit.contract import contract
from trkit.decompose._common import LOW_PRECISION, check_max_rank, check_stop_tol, check_tol, normalize_ranks
from trkit.decompose._run import IterationLog
from trkit.decompose.info import RoundInfo
from trkit.errors import InputError, InputTypeError
from trkit.ring import TensorRing

__all__ = ["tr_round", "ring_error", "round"]


def ring_error(a: TensorRing, b: TensorRing) -> float:
    """Relative error ``||a - b|| / ||a||`` from inner products, never below the true value.

    The three inner products are each accurate to ~``c d eps`` of ``||a||^2 + ||b||^2``; that
    amount is added before the square root so cancellation cannot under-report.
    """
    aa, ab, bb = (float(inner(a, a).real), float(inner(a, b).real), float(inner(b, b).real))
    eps = torch.finfo(a.dtype).eps
    slack = 16 * a.ndim * eps * (abs(aa) + 2 * abs(ab) + abs(bb))
    err2 = max(aa - 2 * ab + bb, 0.0) + slack
    return math.sqrt(err2 / aa) if aa > 0 else math.sqrt(err2)


# ---- 1. sum structure ----------------------------------------------------------------------
def _components(cores: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The component rings of the cores' nonzero pattern (see the module notes)."""
    d = len(cores)
    offset = [0]
    for c in cores:
        offset.append(offset[-1] + c.shape[0])
    parent = list(range(offset[-1]))  # one node per (bond k, index a)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k, c in enumerate(cores):
        left, right = (c != 0).any(dim=1).nonzero(as_tuple=True)
        for a, b in zip(left.tolist(), right.tolist()):
            parent[find(offset[k] + a)] = find(offset[(k + 1) % d] + b)
    groups: dict[int, list[list[int]]] = {}
    for k in range(d):
        for a in range(cores[k].shape[0]):
            groups.setdefault(find(offset[k] + a), [[] for _ in range(d)])[k].append(a)
    out = []
    for idx in groups.values():
        if all(idx):  # reaches every bond: a ring of its own
            out.append([cores[k][idx[k]][:, :, idx[(k + 1) % d]] for k in range(d)])
    return out


def _proportional(a: list[torch.Tensor], b: list[torch.Tensor]) -> complex | float | None:
    """``lam`` with ``ring(b) == lam * ring(a)`` when ``b``'s cores are multiples of ``a``'s, else None."""
    if any(x.shape != y.shape for x, y in zip(a, b)):
        return None
    lam = 1.0
    tol = 64 * torch.finfo(a[0].dtype).eps
    for x, y in zip(a, b):
        xx = float(torch.linalg.vector_norm(x)) ** 2
        if xx == 0:
            return None
        f = complex((x.conj() * y).sum()) / xx if x.is_complex() else float((x * y).sum()) / xx
        if float(torch.linalg.vector_norm(y - f * x)) > tol * float(torch.linalg.vector_norm(y)):
            return None
        lam *= f
    return lam


def _merge_sum(cores: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same tensor with its component rings split out and proportional ones merged."""
    parts = _components(cores)
    if not parts:  # the tensor is exactly zero
        return [torch.zeros(1, c.shape[1], 1, dtype=c.dtype, device=c.device) for c in cores]
    merged: list[list[torch.Tensor]] = []
    for part in parts:
        for j, kept in enumerate(merged):
            lam = _proportional(kept, part)
            if lam is not None:
                merged[j] = [kept[0] * (1 + lam)] + kept[1:]
                break
        else:
            merged.append(part)
    ring = TensorRing(merged[0], validate=False)
    for part in merged[1:]:
        ring = add(ring, TensorRing(part, validate=False))
    return list(ring.cores)


# ---- 2. truncation ---------------------------------------------------------------------------
def _sweep(cores: list[torch.Tensor], delta: float, cap: int | None) -> tuple[list[torch.Tensor], float]:
    """TT rounding of the ring opened at bond 0 (bond 0 itself is untouched); returns the cores
    and the norm of all singular values discarded."""
    cores = [c.clone() for c in cores]
    d = len(cores)
    for k in range(d - 1, 0, -1):  # right-to-left: make cores 1..d-1 right-orthonormal
        r0, n, r1 = cores[k].shape
        q, r = torch.linalg.qr(cores[k].reshape(r0, n * r1).T)
        cores[k] = q.T.reshape(-1, n, r1)
        cores[k - 1] = contract("ajb,cb->ajc", cores[k - 1], r)
    lost2 = 0.0
    for k in range(d - 1):  # left-to-right truncation of the internal bonds
        r0, n, r1 = cores[k].shape
        u, s, vh = torch.linalg.svd(cores[k].reshape(r0 * n, r1), full_matrices=False)
        rank = truncation_rank(s, delta, cap)
        lost2 += float((s[rank:].double() ** 2).sum())
        cores[k] = u[:, :rank].reshape(r0, n, rank)
        cores[k + 1] = contract("ab,bjc->ajc", s[:rank, None] * vh[:rank], cores[k + 1])
    return cores, math.sqrt(lost2)


def _round_once(cores: list[torch.Tensor], delta_of, cap) -> tuple[list[torch.Tensor], float]:
    """Both truncation stages; returns the cores and the bound on ``||before - after||``."""
    d = len(cores)
    r_open = cores[0].shape[0]
    cores, lost = _sweep(cores, delta_of(r_open), cap)
    bound = math.sqrt(r_open) * lost
    if d > 2 or cores[0].shape[0] > 1:
        m = d // 2 if d > 1 else 0
        shifted = cores[m:] + cores[:m]
        r_open = shifted[0].shape[0]
        shifted, lost = _sweep(shifted, delta_of(r_open), cap)
        bound += math.sqrt(r_open) * lost
        cores = shifted[d - m :] + shifted[: d - m]
    return cores, bound


def _error(target: TensorRing, out: TensorRing, bound: float) -> float:
    """The smaller of two upper bounds on ``||target - out||`` (``||target|| = 1``): the
    truncation bound plus the rounding of a few products, and the inner-product error."""
    slack = 16 * target.ndim * torch.finfo(target.dtype).eps
    return min(bound + slack, ring_error(target, out))


def _truncate(target: TensorRing, cores: list[torch.Tensor], tol, cap) -> tuple[TensorRing, float]:
    """Truncated ring and its relative error (see :func:`_error`); unit norm."""
    d = len(cores)
    if tol is None:
        out, bound = _round_once(cores, lambda r: 0.0, cap)
        out = TensorRing(out, validate=False)
        return out, _error(target, out, bound)

    # guaranteed budget: two stages of d - 1 orthogonal truncations, sqrt(r_open) per trace;
    # then the threshold is relaxed while the error still meets tol
    def delta_for(mult):
        return lambda r_open: mult * tol / (2 * math.sqrt(max(d - 1, 1) * r_open))

    best = None
    for mult in (1.0, 2.0, 4.0, 8.0, 16.0):
        out, bound = _round_once(cores, delta_for(mult), cap)
        out = TensorRing(out, validate=False)
        err = _error(target, out, bound)
        if best is not None and (err > tol or out.n_params >= best[0].n_params):
            break
        best = (out, err)
        if err > tol:  # only possible with a rank cap or at the float floor
            break
    return best


# ---- the public function ---------------------------------------------------------------------
def _unit(ring: TensorRing) -> tuple[list[torch.Tensor], float]:
    """Cores of ``ring / ||ring||`` in a working precision, and ``log ||ring||`` (no overflow)."""
    dtype = torch.float32 if ring.dtype in LOW_PRECISION else ring.dtype
    cores = [c.detach().to(dtype) for c in ring.cores]
    log_scale = 0.0
    for k, c in enumerate(cores):
        m = float(c.abs().max())
        if m > 0:
            cores[k], log_scale = c / m, log_scale + math.log(m)
    norm = float(TensorRing(cores, validate=False).norm())
    if norm == 0 or not math.isfinite(norm):
        return cores, -math.inf if norm == 0 else log_scale
    f = norm ** (1 / len(cores))
    return [c / f for c in cores], log_scale + math.log(norm)


def tr_round(
    ring: TensorRing,
    rank=None,
    *,
    tol: float | None = None,
    stop_tol: float = 1e-7,
    refine: int = 0,
    callback=None,
    verbose: bool = False,
    return_info: bool = False,
    max_rank: int | None = None,
):
    """Lower the ranks of ``ring`` to meet a relative error ``tol`` and/or rank caps.

    Args:
        ring: the ring to round (any dtype and device; it is never densified).
        rank: cap on each bond (an int for all, or one per bond).
        tol: relative error target ``||ring - out|| <= tol ||ring||`` (0: only exact reductions).
        stop_tol: stop refining when the error changes by less than this (relative) between
            sweeps; 0 runs all ``refine`` sweeps.
        refine: at most this many ALS sweeps against ``ring`` (in TR format) after the
            truncation, at the truncated ranks; they are kept only if they lower the error.
        callback: ``callback(ring, info)`` after each refinement sweep; returning True stops.
        verbose: tqdm progress bar over the refinement sweeps.
        return_info: also return a :class:`~trkit.decompose.info.RoundInfo`.
        max_rank: cap on every bond (same as an int ``rank``).

    Returns:
        The rounded ``TensorRing`` in ``ring``'s dtype [, ``RoundInfo``].
    """
    if not isinstance(ring, TensorRing):
        raise InputTypeError(f"tr_round expects a TensorRing, got {type(ring).__name__}")
    if tol is None and max_rank is None and rank is None:
        raise InputError("give tol and/or a rank cap (rank or max_rank)")
    tol = None if tol is None else check_tol(tol)
    stop_tol, cap = check_stop_tol(stop_tol), check_max_rank(max_rank)
    if isinstance(refine, bool) or int(refine) != refine or int(refine) < 0:
        raise InputError(f"refine must be an int >= 0, got {refine!r}")
    if rank is not None:
        caps = normalize_ranks(rank, ring.shape, caps=[ring.numel**2] * ring.ndim, warn=False)
        cap = min(max(caps), cap) if cap is not None else max(caps)
    cores, log_scale = _unit(ring)

    def as_ring(cs):
        f = math.exp(log_scale / len(cs)) if math.isfinite(log_scale) else 0.0
        return TensorRing([(c * f).to(ring.dtype) for c in cs], validate=False)

    log = IterationLog(
        "tr_round",
        tol=tol,
        stop_tol=stop_tol,
        max_iter=max(int(refine), 1),
        callback=callback,
        verbose=verbose,
        info_cls=RoundInfo,
    )
    try:
        target = TensorRing(cores, validate=False)
        out, err = _truncate(target, _merge_sum(cores), tol, cap)
        bound = err
        log.converged = True  # nothing iterative ran (yet)
        if refine and err > 0:
            log.converged = False
            from trkit.decompose.ring_als import als_against_ring

            fit = out
            while log.n_iter < int(refine):
                fit = als_against_ring(target, fit, sweeps=1)
                fit_err = ring_error(target, fit)
                if fit_err < err:
                    out, err = fit, fit_err
                if log.record(fit_err, lambda f=fit: as_ring(f.cores)):
                    break
        if log.n_iter and tol is not None:
            log.converged = log.converged or err <= tol
        result = as_ring(out.cores)
        if not return_info:
            return result
        return result, log.info(err, result.ranks, error_bound=bound, input_ranks=ring.ranks)
    finally:
        log.close()


def round(tr: TensorRing, tol: float | None = None, max_rank: int | None = None, refine: int = 0):
    """Deprecated alias of :func:`tr_round` that returns ``(ring, rel_error)``.

    ``trkit.round`` shadowed the built-in ``round`` after ``from trkit import *``; it stays
    importable (outside ``__all__``) with a ``DeprecationWarning``.
    """
    warnings.warn(
        "trkit.round is deprecated; use trkit.tr_round(ring, tol=..., max_rank=..., return_info=True)",
        DeprecationWarning,
        stacklevel=2,
    )
    out, info = tr_round(tr, tol=tol, max_rank=max_rank, refine=refine, return_info=True)
    return out, info.rel_error
