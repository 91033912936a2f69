"""How every decomposition runs: the data scaled to unit norm in a working precision, the
iteration log (history, callback, progress bar, stopping rules), and the ring scaled back.

Scale: decompositions work on ``x / ||x||`` and multiply each returned core by ``||x||^(1/d)``,
so the result is scale-equivariant (``x * 1e19`` in float32 or ``x * 1e-300`` in float64 give the
ranks and relative error of ``x``) and no squared norm ever overflows or underflows. The norm
itself is taken after dividing by ``max |x|``, so it is computed without overflow too.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from trkit.decompose._common import LOW_PRECISION
from trkit.decompose.info import DecompositionInfo
from trkit.errors import InputError, InputTypeError
from trkit.ring import TensorRing

__all__ = [
    "Working",
    "to_working",
    "working_dtype",
    "unit_scale",
    "scale_cores",
    "scaled_ring",
    "start_cores",
    "as_callback",
    "IterationLog",
]


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in LOW_PRECISION else dtype


@dataclass
class Working:
    """``x`` as the algorithms see it: ``x = scale * t`` with ``||t|| = 1`` (or ``t = 0``)."""

    t: torch.Tensor
    scale: float
    out_dtype: torch.dtype


def unit_scale(t: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(t / s, s)`` with ``s = ||t||`` computed without overflow (``s = 0`` leaves ``t`` as is)."""
    amax = float(t.abs().max()) if t.numel() else 0.0
    if amax == 0 or not math.isfinite(amax):
        return t, 0.0
    info = torch.finfo(t.dtype)
    if math.sqrt(info.tiny) / info.eps < amax < math.sqrt(info.max / t.numel()):
        n = float(torch.linalg.vector_norm(t))  # no square can overflow or lose digits to underflow
        return t / n, n
    t = t / amax  # entries now at most 1: the sum of squares below cannot overflow
    n = float(torch.linalg.vector_norm(t))
    return t / n, amax * n


def to_working(x: torch.Tensor) -> Working:
    t, s = unit_scale(x.to(working_dtype(x.dtype)))
    return Working(t, s, x.dtype)


def scale_cores(cores: Sequence[torch.Tensor], scale: float, dtype: torch.dtype) -> list[torch.Tensor]:
    """Cores of ``scale * ring`` in ``dtype``: every core times ``scale^(1/d)`` (no single core
    carries the whole factor, so neither overflows nor underflows alone)."""
    f = scale ** (1.0 / len(cores)) if scale > 0 else 0.0
    return [(c * f).to(dtype) for c in cores]


def scaled_ring(cores: Sequence[torch.Tensor], scale: float, dtype: torch.dtype) -> TensorRing:
    """``scale * ring(cores)`` in ``dtype`` (see :func:`scale_cores`)."""
    return TensorRing(scale_cores(cores, scale, dtype), validate=False)


def start_cores(init: TensorRing, shape, scale: float, dtype: torch.dtype, device) -> list[torch.Tensor]:
    """A user's starting ring brought to the working scale and precision, after checking its shape."""
    if not isinstance(init, TensorRing):
        raise InputTypeError(f"init must be a TensorRing or one of the named starts, got {type(init).__name__}")
    if tuple(init.shape) != tuple(shape):
        raise InputError(f"init ring has shape {tuple(init.shape)}, the tensor has {tuple(shape)}")
    cores = [c.detach().to(dtype=dtype, device=device).clone() for c in init.cores]
    return scale_cores(cores, 1.0 / scale if scale > 0 else 1.0, dtype)


def as_callback(callback) -> Callable | None:
    """``callback(ring, info)``; a callback written for the old ``callback(sweep, rel_error, ring)``
    form (three required positional parameters) is wrapped with a DeprecationWarning."""
    if callback is None:
        return None
    if not callable(callback):
        raise InputTypeError(f"callback must be callable, got {type(callback).__name__}")
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume the current form
        return callback
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]
    if len(required) != 3:
        return callback
    warnings.warn(
        "callback(sweep, rel_error, ring) is deprecated; decompositions call callback(ring, info) "
        "(info.n_iter, info.rel_error, ...)",
        DeprecationWarning,
        stacklevel=3,
    )
    return lambda ring, info: callback(info.n_iter, info.rel_error, ring)


class _NoBar:
    def update(self, *a, **k):
        pass

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass


class IterationLog:
    """History, timing, progress bar, callback and stopping rules of one iterative run.

    ``record(err, ring)`` after every sweep returns True when the run should stop: the callback
    returned True, ``err <= tol`` (the target is met), or the error changed by at most
    ``stop_tol`` relative to the last sweep (``stop_tol = 0`` never stops early).
    """

    def __init__(
        self,
        method: str,
        *,
        tol: float | None,
        stop_tol: float,
        max_iter: int,
        callback=None,
        verbose: bool = False,
        info_cls: type[DecompositionInfo] = DecompositionInfo,
    ):
        self.method, self.tol, self.stop_tol, self.max_iter, self.info_cls = method, tol, stop_tol, max_iter, info_cls
        self.callback = as_callback(callback)
        self.t0 = time.perf_counter()
        self.history: list[float] = []
        self.converged = False
        self.bar = _NoBar()
        if verbose:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max_iter, desc=method, leave=False)

    @property
    def n_iter(self) -> int:
        return len(self.history)

    def record(self, err: float, ring: Callable[[], TensorRing] | None = None, check: bool = True, **postfix) -> bool:
        """Log the error of the sweep just done; True when the run should stop.

        ``ring``: builds the current iterate in the caller's scale and dtype (called only when
        there is a callback). ``check=False``: only the callback may stop the run (the caller
        applies rules of its own).
        """
        self.history.append(float(err))
        self.bar.update(1)
        self.bar.set_postfix(rel_error=f"{err:.3e}", **postfix)
        if self.callback is not None and ring is not None:
            current = ring()
            if self.callback(current, self.info(err, current.ranks, converged=False)) is True:
                return True
        if not check:
            return False
        if self.tol is not None and err <= self.tol:
            self.converged = True
            return True
        h = self.history
        if self.stop_tol > 0 and len(h) > 1 and abs(h[-2] - h[-1]) <= self.stop_tol * max(h[-1], 1e-300):
            self.converged = True
            return True
        return False

    def info(
        self, rel_error: float, ranks, *, converged: bool | None = None, n_iter: int | None = None, **fields
    ) -> DecompositionInfo:
        """The info record (the final one, or the snapshot handed to the callback)."""
        rel_error = float(rel_error)
        return self.info_cls(
            method=self.method,
            rel_error=rel_error,
            ranks=tuple(int(r) for r in ranks),
            n_iter=self.n_iter if n_iter is None else n_iter,
            time_s=time.perf_counter() - self.t0,
            converged=self.converged if converged is None else converged,
            tol=self.tol,
            tol_met=None if self.tol is None else rel_error <= self.tol,
            history=list(self.history),
            **fields,
        )

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> IterationLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
