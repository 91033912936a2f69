"""Entry-level helpers for sampled ALS and completion: reading entries, subchain rows, solves."""

from __future__ import annotations

import numpy as np
import torch

from trkit.decompose._common import LOW_PRECISION, check_finite
from trkit.errors import InputError, InputTypeError

__all__ = ["EntrySource", "subchain_rows", "slice_solve"]


class EntrySource:
    """Uniform access to entries of a dense tensor, a numpy memmap/array, or a callable.

    The callable takes an ``(m, d)`` int64 array and returns ``m`` values. Values come back in
    the working dtype: the source's own floating dtype (float32 stays float32, complex stays
    complex; integers and booleans become float64, float16/bfloat16 float32) divided by
    ``scale`` (set once the norm of the data has been estimated). ``dtype`` is the dtype the
    result is returned in.
    """

    def __init__(self, x, shape=None, device="cpu"):
        self.device, self.scale = torch.device(device), 1.0
        if callable(x) and not isinstance(x, (np.ndarray, torch.Tensor)):
            if shape is None:
                raise InputError("shape is required when x is a function of an index batch")
            self.fn, self.shape, self.dtype = x, tuple(int(n) for n in shape), None
        elif isinstance(x, (np.ndarray, torch.Tensor)):
            self.fn, self.shape = None, tuple(x.shape)
            self.x = x
            self.dtype = x.dtype if isinstance(x, torch.Tensor) else _torch_dtype(x.dtype)
            if isinstance(x, torch.Tensor):
                self.device = x.device
        else:
            raise InputTypeError(f"x must be a tensor, a numpy array/memmap or a callable, got {type(x).__name__}")
        if len(self.shape) < 2 or min(self.shape) < 1:
            raise InputError(f"need a tensor with >= 2 non-empty modes, got shape {self.shape}")

    @property
    def work_dtype(self) -> torch.dtype:
        return torch.float32 if self.dtype in LOW_PRECISION else self.dtype

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.fn is not None:
            vals = np.asarray(self.fn(idx.cpu().numpy()))
            if self.dtype is None:  # the function's first answer fixes the dtype
                self.dtype = _torch_dtype(vals.dtype)
            out = torch.as_tensor(vals).reshape(-1)
            if out.numel() != idx.shape[0]:
                raise InputError(f"the entry function returned {out.numel()} values for {idx.shape[0]} indices")
        elif isinstance(self.x, torch.Tensor):
            out = self.x[tuple(idx.to(self.x.device).T)]
        else:
            out = torch.as_tensor(np.asarray(self.x[tuple(idx.cpu().numpy().T)]))
        out = out.to(device=self.device, dtype=self.work_dtype)
        check_finite(out, "the tensor's sampled entries")
        return out / self.scale if self.scale != 1.0 else out


def _torch_dtype(np_dtype) -> torch.dtype:
    """The working dtype for numpy values of ``np_dtype`` (integers and booleans: float64)."""
    kind = np.dtype(np_dtype).kind
    if kind == "c":
        return torch.complex64 if np.dtype(np_dtype).itemsize <= 8 else torch.complex128
    if kind == "f":
        return {2: torch.float16, 4: torch.float32}.get(np.dtype(np_dtype).itemsize, torch.float64)
    if kind in "iub":
        return torch.float64
    raise InputTypeError(f"the tensor has dtype {np_dtype}; expected numbers")


def subchain_rows(cores: list[torch.Tensor], k: int, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``s[(a, b)] = (G_{k+1}[i_{k+1}] ... G_{k-1}[i_{k-1}])[b, a]`` for each index row.

    Args:
        idx: ``(m, d)`` long tensor (column ``k`` ignored).
    Returns:
        ``(m, r_k r_{k+1})`` so the model value is ``rows @ G_k[:, i_k, :].reshape(-1)``.
    """
    d = len(cores)
    ra, rb = cores[k].shape[0], cores[k].shape[2]
    m = idx.shape[0]
    if d == 1:
        return torch.eye(ra, dtype=cores[k].dtype, device=cores[k].device).reshape(1, -1).expand(m, -1)
    j = (k + 1) % d
    prod = cores[j][:, idx[:, j], :].permute(1, 0, 2)
    for step in range(2, d):
        j = (k + step) % d
        prod = torch.bmm(prod, cores[j][:, idx[:, j], :].permute(1, 0, 2))
    return prod.transpose(1, 2).reshape(m, ra * rb)


def slice_solve(
    rows: torch.Tensor,
    vals: torch.Tensor,
    slice_idx: torch.Tensor,
    n: int,
    weights: torch.Tensor | None,
    ridge: float,
    old: torch.Tensor,
) -> torch.Tensor:
    """Per-slice weighted least squares ``min sum_e w_e (rows_e . g_{i_e} - v_e)^2 + ridge ||g||^2``.

    Returns the new core matrix ``(n, p)``; slices with no rows keep ``old``.
    """
    p = rows.shape[1]
    w = torch.ones(vals.shape, dtype=rows.real.dtype, device=rows.device) if weights is None else weights
    rc = rows.conj()
    # per slice: (sum_e w_e conj(s_e) s_e^T) g = sum_e w_e conj(s_e) v_e (normal equations of rows @ g = vals)
    outer = (rc[:, :, None] * rows[:, None, :]) * w[:, None, None]
    gram = torch.zeros(n, p, p, dtype=rows.dtype, device=rows.device).index_add_(0, slice_idx, outer)
    rhs = torch.zeros(n, p, dtype=rows.dtype, device=rows.device).index_add_(0, slice_idx, rc * (w * vals)[:, None])
    scale = gram.diagonal(dim1=1, dim2=2).real.mean(-1).clamp_min(torch.finfo(rows.real.dtype).tiny)
    eye = torch.eye(p, dtype=rows.dtype, device=rows.device)
    # a tiny relative ridge keeps slices with fewer entries than unknowns solvable
    floor = 1e-12 if rows.dtype in (torch.float64, torch.complex128) else 1e-6
    reg = gram + ((ridge + floor) * scale)[:, None, None] * eye
    try:
        sol = torch.linalg.solve(reg, rhs[:, :, None])[..., 0]
    except RuntimeError:
        sol = torch.linalg.lstsq(reg, rhs[:, :, None]).solution[..., 0]
    empty = torch.bincount(slice_idx, minlength=n) == 0
    if empty.any():
        sol[empty] = old[empty]
    return sol
