"""TR-SVD (Zhao et al. 2016) with a tolerance guarantee and a structure-aware first split."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from trkit._kernels import truncation_rank
from trkit.decompose._common import (
    DecompositionInfo,
    check_max_rank,
    check_tensor,
    check_tol,
    normalize_ranks,
    relative_error,
)
from trkit.decompose._lowrank import row_basis
from trkit.decompose._split import kron_split
from trkit.errors import InputError
from trkit.ring import TensorRing

__all__ = ["tr_svd"]


def _rank_for(s: torch.Tensor, delta: float | None, fixed: int | None, cap: int | None) -> int:
    """Smallest rank whose discarded tail has norm <= delta (or the fixed rank), capped."""
    if fixed is None:
        return truncation_rank(s, delta, cap)
    return max(1, min(fixed, cap if cap is not None else fixed, int(s.numel())))


def _rank_lower_bound(mat: torch.Tensor, delta: float, cap: int | None, need: int) -> int:
    """A rank <= the one ``_rank_for`` picks for ``mat`` at ``delta``, from a sketch; 0 if skipped.

    For ``Q`` with orthonormal columns ``sigma_i(mat Q) <= sigma_i(mat)`` (interlacing), so the
    truncation rank of ``mat Q`` at ``delta`` never exceeds that of ``mat`` (nor the one the row
    basis finds, which is at least the SVD's). One power step makes ``Q`` catch the top space.
    """
    p, q = mat.shape
    k = need + 4
    if cap is not None and need > cap or k >= min(p, q) or p * q < 16_384:
        return 0
    g = torch.Generator().manual_seed(0)
    omega = torch.randn(q, k, generator=g, dtype=mat.dtype).to(mat.device)
    qz, _ = torch.linalg.qr(mat.T @ (mat @ omega))
    s = torch.linalg.svdvals(mat @ qz)
    slack = 1e-9 * delta + 64 * torch.finfo(mat.dtype).eps * float(s[0])  # rounding of the sketch
    return _rank_for(s, delta + slack, None, cap)


def _tail(
    y: torch.Tensor,
    r1: int,
    r2: int,
    shape: list[int],
    delta: float | None,
    ranks: list[int] | None,
    max_rank: int | None,
    budget: float = math.inf,
):
    """TT-SVD of the remainder ``y`` (``R x prod(shape[1:])``) with the ``a`` bond carried last.

    Returns the cores 2..d and the squared norm of everything discarded, or None as soon as
    the parameter count reaches ``budget`` (a better candidate already exists).
    """
    d = len(shape)
    rest = y.reshape([r1, r2] + shape[1:])
    perm = [1] + list(range(2, d + 1)) + [0]
    m = rest.permute(perm).contiguous()  # (r2, n2, ..., nd, r1)
    cores, r_prev, lost = [], r2, 0.0
    for k in range(1, d - 1):
        mat = m.reshape(r_prev * shape[k], -1)
        if delta is not None and math.isfinite(budget):
            # the same test as below, for the smallest rank that fails it: if even a cheap lower
            # bound on the rank reaches it, skip the full decomposition (same result, less work)
            done = sum(c.numel() for c in cores)
            need = max(1, math.ceil((budget - done) / (r_prev * shape[k] + shape[d - 1] * r1)))
            if need <= 1 or _rank_lower_bound(mat, delta, max_rank, need) >= need:
                return None
        u, s, b = row_basis(mat)
        fixed = ranks[k + 1] if ranks is not None else None
        r = _rank_for(s, delta, fixed, max_rank)
        lost += float((s[r:].double() ** 2).sum())
        cores.append(u[:, :r].reshape(r_prev, shape[k], r))
        if sum(c.numel() for c in cores) + r * shape[d - 1] * r1 >= budget:
            return None
        m = b[:r]
        r_prev = r
    cores.append(m.reshape(r_prev, shape[d - 1], r1))
    return cores, lost


def _candidate(
    x2: torch.Tensor,
    u: torch.Tensor,
    y: torch.Tensor,
    r1: int,
    r2: int,
    shape,
    delta,
    ranks,
    max_rank,
    structured: bool,
    seed: int,
    budget: float = math.inf,
):
    """One full ring for a given split.

    Returns ``(found, out)``: ``found`` whether the Kronecker split was found (structured, r1 > 1
    only); ``out`` the cores and error bound, or None (no structured split, or pruned by budget).
    """
    R = r1 * r2
    # every core holds >= r_k n_k r_{k+1} >= n_k entries: prune before any work
    least = r2 * shape[1] * r1 if len(shape) == 2 else r2 * shape[1] + sum(shape[2:-1]) + shape[-1] * r1
    if shape[0] * R + least >= budget:
        return False, None
    found = False
    if structured and r1 > 1:
        k_np = kron_split(y.detach().cpu().double().numpy(), r1, r2, shape[-1], seed=seed)
        if k_np is None:
            return False, None
        found = True
        k = torch.from_numpy(k_np).to(dtype=u.dtype, device=u.device)
        u_k = u @ k
        y_k = torch.linalg.solve(k, y)
        # ||U K E|| <= ||K||_2 ||E||: shrink the later budget so the bound still holds
        knorm = float(torch.linalg.matrix_norm(k.double(), 2))
    else:
        u_k, y_k, knorm = u, y, 1.0
    tail_delta = None if delta is None else delta / knorm
    first = u_k.reshape(shape[0], r1, r2).permute(1, 0, 2).contiguous()
    out = _tail(y_k, r1, r2, list(shape), tail_delta, ranks, max_rank, budget - first.numel())
    if out is None:
        return found, None
    rest, lost = out
    return found, ([first] + rest, math.sqrt(lost) * knorm)


def _rotated(x: torch.Tensor, s0: int) -> torch.Tensor:
    d = x.ndim
    return x.permute([(s0 + j) % d for j in range(d)]) if s0 else x


def _start_basis(x: torch.Tensor, s0: int):
    """Row basis ``(u, s, b)`` of the unfolding of the ring cut at mode ``s0``."""
    xs = _rotated(x, s0)
    return row_basis(xs.reshape(xs.shape[0], -1))


def _factor_pairs(R: int, max_rank: int | None):
    pairs = [(a, R // a) for a in range(1, R + 1) if R % a == 0]
    if max_rank is not None:
        pairs = [(a, b) for a, b in pairs if a <= max_rank and b <= max_rank] or [(1, min(R, max_rank))]
    return pairs


def _best_for_start(x, s0, ranks, delta, cap, xnorm, seed, budget=math.inf, basis=None):
    """All first splits for the ring started at mode ``s0``; returns the best candidate (or None
    when none has fewer than ``budget`` parameters). ``basis``: ``_start_basis(x, s0)`` if known."""
    d = x.ndim
    xs = _rotated(x, s0)
    sshape = list(xs.shape)
    u, s, b = _start_basis(x, s0) if basis is None else basis
    if ranks is not None:
        rr = [ranks[(s0 + j) % d] for j in range(d)]
        R = rr[0] * rr[1]
        pairs = [(rr[0], rr[1])]
    else:
        rr = None
        R = _rank_for(s, delta, None, None if cap is None else cap * cap)
        pairs = _factor_pairs(R, cap)
        R = pairs[0][0] * pairs[0][1] if cap is not None else R
        # balanced splits first: they are usually best, and later ones then abort early
        pairs.sort(key=lambda p: (abs(math.log(p[0] / p[1])), p[0]))
    lost0 = float((s[R:].double() ** 2).sum())
    best, kron_ok, fixed = None, False, []
    for r1, r2 in pairs:
        if r1 * r2 != R:
            continue
        u_r, y = u[:, :R], b[:R]
        for structured in (True, False) if r1 > 1 else (False,):
            if not structured and kron_ok and r1 > 1:
                break  # a Kronecker split was found: the data is ring-like, arbitrary splits lose
            limit = budget if best is None or ranks is not None else min(budget, best[0][0])
            found, out = _candidate(
                xs, u_r, y, r1, r2, sshape, delta, rr, cap, structured, seed, limit if ranks is None else math.inf
            )
            kron_ok = kron_ok or (found and r2 > 1)
            if out is None:
                continue
            cores, bound_tail = out
            n_params = sum(c.numel() for c in cores)
            bound = math.sqrt(lost0 + bound_tail**2)
            entry = (cores, bound, structured and r1 > 1, (r1, r2))
            if ranks is not None:
                fixed.append(entry)  # compared by dense error below, only if there is a choice
                continue
            if best is None or (n_params, bound) < best[0]:
                best = ((n_params, bound),) + entry
    if len(fixed) == 1:
        best = ((0.0, 0),) + fixed[0]
    elif fixed:
        errs = [relative_error(xs, TensorRing(e[0], validate=False), xnorm) for e in fixed]
        j = int(np.argmin(errs))
        best = ((errs[j], 0),) + fixed[j]
    return best


def tr_svd(
    x,
    rank=None,
    tol: float | None = None,
    max_rank: int | None = None,
    *,
    start: int | str = "auto",
    seed: int = 0,
    return_info: bool = False,
):
    """Tensor-ring decomposition by sequential truncated SVDs (TR-SVD).

    Args:
        x: dense tensor of shape ``(n_1, ..., n_d)``, ``d >= 2`` (torch, numpy or array-like;
            the result is on ``x``'s device, float32 stays float32, integers become float64).
        rank: ranks ``(r_1, ..., r_d)`` (or one int for all): truncate to these ranks. Ranks the
            shape cannot hold (``r_1 r_2 > n_1`` etc.) are clamped with a ``UserWarning``.
        tol: relative error target: ranks are chosen so ``||x - x_tr|| <= tol ||x||``
            (guaranteed; each of the ``d`` truncations gets ``tol ||x|| / sqrt(d)``).
        max_rank: cap on every bond rank in tolerance mode (the guarantee then no longer holds).
        start: mode the ring is cut at first; ``"auto"`` (tolerance mode) tries every mode whose
            unfolding is rank-deficient at the tolerance and keeps the fewest parameters;
            ``0`` in rank mode.
        seed: seed for the random probes of the first split (the result is deterministic).
        return_info: also return a :class:`DecompositionInfo` (``extra``: ``first_split``,
            ``start``, ``structured_split``, ``error_bound``).

    Returns:
        ``TensorRing`` with cores ``(r_k, n_k, r_{k+1})`` (and the info when asked).

    The first SVD's ``r_1 r_2`` columns are split between the two bonds by recovering their
    Kronecker structure (see ``trkit.decompose._split``) so an exact ring is recovered at its
    own ranks; every factorisation ``r_1 r_2 = R`` is tried and the one with the fewest
    parameters (tolerance mode) or the lowest error (rank mode) is kept. Candidates that a
    cheap sketched rank bound shows cannot beat the best so far are skipped before their SVDs;
    wide unfoldings are decomposed through their Gram matrix with exact error accounting
    (``trkit.decompose._lowrank``), so the guarantee is unchanged.
    """
    t0 = time.perf_counter()
    x = check_tensor(x)
    if rank is None and tol is None:
        raise InputError("give rank (int or list) or tol (relative error target)")
    if tol is not None:
        tol = check_tol(tol)
    max_rank = check_max_rank(max_rank)
    shape = list(x.shape)
    d = len(shape)
    xnorm = float(torch.linalg.vector_norm(x))
    ranks = None
    if rank is not None and tol is None:
        caps = [min(shape[0], x.numel() // shape[0])] + [x.numel()] * (d - 1)
        ranks = normalize_ranks(rank, shape, caps=caps)
        ranks = _clamp_tail(ranks, shape)
        s0 = 0 if start == "auto" else int(start) % d
    elif tol is not None:
        s0 = None if start == "auto" else int(start) % d
    delta = None if tol is None else tol * xnorm / math.sqrt(d)
    cap = None if max_rank is None else int(max_rank)
    if rank is not None and tol is not None:  # rank acts as a cap per bond in tolerance mode
        cap_list = normalize_ranks(rank, shape, warn=False)
        cap = max(cap_list) if cap is None else min(cap, max(cap_list))

    bases = {}
    if s0 is None:
        # modes whose unfolding is genuinely low-rank are worth starting at; try the 3 most
        # compressible (their row bases are kept for the candidates, the others dropped)
        firsts = []
        for k in range(d):
            basis = _start_basis(x, k)
            firsts.append(_rank_for(basis[1], delta, None, None if cap is None else cap * cap))
            bases[k] = basis
            keep = sorted(bases, key=lambda j: (firsts[j], j))[:3]
            bases = {j: bases[j] for j in keep}
        starts = [k for k in range(d) if firsts[k] < shape[k]] or [int(np.argmin(firsts))]
        starts = sorted(starts, key=lambda k: (firsts[k], k))[:3]
    else:
        starts = [s0]
    best = None
    for s_try in starts:
        budget = math.inf if best is None or ranks is not None else best[0][0]
        found = _best_for_start(x, s_try, ranks, delta, cap, xnorm, seed, budget, bases.pop(s_try, None))
        if found is not None and (best is None or found[0] < best[0]):
            best = found + (s_try,)
    s0 = best[-1]
    _, cores, bound, structured, split, _ = best
    cores = [cores[(k - s0) % d] for k in range(d)]
    ring = TensorRing(cores, validate=False)
    if not return_info:
        return ring
    err = relative_error(x, ring, xnorm)
    info = DecompositionInfo(
        rel_error=err,
        history=[err],
        ranks=ring.ranks,
        time_s=time.perf_counter() - t0,
        n_iter=0,
        converged=True,
        extra={
            "first_split": split,
            "start": s0,
            "structured_split": structured,
            "error_bound": bound / xnorm if xnorm > 0 else bound,
        },
    )
    return ring, info


def _clamp_tail(ranks: list[int], shape: list[int]) -> list[int]:
    """Later TT-SVD steps cannot exceed the sizes of their unfoldings; clamp with a warning."""
    d = len(shape)
    out = list(ranks)
    r1 = out[0]
    for k in range(1, d - 1):
        left = out[k] * shape[k]
        right = int(np.prod(shape[k + 1 :])) * r1
        out[k + 1] = min(out[k + 1], left, right)
    if out != ranks:
        warnings.warn(
            f"ranks {ranks} cannot be reached for shape {tuple(shape)}; clamped to {out}", UserWarning, stacklevel=3
        )
    return out
