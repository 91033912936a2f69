"""The passes of a one-site tensor-train cross (Oseledets & Tyrtyshnikov 2010, Savostyanov 2014).

State: nested multi-index sets. ``left[k]`` (``R_k x k``) are pivots on modes ``0..k-1``,
each row of ``left[k+1]`` a row of ``left[k]`` extended by one index of mode ``k``;
``right[k]`` (``R'_k x (d - k)``) likewise on modes ``k..d-1``. Core ``k`` is computed from the
*fibre* ``X[left[k], :, right[k+1]]`` (``R_k x n_k x R'_{k+1}`` entries).

A left-to-right pass turns each fibre's unfolding ``(R_k n_k) x R'_{k+1}`` into interpolation
coefficients on the maxvol rows of its column basis, which become ``left[k+1]``; the last core
is the fibre itself, so the train ``C_0 C_1 ... C_{d-2} F_{d-1}`` reproduces ``X`` on every pivot
cross. A right-to-left pass mirrors it. The far side of each fibre (the previous pass's pivots)
can get extra random multi-indices: the fibre then shows its dominant column space more
faithfully, and up to that many more directions, which is how ranks grow. Ranks follow the
fibres' numerical ranks, capped per bond; a fibre whose rank is below its pivot count (a tensor
of lower rank than the cap) places its surplus pivots by volume in its significant directions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trkit.decompose._blackbox import BlackBox
from trkit.decompose._maxvol import maxvol, maxvol_rect, singular_tail, tail_rank, truncated_basis

__all__ = ["TTCross", "tt_entries", "tt_distance", "tt_norm"]

# A fibre is numerically rank-deficient when the singular values past some rank ``rho'`` have
# norm <= DEFICIENT_TOL of the fibre's and sit below a gap: <= DEFICIENT_GAP times the last one
# kept. Its pivots then come from the rho' significant directions (greedy rectangular maxvol)
# instead of also from rounding noise; smooth decays (no gap) are left alone.
DEFICIENT_TOL = 1e-14
DEFICIENT_GAP = 1e-4


def tt_entries(cores: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Entries of the tensor train ``cores`` (``(r_k, n_k, r_{k+1})``, ``r_0 = r_d = 1``) at ``idx`` (``m x d``)."""
    v = cores[0][0, idx[:, 0], :]
    for k in range(1, len(cores)):
        v = (v[:, None, :] @ cores[k].transpose(1, 0, 2)[idx[:, k]])[:, 0, :]
    return v[:, 0]


def tt_norm(cores: list[np.ndarray]) -> float:
    """``||train||`` through a left-orthogonalising QR sweep (no cancellation, unlike inner products)."""
    carry: Any = np.ones((1, 1))  # np.linalg.qr's stubs do not know that mode="r" returns the array
    for g in cores:
        g = np.einsum("ab,bjc->ajc", carry, g)
        ra, n, rb = g.shape
        carry = np.linalg.qr(g.reshape(ra * n, rb), mode="r")
    return float(np.linalg.norm(carry))


def tt_distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """``||a - b|| / ||b||`` for two tensor trains of one shape, accurate to rounding of the entries."""
    d = len(a)
    diff = []
    for k, (x, y) in enumerate(zip(a, b)):
        if k == 0:
            diff.append(np.concatenate([x, -y], axis=2))
        elif k == d - 1:
            diff.append(np.concatenate([x, y], axis=0))
        else:
            z = np.zeros((x.shape[0] + y.shape[0], x.shape[1], x.shape[2] + y.shape[2]), np.result_type(x, y))
            z[: x.shape[0], :, : x.shape[2]] = x
            z[x.shape[0] :, :, x.shape[2] :] = y
            diff.append(z)
    den = tt_norm(b)
    return tt_norm(diff) / den if den > 0 else tt_norm(diff)


def significant_rank(tail: np.ndarray, rho: int) -> int:
    """The rank ``<= rho`` past which a fibre with singular tails ``tail`` holds only rounding noise.

    ``rho`` itself unless the tail past some smaller rank is ``<= DEFICIENT_TOL`` of the whole
    and ``<= DEFICIENT_GAP`` times the last singular value kept (a clear gap, not a decay).
    """
    basis = tail_rank(tail, DEFICIENT_TOL, rho)
    if basis >= rho:
        return rho
    last = math.sqrt(max(tail[basis - 1] ** 2 - tail[basis] ** 2, 0.0))
    return basis if tail[basis] <= DEFICIENT_GAP * last else rho


def _rows_of(previous: np.ndarray | None, base: np.ndarray, cut: int, count: int, pivot_first: bool):
    """Positions of ``previous`` pivots among the candidate rows built from ``base``, or None.

    Candidates are ``(alpha, i)`` (left pivots ``base[alpha]`` extended by ``i``, row
    ``alpha * count + i``) or ``(i, beta)`` (``i`` then right pivots ``base[beta]``, row
    ``i * count + beta``); ``cut`` splits a previous pivot into those two parts. Starting maxvol
    there keeps pivots that are still good, so later passes reuse cached entries.
    """
    if previous is None or previous.shape[1] != base.shape[1] + 1:
        return None
    where = {row.tobytes(): j for j, row in enumerate(base)}
    if pivot_first:
        found = [where.get(p[:cut].tobytes()) for p in previous]
        extra = previous[:, cut]
    else:
        found = [where.get(p[cut:].tobytes()) for p in previous]
        extra = previous[:, 0]
    if any(j is None for j in found):
        return None
    pos = np.asarray(found)
    return pos * count + extra if pivot_first else extra * count + pos


class TTCross:
    """Pivot sets, cores and the two pass directions of a TT cross.

    Args:
        box: the wrapped function (cache, counting).
        caps: ``d + 1`` rank caps, ``caps[0] = caps[d] = 1``.
        rank_tol: relative truncation threshold of every fibre's singular values.
    """

    def __init__(self, box: BlackBox, caps: list[int], rank_tol: float, rng):
        self.box, self.shape, self.d = box, box.shape, box.d
        self.caps, self.rank_tol = caps, rank_tol
        self.rng = rng
        # pivot sets: row k holds the multi-indices of bond k; the first pass fills the Nones
        self.left: list[Any] = [np.zeros((1, 0), np.int64)] + [None] * self.d
        self.right: list[Any] = [None] * self.d + [np.zeros((1, 0), np.int64)]
        self.n_passes = 0  # passes completed
        # whether right[] holds pivots some maxvol chose (a starting ring's, or a right-to-left
        # pass's) rather than random_right's draws: maxvol starts only from chosen pivots
        self.right_chosen = False
        self.saturated = 0  # fibres of the last pass that were full-rank in their columns

    def random_right(self, size: int) -> None:
        """Random nested right sets of ``min(size, caps[k])`` rows (``right[k]`` rows extend ``right[k+1]`` rows).

        Nested sets make the first pass's fibres consistent with each other, which gives
        markedly better first pivots than independent random multi-indices.
        """
        for k in range(self.d - 1, 0, -1):
            below = self.right[k + 1]
            n, b = self.shape[k], below.shape[0]
            count = min(size, self.caps[k], n * b)
            pick = self.rng.choice(n * b, size=count, replace=False)
            i, beta = np.divmod(pick, b)
            self.right[k] = np.hstack([i[:, None], below[beta]])
        self.right_chosen = False

    def right_from_train(self, cores: list[np.ndarray]) -> None:
        """Nested right sets from a starting ring (maxvol on its right interfaces; no evaluations).

        ``cores`` may close with ``r_0 > 1``: the closing index is carried as extra columns, so
        the interfaces span what the ring's right parts can express (``r_k r_0`` columns).
        """
        r0 = cores[0].shape[0]
        values = np.eye(r0)[None]  # right interface at the selected rows: (rows, r_k, r_0)
        for k in range(self.d - 1, 0, -1):
            g = cores[k]  # (r_k, n_k, r_{k+1})
            cand = np.einsum("anb,jbz->njaz", g, values)  # candidates (i, beta): (n, rows, r_k, r_0)
            n, rows = cand.shape[:2]
            mat = cand.reshape(n * rows, -1)
            u, _ = truncated_basis(mat, self.rank_tol, self.caps[k])
            picked, _ = maxvol(u)
            i, beta = np.divmod(picked, rows)
            self.right[k] = np.hstack([i[:, None], self.right[k + 1][beta]])
            values = cand.reshape(n * rows, g.shape[0], r0)[picked]
        self.right_chosen = True

    def _fibre(self, k: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """``X[left, :, right]`` (pivots on modes ``< k`` and ``> k``) as ``(len(left), n_k, len(right))``."""
        a, b, n = left.shape[0], right.shape[0], self.shape[k]
        idx = np.empty((a, n, b, self.d), dtype=np.int64)
        idx[..., :k] = left[:, None, None, :]
        idx[..., k] = np.arange(n)[None, :, None]
        idx[..., k + 1 :] = right[None, None, :, :]
        vals, _ = self.box(idx.reshape(-1, self.d))
        return vals.reshape(a, n, b)

    def _with_random(self, pivots: np.ndarray, modes: range, extra: int) -> np.ndarray:
        """``pivots`` plus up to ``extra`` random distinct multi-indices over ``modes``."""
        if extra <= 0 or not len(modes):
            return pivots
        shape = [self.shape[j] for j in modes]
        fresh = np.stack([self.rng.integers(0, n, extra) for n in shape], 1)
        return np.unique(np.vstack([pivots, fresh]), axis=0)

    def sweep(self, left_to_right: bool, extra: int = 0, caps: list[int] | None = None) -> list[np.ndarray]:
        """One pass (at rank caps ``caps``, default the engine's); returns the new cores.

        Each fibre's test side (the previous pass's pivots on the far side) gets ``extra``
        random multi-indices: like the oversampling of a randomised range finder, they let the
        fibre show its dominant column space and up to ``extra`` more rank than the last pass
        found. A fibre that is numerically rank-deficient (:func:`significant_rank`, from the
        second pass on) keeps its number of pivots, chosen by volume in its significant
        directions (:func:`~trkit.decompose._maxvol.maxvol_rect`), and its core interpolates
        in the least-squares sense; square maxvol would choose the surplus pivots, and with
        them part of the others, by rounding noise. Pivot sets are updated in place; the cores
        are only returned (the caller keeps the last complete train if the evaluation budget
        runs out halfway).
        """
        d, caps = self.d, self.caps if caps is None else caps
        cores: list[Any] = [None] * d
        self.saturated = 0
        for k in range(d - 1) if left_to_right else range(d - 1, 0, -1):
            if left_to_right:
                test = self._with_random(self.right[k + 1], range(k + 1, d), extra)
                f = self._fibre(k, self.left[k], test)
                a, n, b = f.shape
                mat, cap = f.reshape(a * n, b), caps[k + 1]
            else:
                test = self._with_random(self.left[k], range(k), extra)
                f = self._fibre(k, test, self.right[k + 1])
                a, n, b = f.shape
                mat, cap = f.reshape(a, n * b).T, caps[k]
            u, tail = singular_tail(mat)
            rho = tail_rank(tail, self.rank_tol, min(cap, mat.shape[0]))
            # the first pass's test side is random, not pivots: a deficiency there (e.g. test
            # indices that a function of a sum cannot tell apart) says little about the tensor
            basis = significant_rank(tail, rho) if self.n_passes > 0 else rho
            if rho == min(mat.shape) < cap:
                self.saturated += 1  # full rank in what it was shown: more test indices may show more
            # maxvol starts from the pivots this bond had (rows of this fibre's unfolding), so
            # that good pivots stay and their entries are reused; not from random_right's draws,
            # a poor start that maxvol's local swaps do not fully leave (inv_sum, rank 14, two
            # passes: held-out errors up to 8e-12 instead of at most 6e-15 over 9 seeds)
            if left_to_right:
                start = _rows_of(self.left[k + 1], self.left[k], k, n, pivot_first=True)
            elif self.right_chosen:
                start = _rows_of(self.right[k], self.right[k + 1], 1, b, pivot_first=False)
            else:
                start = None
            if basis < rho:  # rank-deficient: rho pivots by volume in the significant directions
                rows, coef = maxvol_rect(u[:, :basis], rho, start=start)
            else:
                rows, coef = maxvol(u[:, :rho], start=start)
            if left_to_right:
                cores[k] = coef.reshape(a, n, -1)
                alpha, i = np.divmod(rows, n)
                self.left[k + 1] = np.hstack([self.left[k][alpha], i[:, None]])
            else:
                cores[k] = coef.T.reshape(-1, n, b)
                i, beta = np.divmod(rows, b)
                self.right[k] = np.hstack([i[:, None], self.right[k + 1][beta]])
        self.n_passes += 1
        self.right_chosen = self.right_chosen or not left_to_right
        last = d - 1 if left_to_right else 0
        cores[last] = self._fibre(last, self.left[last], self.right[last + 1])
        return cores
