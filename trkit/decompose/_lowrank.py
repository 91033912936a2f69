"""Orthogonal row bases of wide matrices through the Gram matrix (the SVD steps of TR-SVD).

TR-SVD's unfoldings are mostly very wide (``n_1 x N / n_1``). LAPACK's SVD of such a matrix is
several times slower than one Gram product, a small symmetric eigensolve and one more product,
all BLAS-3. Eigenvalues of the Gram matrix lose half the digits (singular values below
``sqrt(eps) ||M||`` are noise), so we never truncate by them: we rotate ``M`` by the eigenvector
basis ``U`` (``B = U^T M``, so ``M = U B`` exactly) and truncate by the row norms of ``B``.
Dropping rows ``r:`` of ``B`` then costs exactly ``||B[r:]||_F`` (up to the rounding of one
product, as for an SVD), so the error accounting of the tolerance guarantee is unchanged; only
the basis can be slightly less than optimal for singular values near ``sqrt(eps) ||M||``.
"""

from __future__ import annotations

import torch

__all__ = ["row_basis"]


def row_basis(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``m = u @ b`` with ``u`` orthonormal and the rows of ``b`` ordered by decreasing norm.

    Args:
        m: matrix ``(p, q)``.

    Returns:
        ``u`` ``(p, k)`` (orthonormal columns, ``u^H u = I``), ``s`` ``(k,)`` (row norms of ``b``,
        the singular values for the SVD path) and ``b`` ``(k, q)``, ``k = min(p, q)``;
        ``||m - u[:, :r] b[:r]|| = ||s[r:]||``.
    """
    p, q = m.shape
    if p > q or p < 2:  # tall (the last, small TT-SVD steps): a plain SVD is cheap and best
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        return u, s, s[:, None] * vh
    wide = torch.complex128 if m.is_complex() else torch.float64
    md = m.to(wide)  # a single-precision Gram would keep ~3 digits
    _, v = torch.linalg.eigh(md @ md.mH)
    u = v.to(m.dtype)
    b = u.mH @ m
    s = torch.linalg.vector_norm(b, dim=1)
    order = torch.argsort(s, descending=True)
    return u[:, order], s[order], b[order]
