"""Shared pieces of the decompositions: input checks, the info record, rank handling, progress."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trkit.errors import InputError, InputTypeError
from trkit.ring import TensorRing, as_tensor

__all__ = [
    "DecompositionInfo",
    "check_tensor",
    "check_tol",
    "normalize_ranks",
    "progress",
    "relative_error",
    "generator_for",
    "solve_spd",
]


@dataclass
class DecompositionInfo:
    """What a decomposition did.

    Attributes:
        rel_error: ``||x - x_tr|| / ||x||`` of the returned ring (exact, dense or through inner
            products; for sampled/completion methods an estimate on the held-out entries).
        history: relative error after each sweep (ALS-type methods) or each truncation (SVD).
        ranks: ranks ``(r_1, ..., r_d)`` of the returned ring.
        time_s: wall time of the call in seconds.
        n_iter: sweeps run (0 for non-iterative methods).
        converged: whether the stopping test fired (True for non-iterative methods).
        extra: method-specific fields (e.g. ``first_split``, ``train_error``, ``n_samples``).
    """

    rel_error: float
    history: list = field(default_factory=list)
    ranks: tuple = ()
    time_s: float = 0.0
    n_iter: int = 0
    converged: bool = True
    extra: dict = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # method-specific fields read like attributes (info.train_error) without a subclass each
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(name)


def check_tensor(x, name: str = "x", dtype=None, allow_int: bool = True) -> torch.Tensor:
    """A finite floating tensor with >= 1 mode and no empty mode; ints become float64."""
    if isinstance(x, TensorRing):
        raise InputTypeError(f"{name} is already a TensorRing; use trkit.round to change its ranks")
    try:
        t = as_tensor(x)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(f"{name} must be a torch tensor or array-like: {exc}") from None
    if t.is_complex():
        raise InputTypeError(f"{name} is complex ({t.dtype}); only real tensors are supported")
    if not t.is_floating_point():
        if t.dtype == torch.bool or not allow_int:
            raise InputTypeError(f"{name} has dtype {t.dtype}; expected a floating point tensor")
        t = t.to(torch.float64)
    if dtype is not None:
        t = t.to(dtype)
    if t.ndim < 2:
        raise InputError(f"{name} must have at least 2 modes for a ring, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise InputError(f"{name} has an empty mode: shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN or Inf values")
    return t


def check_tol(tol, name: str = "tol") -> float:
    tol = float(tol)
    if not math.isfinite(tol) or tol <= 0:
        raise InputError(f"{name} must be a positive finite number, got {tol}")
    return tol


def check_max_rank(max_rank) -> int | None:
    """``None`` (no cap) or an int >= 1."""
    if max_rank is None:
        return None
    if int(max_rank) < 1:
        raise InputError(f"max_rank must be >= 1, got {max_rank}")
    return int(max_rank)


def normalize_ranks(rank, shape: Sequence[int], *, caps: Sequence[int] | None = None, warn: bool = True) -> list[int]:
    """``rank`` (int or one int per mode; ``rank[k]`` is the bond entering core ``k``) -> list.

    Ranks that cannot be reached are clamped with a ``UserWarning`` (documented choice: clamp,
    not raise): the product ``r_k r_{k+1}`` of core ``k`` is limited to ``caps[k]``, by default
    ``numel / n_k`` (more unknowns per mode-k fibre than equations can never be determined).
    """
    d = len(shape)
    if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
        ranks = [int(rank)] * d
    elif isinstance(rank, (list, tuple, np.ndarray, torch.Tensor)):
        ranks = [int(r) for r in (rank.tolist() if hasattr(rank, "tolist") else rank)]
        if len(ranks) != d:
            raise InputError(f"got {len(ranks)} ranks for a {d}-way tensor; give one int or {d} ints")
    else:
        raise InputTypeError(f"rank must be an int or a sequence of ints, got {type(rank).__name__}")
    if any(r < 1 for r in ranks):
        raise InputError(f"ranks must be >= 1, got {ranks}")
    total = int(np.prod(shape))
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


def start_cores(init: TensorRing, shape, dtype: torch.dtype, device) -> list[torch.Tensor]:
    """Copies of a user-given starting ring's cores, after checking it fits ``shape``."""
    if tuple(init.shape) != tuple(shape):
        raise InputError(f"init ring has shape {tuple(init.shape)}, the tensor has {tuple(shape)}")
    return [c.detach().to(dtype=dtype, device=device).clone() for c in init.cores]


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
    """Solve ``gram @ z = rhs`` for symmetric PSD ``gram`` (Cholesky, ridge if ill-conditioned).

    A relative ridge of ``1e-12`` (float64) / ``1e-6`` (float32) of the mean diagonal is added
    only when Cholesky fails or when ``ridge`` asks for it; a rank-deficient subchain otherwise
    makes the update blow up along directions the data does not see.
    """
    lam = float(ridge)
    if lam == 0:  # the common case: no ridge, no identity or scale to build
        chol, info = torch.linalg.cholesky_ex(gram)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, chol)
    n = gram.shape[0]
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    scale = gram.diagonal().mean().clamp_min(torch.finfo(gram.dtype).tiny)
    base = 1e-13 if gram.dtype == torch.float64 else 1e-6
    lam = lam or base
    for _ in range(5):
        chol, info = torch.linalg.cholesky_ex(gram + lam * scale * eye)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, chol)
        lam *= 100
    return torch.linalg.lstsq(gram, rhs).solution


@contextlib.contextmanager
def progress(total: int, verbose: bool, desc: str):
    """tqdm bar when ``verbose`` else a no-op object with the same ``update``/``set_postfix``."""
    if verbose:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, leave=False)
        try:
            yield bar
        finally:
            bar.close()
    else:

        class _Null:
            def update(self, *a, **k):
                pass

            def set_postfix(self, *a, **k):
                pass

        yield _Null()
