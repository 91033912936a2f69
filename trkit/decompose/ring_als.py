"""ALS fitting of one tensor ring to another, entirely in TR format (used by ``round(refine=n)``).

For core ``k`` of the fit ``b``: Gram = ring product of ``b``'s own transfer matrices over the
other cores, RHS = ``a_k`` contracted with the ring product of the mixed transfer matrices
``F_j = sum_i a_j[:, i, :] kron b_j[:, i, :]``. Cost per core ``O(d (r_a r_b)^3)``; nothing dense.
"""

from __future__ import annotations

import torch

from trkit._kernels import transfer_matrix
from trkit.contract import contract
from trkit.decompose._common import solve_spd
from trkit.ring import TensorRing

__all__ = ["als_against_ring"]


def _ring_product(mats: list[torch.Tensor]) -> torch.Tensor:
    out = mats[0]
    for m in mats[1:]:
        out = out @ m
    return out


def als_against_ring(target: TensorRing, fit: TensorRing, sweeps: int = 1) -> TensorRing:
    """``sweeps`` ALS sweeps moving ``fit`` towards ``target`` at ``fit``'s ranks."""
    a = [c.detach().to(fit.dtype) for c in target.cores]
    b = [c.detach().clone() for c in fit.cores]
    d = len(b)
    for _ in range(sweeps):
        for k in range(d):
            others = [(k + 1 + j) % d for j in range(d - 1)]
            rb0, n, rb1 = b[k].shape
            ra0, _, ra1 = a[k].shape
            if others:
                own = _ring_product([transfer_matrix(b[j], b[j]) for j in others])
                mix = _ring_product([transfer_matrix(a[j], b[j]) for j in others])
            else:
                own = torch.eye(rb1 * rb0, dtype=b[k].dtype, device=b[k].device)
                mix = torch.eye(ra1 * rb1, dtype=b[k].dtype, device=b[k].device)
            # own[(xb, xb'), (yb, yb')] -> Gram[(yb, xb), (yb', xb')]
            gram = own.reshape(rb1, rb1, rb0, rb0).permute(2, 0, 3, 1).reshape(rb0 * rb1, rb0 * rb1)
            # sum over the rest of S_a conj(S_b): the conjugate of the mixed product (conj on a)
            p = mix.conj().reshape(ra1, rb1, ra0, rb0)  # [xa, xb, ya, yb]
            rhs = contract("yix,xvyw->iwv", a[k], p).reshape(n, rb0 * rb1)
            sol = solve_spd(gram, rhs.T).T
            g = sol.reshape(n, rb0, rb1).permute(1, 0, 2)
            if k < d - 1:
                q, r = torch.linalg.qr(g.reshape(rb0 * n, rb1))
                b[k] = q.reshape(rb0, n, -1)
                b[k + 1] = contract("ab,bjc->ajc", r, b[k + 1])
            else:
                b[k] = g.contiguous()
    return TensorRing(b, validate=False)
