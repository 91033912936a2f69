"""Entry-level helpers for sampled ALS and completion: reading entries, subchain rows, solves."""

from __future__ import annotations

import numpy as np
import torch

from trkit.errors import InputError, InputTypeError

__all__ = ["EntrySource", "subchain_rows", "slice_solve"]


class EntrySource:
    """Uniform access to entries of a dense tensor, a numpy memmap/array, or a callable.

    The callable takes an ``(m, d)`` int64 array and returns ``m`` values.
    """

    def __init__(self, x, shape=None, dtype=torch.float64, device="cpu"):
        self.dtype, self.device = dtype, torch.device(device)
        if callable(x) and not isinstance(x, (np.ndarray, torch.Tensor)):
            if shape is None:
                raise InputError("shape is required when x is a function of an index batch")
            self.fn, self.shape = x, tuple(int(n) for n in shape)
        elif isinstance(x, (np.ndarray, torch.Tensor)):
            self.fn, self.shape = None, tuple(x.shape)
            self.x = x
            if isinstance(x, torch.Tensor):
                self.dtype = x.dtype if x.is_floating_point() else torch.float64
                self.device = x.device
        else:
            raise InputTypeError(f"x must be a tensor, a numpy array/memmap or a callable, got {type(x).__name__}")
        if len(self.shape) < 2 or min(self.shape) < 1:
            raise InputError(f"need a tensor with >= 2 non-empty modes, got shape {self.shape}")

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.fn is not None:
            vals = self.fn(idx.cpu().numpy())
            out = torch.as_tensor(np.asarray(vals), dtype=self.dtype).reshape(-1)
            if out.numel() != idx.shape[0]:
                raise InputError(f"the entry function returned {out.numel()} values for {idx.shape[0]} indices")
        elif isinstance(self.x, torch.Tensor):
            out = self.x[tuple(idx.to(self.x.device).T)].to(self.dtype)
        else:
            out = torch.as_tensor(np.asarray(self.x[tuple(idx.cpu().numpy().T)]), dtype=self.dtype)
        out = out.to(self.device)
        if not torch.isfinite(out).all():
            raise InputError("the tensor contains NaN or Inf values at sampled entries")
        return out


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
    w = torch.ones_like(vals) if weights is None else weights
    outer = (rows[:, :, None] * rows[:, None, :]) * w[:, None, None]
    gram = torch.zeros(n, p, p, dtype=rows.dtype, device=rows.device).index_add_(0, slice_idx, outer)
    rhs = torch.zeros(n, p, dtype=rows.dtype, device=rows.device).index_add_(0, slice_idx, rows * (w * vals)[:, None])
    scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(torch.finfo(rows.dtype).tiny)
    eye = torch.eye(p, dtype=rows.dtype, device=rows.device)
    # a tiny relative ridge keeps slices with fewer entries than unknowns solvable
    floor = 1e-12 if rows.dtype == torch.float64 else 1e-6
    reg = gram + ((ridge + floor) * scale)[:, None, None] * eye
    try:
        sol = torch.linalg.solve(reg, rhs[:, :, None])[..., 0]
    except RuntimeError:
        sol = torch.linalg.lstsq(reg, rhs[:, :, None]).solution[..., 0]
    empty = torch.bincount(slice_idx, minlength=n) == 0
    if empty.any():
        sol[empty] = old[empty]
    return sol
