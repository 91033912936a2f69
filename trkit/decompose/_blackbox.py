"""A user function of index batches, wrapped for cross approximation: checks, counting, an exact cache.

The function takes an ``(m, d)`` int64 index array (numpy, or torch with ``index_type="torch"``)
and returns ``m`` values (numpy, torch on any device, or a list). Every returned batch is checked
(shape, numeric type, finiteness) and converted to numpy float64 (complex128 for complex values)
on the host, where the cross does its small linear algebra. Values are divided by one scale,
the power of two at the largest magnitude of the first batch, so that nothing the cross computes from them (squared
norms included) overflows or underflows whatever the function's magnitude. Each index is sent
to ``f`` at most once: values are cached under an exact key (the mixed-radix number of the
index, or several such numbers as bytes when the tensor has more than ``2**62`` entries), and
duplicates inside a batch are sent once.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from trkit.errors import InputError, InputTypeError

__all__ = ["BlackBox", "BudgetExhausted"]

_WORD = 2**62  # each key word stays below this, so int64 arithmetic cannot overflow


class BudgetExhausted(Exception):
    """Raised internally when the next batch would exceed ``max_evals`` (the caller stops cleanly)."""


def _radix_groups(shape: tuple[int, ...]) -> list[tuple[int, int, np.ndarray]]:
    """Consecutive mode groups whose index counts fit one key word: ``(start, stop, strides)``."""
    groups, start, size = [], 0, 1
    for k, n in enumerate(shape):
        if size * n >= _WORD and k > start:
            groups.append((start, k))
            start, size = k, 1
        size *= n
    groups.append((start, len(shape)))
    out = []
    for a, b in groups:
        strides = np.ones(b - a, dtype=np.int64)
        for j in range(b - a - 2, -1, -1):
            strides[j] = strides[j + 1] * shape[a + j + 1]
        out.append((a, b, strides))
    return out


class BlackBox:
    """``f`` behind a cache that never asks for the same index twice.

    Args:
        f: callable ``(m, d) int64 -> m values``.
        shape: the tensor's shape.
        index_type: ``"numpy"`` (f gets an ``np.ndarray``) or ``"torch"`` (a ``torch.LongTensor``
            on ``index_device``).
        max_evals: budget of distinct entries, or None.
    """

    def __init__(self, f, shape, index_type: str = "numpy", index_device=None, max_evals: int | None = None):
        self.f, self.shape, self.d = f, tuple(shape), len(shape)
        self.index_type, self.index_device = index_type, index_device
        self.max_evals = max_evals
        self.name = getattr(f, "__name__", type(f).__name__)
        self.groups = _radix_groups(self.shape)
        self.cache: dict = {}
        self.n_evals = 0  # distinct entries sent to f
        self.n_hits = 0  # entries answered from the cache
        self.value_device: torch.device | None = None  # where f's torch results lived
        self.value_dtype: torch.dtype | None = None  # f's value type (promoted over the batches)
        self.scale: float | None = None  # every value is divided by this (set by the first batch)
        self.np_dtype = np.float64  # complex128 once f returned complex values

    def keys(self, idx: np.ndarray) -> np.ndarray:
        """One exact key per index row: int64, or raw bytes of several int64 words."""
        if len(self.groups) == 1:
            return idx @ self.groups[0][2]
        words = np.stack([idx[:, a:b] @ s for a, b, s in self.groups], 1)
        return np.ascontiguousarray(words).view(np.dtype((np.void, 8 * len(self.groups)))).ravel()

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values at ``idx`` (``(m, d)`` int64) and the positions that were new (sent to ``f``)."""
        m = idx.shape[0]
        keys = self.keys(idx)
        vals = np.fromiter(map(self.cache.get, keys.tolist(), itertools.repeat(math.nan)), self.np_dtype, m)
        missing = np.flatnonzero(np.isnan(vals))  # f's values are checked finite, so NaN = absent
        self.n_hits += m - missing.size
        if missing.size == 0:
            return vals, missing
        # duplicates inside the batch go to f once
        new_keys, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
        new_pos = missing[first]
        if self.max_evals is not None and self.n_evals + new_pos.size > self.max_evals:
            raise BudgetExhausted
        new_vals = self.evaluate(idx[new_pos])
        self.n_evals += new_pos.size
        self.n_hits += missing.size - new_pos.size
        self.cache.update(zip(new_keys.tolist(), new_vals.tolist()))
        vals = vals.astype(self.np_dtype, copy=False)
        vals[missing] = new_vals[inverse.reshape(-1)]
        return vals, new_pos

    def evaluate(self, idx: np.ndarray) -> np.ndarray:
        """Call ``f`` once on ``idx`` (no cache) and check what comes back."""
        m = idx.shape[0]
        arg: np.ndarray | torch.Tensor = np.array(idx, dtype=np.int64)  # a copy: f may not alter the cross's index sets
        if self.index_type == "torch":
            arg = torch.from_numpy(arg).to(self.index_device or "cpu")
        batch = f"a ({m}, {self.d}) int64 {self.index_type} index batch"
        try:
            out = self.f(arg)
        except Exception as exc:
            raise InputError(f"f ({self.name}) raised {type(exc).__name__}: {exc} (called with {batch})") from exc
        if isinstance(out, torch.Tensor):
            self.value_device = out.device
            self._saw(out.dtype)
            wide = torch.complex128 if out.is_complex() else torch.float64
            out = out.detach().to(device="cpu", dtype=wide).numpy()
        else:
            try:
                out = np.asarray(out)
            except Exception as exc:
                raise InputTypeError(f"f ({self.name}) returned {type(out).__name__}, expected {m} numbers") from exc
            if out.dtype == object or not (np.issubdtype(out.dtype, np.number) or out.dtype == bool):
                raise InputTypeError(
                    f"f ({self.name}) returned {type(out).__name__} of dtype {out.dtype}, expected {m} numbers"
                )
            self._saw(torch.from_numpy(np.empty(0, out.dtype)).dtype)
        if np.iscomplexobj(out):
            self.np_dtype = np.complex128
        out = out.astype(self.np_dtype)
        if out.size != m or (out.ndim > 1 and out.shape != (m, 1)) or out.ndim == 0:
            raise InputError(f"f ({self.name}) returned shape {tuple(out.shape)} for {batch}; expected ({m},)")
        out = out.reshape(m)
        bad = np.flatnonzero(~np.isfinite(out))
        if bad.size:
            raise InputError(
                f"f ({self.name}) returned {out[bad[0]]} at index {idx[bad[0]].tolist()} "
                f"({bad.size} non-finite of {m} values)"
            )
        if self.scale is None:  # a power of two: dividing by it is exact
            top = float(np.abs(out).max()) if m else 0.0
            self.scale = math.ldexp(1.0, math.frexp(top)[1] - 1) if top > 0 else 1.0
        return out / self.scale

    def _saw(self, dtype: torch.dtype) -> None:
        """Remember the values' type (integers and booleans count as float64)."""
        if not (dtype.is_floating_point or dtype.is_complex):
            dtype = torch.float64
        self.value_dtype = dtype if self.value_dtype is None else torch.promote_types(self.value_dtype, dtype)
