"""Shared pieces of the decompositions: input checks, rank handling and small numerical helpers."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from trkit.errors import InputError, InputTypeError
from trkit.ring import TensorRing, as_tensor

__all__ = [
    "check_tensor",
    "check_finite",
    "check_tol",
    "check_stop_tol",
    "check_max_iter",
    "check_max_rank",
    "normalize_ranks",
    "relative_residual",
    "relative_error",
    "generator_for",
    "solve_spd",
    "LOW_PRECISION",
]

# computed in float32 and returned in their own dtype (their 3 significant digits cannot carry
# the orthogonalisations and solves of a decomposition)
LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise an InputError naming how many NaN and Inf values ``t`` holds and where the first is."""
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return
    nan = torch.isnan(t)
    parts = []
    for what, mask in (("NaN", nan), ("Inf", bad & ~nan)):
        count = int(mask.sum())
        if count:
            first = tuple(int(i) for i in mask.nonzero()[0].tolist()) if t.ndim else ()
            parts.append(f"{count} {what} value{'s' if count > 1 else ''} (first at index {first})")
    msg = f"{name} contains " + " and ".join(parts)
    if not bool(nan.any()) and t.dtype in (torch.float32, torch.complex64, *LOW_PRECISION):
        top = torch.finfo(t.dtype).max
        msg += f"; {t.dtype} holds magnitudes up to {top:.3g}, larger values overflow to Inf (keep the data in float64)"
    raise InputError(msg)


def check_tensor(x, name: str = "x", min_modes: int = 2) -> torch.Tensor:
    """A finite real or complex tensor with >= ``min_modes`` modes and no empty mode.

    Integers and booleans become float64; float16/bfloat16 are kept (the decompositions compute
    them in float32, see :data:`LOW_PRECISION`).
    """
    if isinstance(x, TensorRing):
        raise InputTypeError(f"{name} is already a TensorRing; use trkit.tr_round to change its ranks")
    try:
        t = as_tensor(x)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(f"{name} must be a torch tensor or array-like: {exc}") from None
    if t.dtype == torch.complex32:
        raise InputTypeError(f"{name} has dtype {t.dtype}; use complex64 or complex128")
    if not t.is_floating_point() and not t.is_complex():
        t = t.to(torch.float64)
    if t.ndim < min_modes:
        raise InputError(f"{name} must have at least {min_modes} modes for a ring, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise InputError(f"{name} has an empty mode: shape {tuple(t.shape)}")
    check_finite(t, name)
    return t


def check_tol(tol, name: str = "tol") -> float:
    """A relative-error target: a finite number >= 0 (0: exact). ``tol >= 1`` warns: the all-zero
    ring already meets it, so it asks for nothing."""
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        raise InputTypeError(f"{name} must be a number, got {type(tol).__name__}") from None
    if not math.isfinite(tol) or tol < 0:
        raise InputError(f"{name} must be a finite number >= 0 (a relative error), got {tol}")
    if tol >= 1:
        warnings.warn(
            f"{name}={tol:g} >= 1 asks for nothing: the all-zero ring has relative error 1 and meets it",
            UserWarning,
            stacklevel=3,
        )
    return tol


def check_stop_tol(stop_tol) -> float:
    """The stopping threshold on the relative change of the error between sweeps (0: never stop early)."""
    stop_tol = float(stop_tol)
    if not math.isfinite(stop_tol) or stop_tol < 0:
        raise InputError(f"stop_tol must be a finite number >= 0, got {stop_tol}")
    return stop_tol


def check_max_iter(max_iter) -> int:
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or int(max_iter) < 1:
        raise InputError(f"max_iter must be an int >= 1, got {max_iter!r}")
    return int(max_iter)


def check_max_rank(max_rank) -> int | None:
    """``None`` (no cap) or an int >= 1."""
    if max_rank is None:
        return None
    if int(max_rank) < 1:
        raise InputError(f"max_rank must be >= 1, got {max_rank}")
    return int(max_rank)


def _rank_list(rank, d: int) -> list[int]:
    if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
        return [int(rank)] * d
    if not isinstance(rank, (list, tuple, np.ndarray, torch.Tensor)):
        raise InputTypeError(f"rank must be an int or a sequence of ints, got {type(rank).__name__}")
    values = rank.tolist() if hasattr(rank, "tolist") else list(rank)
    if any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) for r in values):
        raise InputTypeError(f"rank must be an int or a sequence of ints, got {values}")
    ranks = [int(r) for r in values]
    if len(ranks) == d + 1 and ranks[0] == ranks[-1]:
        ranks = ranks[:-1]  # tensorly's form: d + 1 ranks with the closing bond repeated
    if len(ranks) != d:
        raise InputError(f"got {len(ranks)} ranks for a {d}-way tensor; give one int or {d} ints")
    return ranks


def normalize_ranks(rank, shape: Sequence[int], *, caps: Sequence[int] | None = None, warn: bool = True) -> list[int]:
    """``rank`` (int or one int per mode; ``rank[k]`` is the bond entering core ``k``) -> list.

    tensorly's form with ``d + 1`` entries (the first repeated at the end) is accepted too.
    Ranks that cannot be reached are clamped with a ``UserWarning`` (documented choice: clamp,
    not raise): the product ``r_k r_{k+1}`` of core ``k`` is limited to ``caps[k]``, by default
    ``numel / n_k`` (more unknowns per mode-k fibre than equations can never be determined).
    """
    d = len(shape)
    ranks = _rank_list(rank, d)
    if any(r < 1 for r in ranks):
        raise InputError(f"ranks must be >= 1, got {ranks}")
    total = math.prod(int(n) for n in shape)
    caps = [total // shape[k] for k in range(d)] if caps is None else list(caps)
    clamped = list(ranks)
    for _ in range(3):  # a few passes settle neighbours that both shrink
        for k in range(d):
            nxt = (k + 1) % d
            while clamped[k] * clamped[nxt] > caps[k] and max(clamped[k], clamped[nxt]) > 1:
                if clamped[k] >= clamped[nxt]:
                    clamped[k] -= 1
                else:
                    clamped[nxt] -= 1
    if clamped != ranks and warn:
        warnings.warn(
            f"ranks {ranks} cannot be reached for shape {tuple(shape)}; clamped to {clamped}", UserWarning, stacklevel=3
        )
    return clamped


def relative_residual(pred: torch.Tensor, vals: torch.Tensor) -> float:
    """``||pred - vals|| / ||vals||`` (the absolute residual when ``vals`` is all zero)."""
    den = float(torch.linalg.vector_norm(vals))
    num = float(torch.linalg.vector_norm(pred - vals))
    return num / den if den > 0 else num


def relative_error(x: torch.Tensor, ring: TensorRing, x_norm: float | None = None) -> float:
    """Dense ``||x - ring|| / ||x||`` (x is dense anyway for the callers)."""
    xn = float(torch.linalg.vector_norm(x)) if x_norm is None else x_norm
    diff = float(torch.linalg.vector_norm(x - ring.to_dense()))
    return diff / xn if xn > 0 else diff


def generator_for(seed, device) -> torch.Generator:
    g = torch.Generator(device=device if torch.device(device).type != "cpu" else "cpu")
    g.manual_seed(int(seed) if seed is not None else int(torch.seed() % (2**63)))
    return g


def solve_spd(gram: torch.Tensor, rhs: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """Solve ``gram @ z = rhs`` for Hermitian PSD ``gram`` (Cholesky, ridge if ill-conditioned).

    A relative ridge of ``1e-13`` (double) / ``1e-6`` (single precision) of the mean diagonal is
    added only when Cholesky fails or when ``ridge`` asks for it; a rank-deficient subchain
    otherwise makes the update blow up along directions the data does not see.
    """
    lam = float(ridge)
    if lam == 0:  # the common case: no ridge, no identity or scale to build
        chol, info = torch.linalg.cholesky_ex(gram)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, chol)
    n = gram.shape[0]
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    scale = gram.diagonal().real.mean().clamp_min(torch.finfo(gram.real.dtype).tiny)
    base = 1e-13 if gram.dtype in (torch.float64, torch.complex128) else 1e-6
    lam = lam or base
    for _ in range(5):
        chol, info = torch.linalg.cholesky_ex(gram + lam * scale * eye)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, chol)
        lam *= 100
    return torch.linalg.lstsq(gram, rhs).solution
