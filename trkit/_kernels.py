"""Tensor-ring kernels used by more than one trkit module (the format, its algebra, rounding and
the decompositions).

This is the one private module other trkit modules import for internals; a helper that two
modules need lives here instead of being imported by its underscore name from one of them.

Conventions: a core is ``(r_left, n, r_right)``; conjugation happens where the math of an inner
product puts it (the first argument of :func:`transfer_matrix`), so every kernel is also right for
complex cores.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch

from trkit.errors import InputError

__all__ = [
    "einsum_letters",
    "ring_equation",
    "merge_chain",
    "transfer_matrix",
    "tail_norms",
    "truncation_rank",
]


def einsum_letters(n: int, skip: str = "") -> list[str]:
    """``n`` distinct einsum index letters (``a-z`` then ``A-Z``), leaving out those in ``skip``."""
    pool = [c for c in string.ascii_letters if c not in skip]
    if n > len(pool):
        raise InputError(f"too many indices ({n}) for one einsum equation; use fewer modes")
    return pool[:n]


def ring_equation(d: int) -> str:
    """Einsum equation contracting ``d`` cores into the dense tensor, e.g. ``'aib,bjc,cka->ijk'``."""
    letters = einsum_letters(2 * d)
    bonds, modes = letters[:d], letters[d:]
    terms = [bonds[k] + modes[k] + bonds[(k + 1) % d] for k in range(d)]
    return ",".join(terms) + "->" + "".join(modes)


def merge_chain(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract consecutive cores into one ``(r_first, prod n, r_last)`` core (row-major modes).

    One matmul per core: ``(r_first * m, r) @ (r, n * r_next)``, no einsum transposes.
    """
    out = cores[0]
    r0 = out.shape[0]
    for g in cores[1:]:
        r, n, r1 = g.shape
        out = (out.reshape(-1, r) @ g.reshape(r, n * r1)).reshape(r0, -1, r1)
    return out


def transfer_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``E[(x, u), (y, v)] = sum_i conj(a[x, i, y]) b[u, i, v]`` as ``(ra0 rb0, ra1 rb1)``.

    ``b`` defaults to ``a`` (the transfer matrix of a norm). The ring product of the transfer
    matrices of two rings traces to their inner product ``<a, b>``. One GEMM over the mode index
    (an einsum costs several times more on the small cores of a ring).
    """
    b = a if b is None else b
    ra0, n, ra1 = a.shape
    rb0, _, rb1 = b.shape
    am = a.permute(1, 0, 2).reshape(n, ra0 * ra1)
    bm = am if b is a else b.permute(1, 0, 2).reshape(n, rb0 * rb1)
    e = (am.conj().T @ bm).reshape(ra0, ra1, rb0, rb1)
    return e.permute(0, 2, 1, 3).reshape(ra0 * rb0, ra1 * rb1)


def tail_norms(s: torch.Tensor) -> torch.Tensor:
    """``tail[j] = ||s[j:]||`` (float64), the error of keeping only the first ``j`` values."""
    s2 = s.abs().double() ** 2
    return torch.flip(torch.cumsum(torch.flip(s2, [0]), 0), [0]).sqrt()


def truncation_rank(s: torch.Tensor, delta: float, cap: int | None = None) -> int:
    """Smallest ``r >= 1`` whose discarded tail ``||s[r:]||`` is at most ``delta``, then capped.

    ``s``: singular values (or row norms of an orthogonal rotation) in decreasing order.
    """
    above = (tail_norms(s) > delta).nonzero()
    r = int(above[-1]) + 1 if above.numel() else 1
    if cap is not None:
        r = min(r, int(cap))
    return max(1, min(r, int(s.numel())))
