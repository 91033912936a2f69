"""TR-SVD (Zhao et al. 2016) with a tolerance guarantee and a structure-aware first split."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from trkit._kernels import truncation_rank
from trkit.decompose._common import check_max_rank, check_tensor, check_tol, normalize_ranks, relative_error
from trkit.decompose._lowrank import row_basis
from trkit.decompose._run import scaled_ring, to_working
from trkit.decompose._split import kron_split
from trkit.decompose.info import SVDInfo
from trkit.errors import InputError, InputTypeError
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
    omega = torch.randn(q, k, generator=g, dtype=mat.real.dtype).to(device=mat.device, dtype=mat.dtype)
    qz, _ = torch.linalg.qr(mat.mH @ (mat @ omega))
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
    caps: list[int] | None,
    budget: float = math.inf,
):
    """TT-SVD of the remainder ``y`` (``R x prod(shape[1:])``) with the ``a`` bond carried last.

    ``ranks`` (fixed ranks) and ``caps`` (per-bond caps in tolerance mode) are in the order of
    the ring cut at this start. Returns the cores 2..d and the squared norm of everything
    discarded, or None as soon as the parameter count reaches ``budget`` (a better candidate
    already exists).
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
            cap = caps[k + 1] if caps is not None else None
            if need <= 1 or _rank_lower_bound(mat, delta, cap, need) >= need:
                return None
        u, s, b = row_basis(mat)
        fixed = ranks[k + 1] if ranks is not None else None
        r = _rank_for(s, delta, fixed, caps[k + 1] if caps is not None else None)
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
    caps,
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
        wide = torch.complex128 if y.is_complex() else torch.float64
        k_np = kron_split(y.detach().cpu().to(wide).numpy(), r1, r2, shape[-1], seed=seed)
        if k_np is None:
            return False, None
        found = True
        k = torch.from_numpy(k_np).to(dtype=u.dtype, device=u.device)
        u_k = u @ k
        y_k = torch.linalg.solve(k, y)
        # ||U K E|| <= ||K||_2 ||E||: shrink the later budget so the bound still holds
        knorm = float(torch.linalg.matrix_norm(k.to(wide), 2))
    else:
        u_k, y_k, knorm = u, y, 1.0
    tail_delta = None if delta is None else delta / knorm
    first = u_k.reshape(shape[0], r1, r2).permute(1, 0, 2).contiguous()
    out = _tail(y_k, r1, r2, list(shape), tail_delta, ranks, caps, budget - first.numel())
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


def _factor_pairs(R: int, cap0: float, cap1: float) -> tuple[int, list[tuple[int, int]]]:
    """The largest ``R' <= R`` with splits ``a * b = R'``, ``a <= cap0``, ``b <= cap1``, and those splits."""
    for total in range(R, 0, -1):
        pairs = [(a, total // a) for a in range(1, total + 1) if total % a == 0 and a <= cap0 and total // a <= cap1]
        if pairs:
            return total, pairs
    return 1, [(1, 1)]


def _rotate(values: list[int] | None, s0: int) -> list[int] | None:
    return None if values is None else values[s0:] + values[:s0]


def _best_for_start(x, s0, ranks, delta, caps, xnorm, seed, budget=math.inf, basis=None):
    """All first splits for the ring started at mode ``s0``; returns the best candidate (or None
    when none has fewer than ``budget`` parameters). ``ranks``/``caps`` are in mode order;
    ``basis``: ``_start_basis(x, s0)`` if known."""
    xs = _rotated(x, s0)
    sshape = list(xs.shape)
    u, s, b = _start_basis(x, s0) if basis is None else basis
    rr, cc = _rotate(ranks, s0), _rotate(caps, s0)
    if rr is not None:
        R = rr[0] * rr[1]
        pairs = [(rr[0], rr[1])]
    else:
        cap0, cap1 = (math.inf, math.inf) if cc is None else (cc[0], cc[1])
        R, pairs = _factor_pairs(_rank_for(s, delta, None, None if cc is None else cap0 * cap1), cap0, cap1)
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
                xs, u_r, y, r1, r2, sshape, delta, rr, cc, structured, seed, limit if ranks is None else math.inf
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
    *,
    tol: float | None = None,
    max_rank: int | None = None,
    start: int | str = "auto",
    seed: int = 0,
    return_info: bool = False,
):
    """Tensor-ring decomposition by sequential truncated SVDs (TR-SVD).

    Args:
        x: dense tensor of shape ``(n_1, ..., n_d)``, ``d >= 2`` (torch, numpy or array-like;
            real or complex). The result is on ``x``'s device in ``x``'s dtype (integers become
            float64; float16/bfloat16 are computed in float32).
        rank: without ``tol``: the ranks ``(r_1, ..., r_d)`` (or one int for all) to truncate
            to; ranks the shape cannot hold (``r_1 r_2 > n_1`` in the order of the ring cut at
            ``start``, etc.) are clamped with a ``UserWarning``. With ``tol``: a cap on each bond.
        tol: relative error target, ``||x - x_tr|| <= tol ||x||``, guaranteed unless a rank cap
            stops it (each of the ``d`` truncations gets ``tol ||x|| / sqrt(d)``); then a
            ``UserWarning`` says so and ``info.tol_met`` is False. ``tol=0`` keeps every nonzero
            singular value (exact).
        max_rank: cap on every bond in tolerance mode (same as an int ``rank`` with ``tol``).
        start: mode the ring is cut at first; ``"auto"`` (tolerance mode) tries the modes whose
            unfolding is rank-deficient at the tolerance and keeps the fewest parameters;
            ``0`` in rank mode.
        seed: seed for the random probes of the first split (the result is deterministic).
        return_info: also return an :class:`~trkit.decompose.info.SVDInfo`.

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
    work = to_working(x)
    t = work.t
    shape = list(t.shape)
    d = len(shape)
    if start != "auto" and (isinstance(start, bool) or not isinstance(start, (int, np.integer))):
        raise InputTypeError(f"start must be 'auto' or a mode number, got {start!r}")
    s0 = None if start == "auto" else int(start) % d
    ranks = caps = None
    if tol is None:
        s0 = 0 if s0 is None else s0
        ranks = _reachable_ranks(rank, shape, s0)
    else:
        if rank is not None:
            caps = normalize_ranks(rank, shape, caps=[math.prod(shape) ** 2] * d, warn=False)
        if max_rank is not None:
            caps = [min(c, max_rank) for c in caps] if caps is not None else [max_rank] * d
    delta = None if tol is None else tol / math.sqrt(d)  # ||t|| = 1

    bases = {}
    if s0 is None:
        # modes whose unfolding is genuinely low-rank are worth starting at; try the 3 most
        # compressible (their row bases are kept for the candidates, the others dropped)
        firsts = []
        for k in range(d):
            basis = _start_basis(t, k)
            firsts.append(_rank_for(basis[1], delta, None, None if caps is None else caps[k] * caps[(k + 1) % d]))
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
        found = _best_for_start(t, s_try, ranks, delta, caps, 1.0, seed, budget, bases.pop(s_try, None))
        if found is not None and (best is None or found[0] < best[0]):
            best = found + (s_try,)
    s0 = best[-1]
    _, cores, bound, structured, split, _ = best
    cores = [cores[(k - s0) % d] for k in range(d)]
    err = None
    if return_info or (tol is not None and bound > tol):
        err = relative_error(t, TensorRing(cores, validate=False), 1.0)
    if tol is not None and err is not None and err > tol:
        warnings.warn(
            f"tr_svd: tol={tol:g} not met at the rank caps {caps}: relative error {err:.3g} "
            "(raise rank/max_rank or leave them out)",
            UserWarning,
            stacklevel=2,
        )
    ring = scaled_ring(cores, work.scale, work.out_dtype)
    if not return_info:
        return ring
    info = SVDInfo(
        method="tr_svd",
        rel_error=err,
        ranks=ring.ranks,
        time_s=time.perf_counter() - t0,
        tol=tol,
        tol_met=None if tol is None else err <= tol,
        history=[err],
        first_split=split,
        start=s0,
        structured_split=structured,
        error_bound=bound,
    )
    return ring, info


def _reachable_ranks(rank, shape: list[int], s0: int) -> list[int]:
    """``rank`` clamped (with a warning) to what TR-SVD can reach with the ring cut at mode ``s0``:
    ``r_s0 r_s0+1 <= n_s0`` for the first core, and no later bond above its unfolding's size."""
    d = len(shape)
    ranks = normalize_ranks(rank, shape, caps=[math.prod(shape) ** 2] * d, warn=False)
    sshape = _rotate(shape, s0)
    n = math.prod(shape)
    clamped = normalize_ranks(
        _rotate(ranks, s0), sshape, caps=[min(sshape[0], n // sshape[0])] + [n] * (d - 1), warn=False
    )
    r1 = clamped[0]
    for k in range(1, d - 1):
        clamped[k + 1] = min(clamped[k + 1], clamped[k] * sshape[k], math.prod(sshape[k + 1 :]) * r1)
    clamped = _rotate(clamped, (d - s0) % d)
    if clamped != ranks:
        where = f" (ring cut at mode {s0})" if s0 else ""
        warnings.warn(
            f"ranks {ranks} cannot be reached for shape {tuple(shape)}{where}; clamped to {clamped}",
            UserWarning,
            stacklevel=3,
        )
    return clamped
