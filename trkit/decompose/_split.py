"""Choosing the first core's bond split ``r_1 * r_2`` in TR-SVD.

The first SVD gives an orthonormal basis ``U`` of the mode-1 column space, of dimension
``R = r_1 r_2``. For an exact ring that space is ``span{G_1[a, :, b]}``, but ``U`` is that basis
times an unknown ``R x R`` matrix ``C``; reshaping ``U``'s columns as ``(a, b)`` (what tensorly
does) mixes the two bonds, and the later SVDs then need ranks up to ``r_1^2 r_k``.

We recover ``C`` up to the ring's own gauge freedom (``P kron Q``). Contracting the last mode
with vectors ``w`` gives matrices ``B_w = U^T X_w`` with ``B_w B_0^+ = C^{-1} (Q_w kron I) C``
(``Q_w`` an ``r_1 x r_1`` matrix from core ``d``), i.e. a matrix algebra acting only on the
``a`` bond. Its eigenspaces (real ones directly; complex pairs split again with a compressed
random element) are ``r_1`` blocks of size ``r_2``; an off-diagonal block of another element
maps block 0 onto block ``a`` and aligns the ``b`` bases. The result is the change of basis
``K`` with ``U K`` Kronecker-structured. On data that is not a ring the search simply fails
(returns ``None``) and the caller keeps the plain split.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kron_split"]


def _cluster(lam: np.ndarray, size: int):
    """Group eigenvalues into clusters of ``size`` near-equal values; None when unclear."""
    scale = max(float(np.abs(lam).max()), 1e-300)
    remaining = list(range(len(lam)))
    groups = []
    while remaining:
        i = remaining[0]
        dist = np.abs(lam[remaining] - lam[i])
        near = [remaining[j] for j in np.argsort(dist)[:size]]
        groups.append(near)
        remaining = [j for j in remaining if j not in near]
    centers = np.array([lam[g].mean() for g in groups])
    spread = max(float(np.abs(lam[g] - c).max()) for g, c in zip(groups, centers))
    if len(groups) > 1:
        gap = min(abs(centers[p] - centers[q]) for p in range(len(groups)) for q in range(p + 1, len(groups)))
        if gap < 1e-6 * scale or spread > 0.05 * gap:
            return None
    return centers, max(spread, 1e-12 * scale)


def _null_basis(m: np.ndarray, dim: int):
    _, s, vt = np.linalg.svd(m)
    if dim < len(s) and s[-dim - 1] <= 0:
        return None
    return vt[-dim:].conj().T


def _invariant_blocks(e: np.ndarray, r2: int):
    """Bases of ``e``'s invariant subspaces of width ``r2`` (one per eigenvalue cluster; for a real
    ``e`` a complex-conjugate pair gives one real subspace of width ``2 r2``); None when the
    eigenvalues do not cluster that way."""
    m = e.shape[0]
    found = _cluster(np.linalg.eigvals(e), r2)
    if found is None:
        return None
    centers, spread = found
    blocks = []
    for c in centers:
        if np.iscomplexobj(e):  # complex data: every eigenvalue cluster is its own block
            b = _null_basis(e - c * np.eye(m), r2)
        elif abs(c.imag) <= 10 * spread:
            b = _null_basis(e - c.real * np.eye(m), r2)
        elif c.imag > 0:  # real invariant subspace of the conjugate pair
            b = _null_basis(e @ e - 2 * c.real * e + abs(c) ** 2 * np.eye(m), 2 * r2)
        else:
            continue
        if b is None:
            return None
        blocks.append(b)
    return blocks


def _block_split(ops: list[np.ndarray], r2: int, rng: np.random.Generator, tries: int = 30):
    """Basis ``V`` (``m x m``) splitting the common invariant subspaces of ``ops`` into blocks
    of width ``r2``, or None.

    Recursion happens only on blocks strictly narrower than ``m``, so it always makes progress
    (a block spanning the whole space, e.g. one complex pair when ``m = 2 r2``, splits nothing:
    that draw is discarded and another random element tried).
    """
    m = ops[0].shape[0]
    if m == r2:
        return np.eye(m)
    if m < r2 or m % r2:
        return None
    for _ in range(tries):
        e = sum(c * op for c, op in zip(rng.standard_normal(len(ops)), ops))
        blocks = _invariant_blocks(e, r2)
        if blocks is None or sum(b.shape[1] for b in blocks) != m:
            continue
        if any(b.shape[1] >= m for b in blocks):
            continue  # no progress possible from this draw
        v = np.hstack(blocks)
        if np.linalg.cond(v) > 1e8:
            continue
        vinv = np.linalg.inv(v)
        out, col, ok = v.copy(), 0, True
        for b in blocks:
            w = b.shape[1]
            if w > r2:  # w < m here, so the recursion shrinks
                sub = [(vinv @ op @ v)[col : col + w, col : col + w] for op in ops]
                inner = _block_split(sub, r2, rng, tries)
                if inner is None:
                    ok = False
                    break
                out[:, col : col + w] = v[:, col : col + w] @ inner
            col += w
        if ok:
            return out
    return None


def kron_split(y: np.ndarray, r1: int, r2: int, n_last: int, seed: int = 0):
    """Change of basis ``K`` (``R x R``, ``R = r1 r2``) so ``U K`` splits as ``(a, b)``, or None.

    Args:
        y: ``U^T X_(1)``, shape ``(R, N / n_1)`` with the last mode (size ``n_last``) fastest.

    None means "no Kronecker structure found"; the caller then keeps the plain split.
    """
    try:
        return _kron_split(y, r1, r2, n_last, seed)
    except np.linalg.LinAlgError:  # a non-converging eig/SVD on data that is not a ring
        return None


def _kron_split(y: np.ndarray, r1: int, r2: int, n_last: int, seed: int):
    R = r1 * r2
    if r1 == 1 or y.shape[0] != R:
        return np.eye(R)
    rng = np.random.default_rng(seed)
    y3 = y.reshape(R, -1, n_last)
    if y3.shape[1] < R:
        return None
    w0 = rng.standard_normal(n_last)
    b0 = y3 @ w0
    b0_pinv = np.linalg.pinv(b0, rcond=1e-10)
    n_ops = min(n_last, 6)
    ops = [(y3 @ rng.standard_normal(n_last)) @ b0_pinv for _ in range(n_ops)]
    v = _block_split(ops, r2, rng)
    if v is None:
        return None
    vinv = np.linalg.inv(v)
    k = v.copy()
    ref = np.linalg.norm(v[:, :r2])
    for a in range(1, r1):
        best, best_cond = None, np.inf
        for _ in range(4):  # the map block 0 -> block a should be a scaled identity in the ring's gauge
            f = sum(c * op for c, op in zip(rng.standard_normal(len(ops)), ops))
            t = (vinv @ f @ v)[a * r2 : (a + 1) * r2, :r2]
            cond = np.linalg.cond(t)
            if cond < best_cond:
                best, best_cond = t, cond
        if best_cond > 1e8:
            return None
        blk = v[:, a * r2 : (a + 1) * r2] @ best
        k[:, a * r2 : (a + 1) * r2] = blk * (ref / np.linalg.norm(blk))
    if np.linalg.cond(k) > 1e10:
        return None
    return k
