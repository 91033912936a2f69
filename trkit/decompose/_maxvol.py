"""Row selection for cross approximation: maxvol, rectangular maxvol, truncated fibre bases.

``maxvol`` (Goreinov, Oseledets, Savostyanov, Tyrtyshnikov, Zamarashkin, "How to find a good
submatrix", 2010) picks ``r`` rows of a tall ``n x r`` matrix ``A`` whose square submatrix has a
locally maximal volume ``|det|``: every row of ``A`` is then a combination of the chosen rows with
coefficients of modulus at most ``tol``. It starts from the pivot rows of an LU factorisation with partial pivoting
and swaps one row at a time.

``rect_maxvol`` (Mikhalev & Oseledets, "Rectangular maximum-volume submatrices and their
applications", 2018) then adds rows greedily, each time the row the current selection represents
worst (largest coefficient norm), and returns least-squares coefficients. Extra rows are how a
cross grows its ranks: the next core sees more pivots than this one could resolve.

Everything here is numpy float64: the matrices are small (``r n x r``) and called many times,
where numpy's per-call overhead is several times lower than torch's.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["maxvol", "rect_maxvol", "truncated_basis"]


def maxvol(a: np.ndarray, tol: float = 1.05, max_swaps: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """``r`` rows of ``a`` (``n x r``, ``n >= r``, full column rank) of locally maximal volume.

    Returns:
        ``rows`` (``r`` distinct ints) and ``coef`` (``n x r``) with ``a = coef @ a[rows]``;
        ``|coef| <= tol`` everywhere on return unless ``max_swaps`` ran out.
    """
    n, r = a.shape
    perm, _, _ = scipy.linalg.lu(a, check_finite=False)  # partial pivoting: a good starting set
    rows = perm[:, :r].argmax(axis=0)
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


def rect_maxvol(a: np.ndarray, n_rows: int, tol: float = 1.05) -> tuple[np.ndarray, np.ndarray]:
    """``n_rows >= r`` rows of ``a`` (``n x r``): maxvol, then greedily the worst-represented rows.

    Returns:
        ``rows`` and ``coef`` (``n x n_rows``) with ``a = coef @ a[rows]`` in the least-squares
        sense (``coef = a @ pinv(a[rows])``). Stops early when every row is represented exactly.
    """
    rows, coef = maxvol(a, tol)
    n, r = a.shape
    n_rows = min(int(n_rows), n)
    if n_rows <= r:
        return rows, coef
    full = np.zeros((n, n_rows))
    full[:, :r] = coef
    chosen = list(rows)
    free = np.ones(n, dtype=bool)
    free[chosen] = False
    norms = np.where(free, (coef**2).sum(1), 0.0)
    k = r
    while k < n_rows:
        i = int(norms.argmax())
        if norms[i] <= 1e-12:  # every other row already lies in the span of the chosen ones
            break
        # adding row i to the least-squares fit: Sherman-Morrison update of pinv(a[rows])
        v = full[:, :k] @ full[i, :k]
        scale = 1.0 / (1.0 + v[i])
        full[:, :k] -= scale * np.outer(v, full[i, :k])
        full[:, k] = scale * v
        norms = np.where(free, norms - scale * v * v, 0.0)
        free[i] = False
        norms[i] = 0.0
        chosen.append(i)
        k += 1
    return np.asarray(chosen), full[:, :k]


def truncated_basis(mat: np.ndarray, rank_tol: float, max_rank: int) -> tuple[np.ndarray, int]:
    """Orthonormal basis of ``mat``'s (``p x q``) column space, truncated to its numerical rank.

    The rank ``rho`` is the smallest whose discarded singular values have norm
    ``<= rank_tol * ||mat||``, at least 1 and at most ``max_rank``.

    Returns:
        ``u`` (``p x rho``) and ``rho``.
    """
    p, q = mat.shape
    if q > p:
        u, s, _ = np.linalg.svd(mat, full_matrices=False)
    else:  # tall: QR first, then the SVD of the small triangular factor
        qm, rm = np.linalg.qr(mat)
        w, s, _ = np.linalg.svd(rm)
        u = qm @ w
    tail = np.sqrt(np.cumsum((s**2)[::-1])[::-1])  # tail[k] = ||s[k:]||
    rho = int((tail > rank_tol * tail[0]).sum()) if tail[0] > 0 else 1
    rho = max(1, min(rho, max_rank, p))
    return u[:, :rho], rho
