"""Tensor-ring completion: ALS on the observed entries only (TR-ALS with missing data).

For core ``k`` every observed entry ``e`` gives one row ``s_e`` (the product of the other cores'
slices at ``e``'s indices, ``r_k r_{k+1}`` long); each slice ``G_k[:, i, :]`` is then a small
ridge-regularised least-squares problem over the entries with ``i_k = i``. Cost per sweep
``O(d m r^3 + d m r^4)`` for ``m`` observed entries; the dense tensor is never needed.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch

from trkit.decompose._common import (
    check_finite,
    check_max_iter,
    check_stop_tol,
    check_tol,
    normalize_ranks,
    relative_residual,
)
from trkit.decompose._entries import slice_solve, subchain_rows
from trkit.decompose._run import IterationLog, scaled_ring, start_cores, unit_scale, working_dtype
from trkit.decompose.als import exact_floor, random_cores
from trkit.decompose.info import CompletionInfo
from trkit.errors import InputError, InputTypeError
from trkit.ring import TensorRing, as_tensor

__all__ = ["tr_complete"]


def _observed(x, mask, shape):
    """-> (idx (m, d) long, vals (m,), shape, dense x or None, mask or None)."""
    if mask is not None:
        xt = as_tensor(x)
        if not xt.is_floating_point() and not xt.is_complex():
            xt = xt.to(torch.float64)
        m = as_tensor(mask)
        if m.dtype != torch.bool:
            raise InputTypeError(f"mask must be a boolean array, got {m.dtype}")
        if tuple(m.shape) != tuple(xt.shape):
            raise InputError(f"mask shape {tuple(m.shape)} does not match x shape {tuple(xt.shape)}")
        m = m.to(xt.device)
        idx = m.nonzero()
        vals = xt[m]
        return idx, vals, tuple(xt.shape), xt, m
    if not (isinstance(x, (tuple, list)) and len(x) == 2):
        raise InputTypeError("give x with a boolean mask, or x=(indices (m, d), values (m,)) with shape=")
    if shape is None:
        raise InputError("shape is required when x is (indices, values)")
    idx, vals = as_tensor(x[0]), as_tensor(x[1])
    if idx.dtype.is_floating_point or idx.ndim != 2 or idx.shape[1] != len(shape):
        raise InputError(f"indices must be an int array of shape (m, {len(shape)}), got {tuple(idx.shape)}")
    if vals.ndim != 1 or vals.shape[0] != idx.shape[0]:
        raise InputError(f"values must have shape ({idx.shape[0]},), got {tuple(vals.shape)}")
    idx = idx.long().to(vals.device)
    if idx.numel() and ((idx < 0).any() or (idx >= torch.tensor(shape, device=idx.device)).any()):
        raise InputError(f"indices out of range for shape {tuple(shape)}")
    vals = vals if vals.is_floating_point() or vals.is_complex() else vals.to(torch.float64)
    return idx, vals, tuple(int(n) for n in shape), None, None


def tr_complete(
    x,
    rank=None,
    *,
    mask=None,
    tol: float | None = None,
    stop_tol: float = 1e-6,
    max_iter: int = 300,
    init="random",
    seed: int | None = 0,
    callback=None,
    verbose: bool = False,
    return_info: bool = False,
    shape=None,
    holdout: float = 0.1,
    ridge: float = 0.0,
):
    """Fit a tensor ring to the observed entries of a tensor.

    Args:
        x: dense tensor together with ``mask``, or a pair ``(indices (m, d) int, values (m,))``
            together with ``shape``. Real or complex; the result keeps the values' dtype.
        rank: ranks (int or ``d`` ints); clamped with a warning if unreachable.
        mask: boolean observation mask for dense ``x`` (same shape, True = observed); must
            observe at least one entry.
        tol: relative error target on the reported error (held-out, or training error with
            ``holdout=0``): stop once it is met.
        stop_tol: stop when that error changes by less than this (relative) between sweeps or
            the training error reaches the working precision; 0 runs all ``max_iter`` sweeps.
        max_iter: maximum number of sweeps.
        init: ``"random"`` (seeded) or a ``TensorRing``.
        seed: the result is deterministic given ``seed``.
        callback: ``callback(ring, info)`` after each sweep; returning ``True`` stops.
        verbose: tqdm progress bar over sweeps.
        return_info: also return a :class:`~trkit.decompose.info.CompletionInfo`.
        shape: the tensor's shape when ``x`` is ``(indices, values)``.
        holdout: fraction of observed entries withheld from fitting to report a held-out error
            (0 to fit all of them).
        ridge: relative ridge per slice (a 1e-12 floor is always added).

    Returns:
        ``TensorRing`` (the iterate with the lowest held-out error) [, ``CompletionInfo``].
    """
    if mask is None and rank is not None and _is_mask(rank):
        warnings.warn(
            "tr_complete(x, mask[, rank]) is deprecated: the second argument is the rank now; pass mask=...",
            DeprecationWarning,
            stacklevel=2,
        )
        mask, rank = rank, 2
    if rank is None:
        raise InputError("tr_complete needs rank (an int or one int per mode)")
    tol = None if tol is None else check_tol(tol)
    stop_tol, max_iter = check_stop_tol(stop_tol), check_max_iter(max_iter)
    if not 0 <= holdout < 1:
        raise InputError(f"holdout must be in [0, 1), got {holdout}")
    idx, vals, shape, dense, m = _observed(x, mask, shape)
    if idx.shape[0] == 0:
        raise InputError("the mask observes no entries; nothing to fit")
    check_finite(vals, "the observed values")
    out_dtype = vals.dtype
    vals, scale = unit_scale(vals.to(working_dtype(vals.dtype)))
    d = len(shape)
    ranks = normalize_ranks(rank, list(shape))
    gen = torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**62))
    n_obs = idx.shape[0]
    perm = torch.randperm(n_obs, generator=gen).to(idx.device)
    n_hold = int(round(holdout * n_obs)) if n_obs > 1 else 0
    hold, train = perm[:n_hold], perm[n_hold:]
    idx_t, val_t, idx_h, val_h = idx[train], vals[train], idx[hold], vals[hold]
    dtype, device = vals.dtype, vals.device
    if isinstance(init, TensorRing):
        cores = start_cores(init, shape, scale, dtype, device)
    elif init == "random":
        rms = float(torch.sqrt((val_t.abs() ** 2).mean())) if val_t.numel() else 1.0
        cores = []
        for k in range(d):
            r0, r1 = ranks[k], ranks[(k + 1) % d]
            g = random_cores((r0, shape[k], r1), gen, dtype, device)
            cores.append(g / math.sqrt(r0 * r1) ** 0.5 * rms ** (1 / d))
    else:
        raise InputError(f"init must be 'random' or a TensorRing, got {init!r}")

    as_ring = functools.partial(scaled_ring, scale=scale, dtype=out_dtype)
    floor = exact_floor(dtype)
    best, best_key = None, math.inf
    with IterationLog(
        "tr_complete",
        tol=tol,
        stop_tol=stop_tol,
        max_iter=max_iter,
        callback=callback,
        verbose=verbose,
        info_cls=CompletionInfo,
    ) as log:
        while log.n_iter < max_iter:
            for k in range(d):
                rows = subchain_rows(cores, k, idx_t)
                ra, nk, rb = cores[k].shape
                old = cores[k].permute(1, 0, 2).reshape(nk, ra * rb)
                new = slice_solve(rows, val_t, idx_t[:, k], nk, None, ridge, old)
                cores[k] = new.reshape(nk, ra, rb).permute(1, 0, 2).contiguous()
            ring = TensorRing(cores, validate=False)
            train_err = relative_residual(ring.entries(idx_t), val_t)
            key = relative_residual(ring.entries(idx_h), val_h) if n_hold else train_err
            if key < best_key:
                best_key, best = key, [c.clone() for c in cores]
            if log.record(key, lambda: as_ring(cores), train_error=f"{train_err:.3e}"):
                break
            if stop_tol > 0 and train_err < floor:
                log.converged = True
                break
        ring = TensorRing(best, validate=False)
        out = as_ring(best)
        if not return_info:
            return out
        train_err = relative_residual(ring.entries(idx_t), val_t)
        held = relative_residual(ring.entries(idx_h), val_h) if n_hold else None
        unobs = None
        if dense is not None and (~m).any() and dense.numel() <= 50_000_000:
            unobs = relative_residual(out.to_dense()[~m].to(dense.dtype), dense[~m])
        return out, log.info(
            held if held is not None else train_err,
            out.ranks,
            train_error=train_err,
            heldout_error=held,
            unobserved_error=unobs,
            n_observed=int(n_obs),
            n_train=int(train.numel()),
        )


def _is_mask(value) -> bool:
    """A boolean array or tensor (what the old positional ``mask`` argument held)."""
    dtype = getattr(value, "dtype", None)
    return dtype is not None and (dtype == torch.bool or str(dtype) == "bool")
