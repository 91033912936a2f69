"""Closing a tensor train into a ring with a real closing bond, without new evaluations.

A ring of ranks ``(r_0, r_1, ..., r_{d-1})`` written as a train (cut at the closing bond) has
bond ranks ``R_m = r_0 r_m``: the train carries the closing index along. When the train the cross
built has that structure, the ring stores ``sum r_k n_k r_{k+1}`` numbers instead of
``sum R_k n_k R_{k+1}``, about ``r_0^2`` times fewer.

To find it we cut the train at an inner bond ``m`` into ``X = U Y`` (``U`` orthonormal, modes
before ``m``; ``Y`` the rest). Within ``Y``'s row space the closing index acts through the last
mode only, so contracting the last mode with vectors gives matrices whose algebra reveals the
Kronecker split ``R_m = r_0 r_m`` (:func:`trkit.decompose._split.kron_split`, the same step TR-SVD
uses for its first core; here fed with ``Y`` at a sample of middle indices, computed from the
train). With the change of basis ``K``, ``U K`` splits as ``(closing, bond m)``; carrying the
closing index across both halves gives an exact ring of ranks ``r_0 R_k``, and TT-rounding of
that ring opened at its closing bond brings every bond down to ``r_k``
(:func:`trkit.rounding._sweep`); one ALS sweep against the train
(:func:`trkit.decompose.ring_als.als_against_ring`) polishes it. Where no split is found, or it
does not lower the parameter count at the train's accuracy, the train is kept.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from trkit.decompose._split import _cluster, kron_split
from trkit.decompose._tt_cross import tt_entries, tt_norm
from trkit.decompose.ring_als import als_against_ring
from trkit.ring import TensorRing

__all__ = ["round_train", "within", "close_ring"]


def _torch(cores: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(c)) for c in cores]


def _rounded(cores: list[np.ndarray], delta: float, r_open: int = 1, max_rank: int | None = None) -> list[np.ndarray]:
    """TT-rounding of the chain opened at bond 0: ring error ``<= delta`` (absolute), ranks ``<= max_rank``."""
    # each of the d - 1 truncations of the open chain gets an equal share; the closing trace
    # can multiply the chain's error by at most sqrt(r_open)
    share = delta / math.sqrt(max(len(cores) - 1, 1) * r_open)
    from trkit.rounding import _sweep  # here: trkit.rounding imports trkit.decompose, which imports this module

    swept, _ = _sweep(_torch(cores), share, max_rank)
    return [c.numpy() for c in swept]


def round_train(cores: list[np.ndarray], rel_tol: float) -> list[np.ndarray]:
    """A tensor train with its ranks truncated at relative error ``<= rel_tol`` (``cores`` itself
    when nothing is dropped: the sweep would only add its own float64 rounding)."""
    rounded = _rounded(cores, rel_tol * tt_norm(cores))
    return cores if [c.shape for c in rounded] == [c.shape for c in cores] else rounded


def within(cores: list[np.ndarray], other: list[np.ndarray], rel_tol: float, seed: int = 0, n_check: int = 256) -> bool:
    """Whether the train ``other`` differs from ``cores`` by at most ``rel_tol`` (relative) on
    ``n_check`` random entries.

    A rounding's QR sweep adds its own float64 rounding, about ``1e-14`` relative on a 10-core
    train of interpolation cores: more than a tolerance near machine precision allows, which
    only a measurement shows.
    """
    if other is cores:
        return True
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(0, c.shape[1], n_check) for c in cores], 1)
    ref = tt_entries(cores, idx)
    return float(np.linalg.norm(tt_entries(other, idx) - ref)) <= rel_tol * max(float(np.linalg.norm(ref)), 1e-300)


def _left_orthonormal(cores: list[np.ndarray], m: int) -> list[np.ndarray]:
    """Cores ``0..m-1`` left-orthonormal (QR), the triangular factors pushed into core ``m``."""
    cores = list(cores)
    for k in range(m):
        r0, n, r1 = cores[k].shape
        q, r = np.linalg.qr(cores[k].reshape(r0 * n, r1))
        cores[k] = q.reshape(r0, n, -1)
        cores[k + 1] = np.einsum("ab,bjc->ajc", r, cores[k + 1])
    return cores


def _right_sample(cores: list[np.ndarray], m: int, rng: np.random.Generator) -> np.ndarray | None:
    """``Y`` (the train from mode ``m`` on) at sampled middle indices and every last index.

    Returns ``(R_m, p * n_last)`` with the last mode fastest, or None when the middle modes
    hold fewer than ``R_m`` index tuples (the split cannot be identified from them).
    """
    d, rm = len(cores), cores[m].shape[0]
    middle = [c.shape[1] for c in cores[m : d - 1]]
    total = math.prod(middle)
    want = 3 * rm
    if total < rm:
        return None
    if total <= want:
        idx = np.stack(np.unravel_index(np.arange(total), middle), 1)
    else:
        idx = np.unique(np.stack([rng.integers(0, n, 2 * want) for n in middle], 1), axis=0)[:want]
    prod = cores[m][:, idx[:, 0], :].transpose(1, 0, 2)
    for j, k in enumerate(range(m + 1, d - 1), start=1):
        prod = prod @ cores[k][:, idx[:, j], :].transpose(1, 0, 2)
    y = np.einsum("pac,ct->apt", prod, cores[d - 1][:, :, 0])
    return y.reshape(rm, -1)


def _carried_ring(cores: list[np.ndarray], m: int, k: np.ndarray, r0: int, rm: int) -> list[np.ndarray]:
    """The exact ring of ranks ``r_0 R_k``: closing index ``a`` carried from core 0 to bond ``m``
    (where ``K`` turns ``R_m`` into ``(a, b)``) and from bond ``m`` back round to core 0."""
    eye = np.eye(r0)
    out = []
    for j, g in enumerate(cores):
        ra, n, rb = g.shape  # core 0 has ra = 1, so its (a, c) input is the bare closing index
        if j < m:
            c = np.einsum("xy,cid->xciyd", eye, g)  # (a, c) -> (a', c') with a = a'
            if j == m - 1:  # K turns (c') into (a', b)
                c = np.einsum("xciyd,dyb->xcib", c, k.reshape(rb, r0, rm)).reshape(r0 * ra, n, rm)
            else:
                c = c.reshape(r0 * ra, n, r0 * rb)
        elif j == m:  # K^-1 turns (a, b) back into c; a travels on to the last core
            c = np.einsum("xbc,cid->bidx", np.linalg.inv(k).reshape(r0, rm, ra), g).reshape(rm, n, rb * r0)
        else:  # core d-1 has rb = 1: its output is the bare closing index
            c = np.einsum("cid,xy->cxidy", g, eye).reshape(ra * r0, n, rb * r0)
        out.append(c)
    return out


def _split_candidates(y: np.ndarray, n_last: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Splits ``R = r_0 r_m`` (both >= 2) that one generic element of the algebra allows.

    For a ring, every element acts as ``C^-1 (Q kron I_{r_m}) C``: its eigenvalues come in groups
    of ``r_m`` equal values. One eigen-decomposition rules out most splits (and all of them for a
    tensor that is not a ring) before the full search of ``kron_split``.
    """
    size = y.shape[0]
    y3 = y.reshape(size, -1, n_last)
    base = np.linalg.pinv(y3 @ rng.standard_normal(n_last), rcond=1e-10)
    lam = np.linalg.eigvals((y3 @ rng.standard_normal(n_last)) @ base)
    pairs = [(a, size // a) for a in range(2, size // 2 + 1) if size % a == 0]
    pairs = [(r0, rm) for r0, rm in pairs if _cluster(lam, rm) is not None]
    return sorted(pairs, key=lambda p: (abs(math.log(p[0] / p[1])), p[0]))


def close_ring(
    cores: list[np.ndarray], rel_tol: float, seed: int = 0, n_check: int = 256, max_carried: int = 256
) -> list[np.ndarray] | None:
    """A ring with a real closing bond, fewer parameters and ``<= rel_tol`` from the train, or None.

    Args:
        cores: tensor train (``r_0 = r_d = 1``), numpy float64.
        rel_tol: allowed relative difference between the ring and the train (checked on
            ``n_check`` random entries; differences below ``1e-12`` always pass).
        max_carried: largest rank ``r_0 R_k`` of the exact ring before its rounding (which costs
            ``O(d n (r_0 R)^3)``); splits above it are not tried.
    """
    d = len(cores)
    ranks = [c.shape[0] for c in cores] + [1]
    best, best_params = None, sum(c.size for c in cores)
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(0, c.shape[1], n_check) for c in cores], 1)
    ref = tt_entries(cores, idx)

    def gap(ring: list[np.ndarray]) -> float:  # distance to the train on the sampled entries
        return float(
            np.linalg.norm(TensorRing(_torch(ring), validate=False).entries(torch.from_numpy(idx)).numpy() - ref)
        )

    allowed = max(rel_tol, 1e-12) * max(float(np.linalg.norm(ref)), 1e-300)
    xnorm = tt_norm(cores)
    # cut where the train is widest; the middle modes must see every direction of the bond
    bonds = sorted((m for m in range(1, d - 1) if ranks[m] >= 4), key=lambda m: -ranks[m])[:2]
    for m in bonds:
        ortho = _left_orthonormal(cores, m)
        y = _right_sample(ortho, m, rng)
        if y is None:
            continue
        for r0, rm in _split_candidates(y, cores[-1].shape[1], rng):
            if r0 * max(ranks) > max_carried:
                continue
            k = kron_split(y, r0, rm, cores[-1].shape[1], seed=seed)
            if k is None:
                continue
            # a ring bond carries r_0 train directions: R_k / r_0 is all a bond should need
            cap = max(math.ceil(r / r0) for r in ranks)
            ring = _rounded(_carried_ring(ortho, m, k, r0, rm), rel_tol / 2 * xnorm, r_open=r0, max_rank=cap)
            params = sum(c.size for c in ring)
            if params >= best_params:
                continue
            # the cap and the conditioning of K are not covered by the rounding's bound: measure
            if gap(ring) <= allowed:
                best, best_params = ring, params
    if best is None:
        return None
    # the split comes from eigenvectors: one ALS sweep against the train (exact, in TR format,
    # cheap at these ranks) takes back what their conditioning cost
    train = TensorRing(_torch(cores), validate=False)
    polished = [c.numpy() for c in als_against_ring(train, TensorRing(_torch(best), validate=False), sweeps=1).cores]
    return polished if gap(polished) <= gap(best) else best
