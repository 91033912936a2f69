"""Tensor-ring completion: ALS on the observed entries only (TR-ALS with missing data).

For core ``k`` every observed entry ``e`` gives one row ``s_e`` (the product of the other cores'
slices at ``e``'s indices, ``r_k r_{k+1}`` long); each slice ``G_k[:, i, :]`` is then a small
ridge-regularised least-squares problem over the entries with ``i_k = i``. Cost per sweep
``O(d m r^3 + d m r^4)`` for ``m`` observed entries; the dense tensor is never needed.
"""

from __future__ import annotations

import math
import time

import torch

from trkit.decompose._common import (
    DecompositionInfo,
    check_tol,
    normalize_ranks,
    progress,
    relative_residual,
    start_cores,
)
from trkit.decompose._entries import slice_solve, subchain_rows
from trkit.errors import InputError, InputTypeError
from trkit.ring import TensorRing, as_tensor

__all__ = ["tr_complete"]


def _observed(x, mask, shape):
    """-> (idx (m, d) long, vals (m,), shape, dense x or None, mask or None)."""
    if mask is not None:
        xt = as_tensor(x)
        if not xt.is_floating_point():
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
    vals = vals if vals.is_floating_point() else vals.to(torch.float64)
    return idx, vals, tuple(int(n) for n in shape), None, None


def tr_complete(
    x,
    mask=None,
    rank=2,
    *,
    shape=None,
    init="random",
    max_iter: int = 300,
    tol: float = 1e-6,
    holdout: float = 0.1,
    ridge: float = 0.0,
    seed: int | None = 0,
    verbose: bool = False,
    return_info: bool = False,
):
    """Fit a tensor ring to the observed entries of a tensor.

    Args:
        x: dense tensor with ``mask`` (bool, same shape, True = observed), or a pair
            ``(indices (m, d) int, values (m,))`` together with ``shape``.
        mask: observation mask for dense ``x``; must observe at least one entry.
        rank: ranks (int or ``d`` ints); clamped with a warning if unreachable.
        init: ``"random"`` (seeded) or a ``TensorRing``.
        max_iter: maximum sweeps; stops earlier when the training error changes by < ``tol``
            (relative) or falls below ``1e-11``.
        holdout: fraction of observed entries withheld from fitting to report a held-out error
            (0 to fit all of them).
        ridge: relative ridge per slice (a 1e-12 floor is always added).
        seed, verbose, return_info: as in :func:`tr_als`.

    Returns:
        ``TensorRing`` [, ``DecompositionInfo`` with ``rel_error`` = held-out error (train error
        if ``holdout=0``) and extra ``train_error``, ``heldout_error``, ``unobserved_error``
        (dense ``x`` only: error on the entries the mask hides, meaningful when ``x`` holds them)].
    """
    t0 = time.perf_counter()
    tol = check_tol(tol)
    if not 0 <= holdout < 1:
        raise InputError(f"holdout must be in [0, 1), got {holdout}")
    idx, vals, shape, dense, m = _observed(x, mask, shape)
    if idx.shape[0] == 0:
        raise InputError("the mask observes no entries; nothing to fit")
    if not torch.isfinite(vals).all():
        raise InputError("observed values contain NaN or Inf")
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
        cores = start_cores(init, shape, dtype, device)
    elif init == "random":
        rms = float(torch.sqrt((val_t**2).mean())) if val_t.numel() else 1.0
        cores = []
        for k in range(d):
            r0, r1 = ranks[k], ranks[(k + 1) % d]
            g = torch.randn(r0, shape[k], r1, generator=gen, dtype=dtype)
            cores.append((g / math.sqrt(r0 * r1) ** 0.5 * rms ** (1 / d)).to(device))
    else:
        raise InputError(f"init must be 'random' or a TensorRing, got {init!r}")
    history, best, best_key, it, converged = [], None, math.inf, 0, False
    with progress(max_iter, verbose, "TR completion") as bar:
        for it in range(1, max_iter + 1):  # noqa: B007 (the count is read after the loop)
            for k in range(d):
                rows = subchain_rows(cores, k, idx_t)
                ra, nk, rb = cores[k].shape
                old = cores[k].permute(1, 0, 2).reshape(nk, ra * rb)
                new = slice_solve(rows, val_t, idx_t[:, k], nk, None, ridge, old)
                cores[k] = new.reshape(nk, ra, rb).permute(1, 0, 2).contiguous()
            ring = TensorRing(cores, validate=False)
            train_err = relative_residual(ring.entries(idx_t), val_t)
            history.append(train_err)
            key = relative_residual(ring.entries(idx_h), val_h) if n_hold else train_err
            if key < best_key:
                best_key, best = key, [c.clone() for c in cores]
            bar.update(1)
            bar.set_postfix(train_error=f"{train_err:.3e}")
            if train_err < 1e-11 or (len(history) > 1 and abs(history[-2] - train_err) <= tol * max(train_err, 1e-300)):
                converged = True
                break
    ring = TensorRing(best, validate=False)
    if not return_info:
        return ring
    train_err = relative_residual(ring.entries(idx_t), val_t)
    held = relative_residual(ring.entries(idx_h), val_h) if n_hold else None
    unobs = None
    if dense is not None and (~m).any() and dense.numel() <= 50_000_000:
        unobs = relative_residual(ring.to_dense()[~m], dense[~m])
    info = DecompositionInfo(
        rel_error=held if held is not None else train_err,
        history=history,
        ranks=ring.ranks,
        time_s=time.perf_counter() - t0,
        n_iter=it,
        converged=converged,
        extra={
            "train_error": train_err,
            "heldout_error": held,
            "unobserved_error": unobs,
            "n_observed": int(n_obs),
            "n_train": int(train.numel()),
        },
    )
    return ring, info
