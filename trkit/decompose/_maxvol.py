"""Row selection for cross approximation: truncated fibre bases and maxvol rows.

``maxvol`` (Goreinov, Oseledets, Savostyanov, Tyrtyshnikov, Zamarashkin, "How to find a good
submatrix", 2010) picks ``r`` rows of a tall ``n x r`` matrix ``A`` whose square submatrix has a
locally maximal volume ``|det|``: every row of ``A`` is then a combination of the chosen rows with
coefficients of modulus at most ``tol``. It starts from the pivot rows of an LU factorisation
with partial pivoting and swaps one row at a time.

Everything here is numpy float64: the matrices are small (``r n x r``) and called many times,
where numpy's per-call overhead is several times lower than torch's.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["maxvol", "maxvol_rect", "singular_tail", "tail_rank", "truncated_basis"]


def maxvol(
    a: np.ndarray, tol: float = 1.05, max_swaps: int = 200, start: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``r`` rows of ``a`` (``n x r``, ``n >= r``, full column rank) of locally maximal volume.

    Args:
        start: ``r`` rows to start from (e.g. the pivots of the last pass, so rows only change
            when that buys more than ``tol`` in volume); ignored when they are nearly singular.

    Returns:
        ``rows`` (``r`` distinct ints) and ``coef`` (``n x r``) with ``a = coef @ a[rows]``;
        ``|coef| <= tol`` everywhere on return unless ``max_swaps`` ran out.
    """
    n, r = a.shape
    if start is None or len(start) != r or np.linalg.cond(a[start]) > 1e8:
        perm, _, _ = scipy.linalg.lu(a, check_finite=False)  # partial pivoting: a good starting set
        start = perm[:, :r].argmax(axis=0)
    rows = np.array(start)
    coef = np.linalg.solve(a[rows].T, a.T).T
    for _ in range(max_swaps):
        i, j = divmod(int(np.abs(coef).argmax()), r)
        if abs(coef[i, j]) <= tol:
            break
        # swap: row j of the selection becomes row i of a (rank-one update of a @ inv(a[rows]))
        row_i = coef[i].copy()
        row_i[j] -= 1.0
        coef -= np.outer(coef[:, j], row_i / coef[i, j])
        rows[j] = i
    return rows, coef


def maxvol_rect(
    u: np.ndarray, count: int, start: np.ndarray | None = None, tol: float = 1.05
) -> tuple[np.ndarray, np.ndarray]:
    """``count >= r`` rows of ``u`` (``n x r``, orthonormal columns) for least-squares interpolation.

    The first ``r`` rows are :func:`maxvol`'s (started from ``start[:r]`` when given); each
    further row is the one with the largest coefficients on the rows chosen so far, the row
    that most increases the volume ``sqrt(det(A^T A))`` of the rectangular submatrix ``A``
    (greedy rectangular maxvol, Mikhalev & Oseledets 2018).

    Returns:
        ``rows`` (``count`` distinct ints, ``count`` capped at ``n``) and
        ``coef = u @ pinv(u[rows])`` (``n x count``), so ``u = coef @ u[rows]``: any matrix
        whose columns lie in ``span(u)`` is reproduced from its rows ``rows`` by ``coef``.
    """
    n, r = u.shape
    count = min(count, n)
    rows, coef = maxvol(u, tol, start=None if start is None or len(start) < r else np.asarray(start)[:r])
    picked = list(rows)
    while len(picked) < count:
        norms = np.einsum("ij,ij->i", coef, coef)
        norms[picked] = -1.0
        picked.append(int(norms.argmax()))
        coef = u @ np.linalg.pinv(u[picked])
    return np.asarray(picked, dtype=np.int64), coef


def singular_tail(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors of ``mat`` (``p x q``) and ``tail[k] = ||s[k:]||`` (QR first when tall)."""
    p, q = mat.shape
    if q > p:
        u, s, _ = np.linalg.svd(mat, full_matrices=False)
    else:  # tall: QR first, then the SVD of the small triangular factor
        qm, rm = np.linalg.qr(mat)
        w, s, _ = np.linalg.svd(rm)
        u = qm @ w
    return u, np.sqrt(np.cumsum((s**2)[::-1])[::-1])


def tail_rank(tail: np.ndarray, rank_tol: float, max_rank: int) -> int:
    """Smallest rank whose discarded singular values have norm ``<= rank_tol * tail[0]``, in ``[1, max_rank]``."""
    rho = int((tail > rank_tol * tail[0]).sum()) if tail[0] > 0 else 1
    return max(1, min(rho, max_rank))


def truncated_basis(mat: np.ndarray, rank_tol: float, max_rank: int) -> tuple[np.ndarray, int]:
    """Orthonormal basis of ``mat``'s (``p x q``) column space, truncated to its numerical rank.

    The rank ``rho`` is the smallest whose discarded singular values have norm
    ``<= rank_tol * ||mat||``, at least 1 and at most ``max_rank``.

    Returns:
        ``u`` (``p x rho``) and ``rho``.
    """
    u, tail = singular_tail(mat)
    rho = tail_rank(tail, rank_tol, min(max_rank, mat.shape[0]))
    return u[:, :rho], rho
