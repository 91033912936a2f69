"""The tensor-ring (TR) format.

A d-way tensor ``X`` of shape ``(n_1, ..., n_d)`` is stored as cores ``G_k`` of shape
``(r_k, n_k, r_{k+1})`` with ``r_{d+1} = r_1``::

    X[i_1, ..., i_d] = trace(G_1[:, i_1, :] @ G_2[:, i_2, :] @ ... @ G_d[:, i_d, :])

This is tensorly's convention, so ``from_tensorly``/``to_tensorly`` only convert arrays.
``r_1 = 1`` is a tensor train.
"""
from __future__ import annotations

import string
from typing import Sequence

import numpy as np
import torch

from trkit import contract as _contract

__all__ = ["TensorRing", "as_tensor"]


def as_tensor(x, dtype=None, device=None) -> torch.Tensor:
    """Accept a torch tensor or anything numpy understands; floats become float64 unless told."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if arr.dtype == object:
            raise TypeError(f"cannot convert object array of shape {arr.shape} to a tensor")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype or t.dtype, device=device or t.device)
    return t


def _letters(n: int) -> list[str]:
    letters = string.ascii_letters
    if n > len(letters):
        raise ValueError(f"too many indices ({n}) for one einsum equation")
    return list(letters[:n])


def dense_equation(d: int) -> str:
    """Einsum equation contracting d cores into the dense tensor, e.g. 'aib,bjc,cka->ijk'."""
    letters = _letters(2 * d)
    bonds, modes = letters[:d], letters[d:]
    terms = [bonds[k] + modes[k] + bonds[(k + 1) % d] for k in range(d)]
    return ",".join(terms) + "->" + "".join(modes)


class TensorRing:
    """A tensor stored as a ring of 3-way cores ``G_k: (r_k, n_k, r_{k+1})``.

    Args:
        cores: sequence of torch tensors (numpy arrays accepted). Validated on construction:
            3-way, ranks consistent around the ring, ranks >= 1, finite, one dtype and device.
        validate: skip the checks (used internally when the cores are known good).
    """

    def __init__(self, cores: Sequence, *, validate: bool = True):
        cores = [as_tensor(c) for c in cores]
        if validate:
            _validate(cores)
        self._cores = cores

    @classmethod
    def random(cls, shape: Sequence[int], ranks, *, dtype=torch.float64, device=None,
               generator: torch.Generator | None = None, seed: int | None = None) -> "TensorRing":
        """Ring with i.i.d. normal cores scaled so entries have variance ~1.

        Args:
            shape: mode sizes ``(n_1, ..., n_d)``.
            ranks: ``(r_1, ..., r_d)`` or one int for all bonds.
            seed: convenience for ``generator=torch.Generator().manual_seed(seed)``.
        """
        shape = [int(n) for n in shape]
        d = len(shape)
        ranks = [int(ranks)] * d if isinstance(ranks, (int, np.integer)) else [int(r) for r in ranks]
        if len(ranks) != d:
            raise ValueError(f"got {len(ranks)} ranks for {d} modes; need one rank per mode")
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        cores = []
        for k in range(d):
            r0, r1 = ranks[k], ranks[(k + 1) % d]
            # variance 1/sqrt(r0 r1) per core keeps each entry's variance ~1 whatever the ranks
            g = torch.randn(r0, shape[k], r1, generator=generator, dtype=dtype) / (r0 * r1) ** 0.25
            cores.append(g.to(device) if device is not None else g)
        return cls(cores)

    # ---- basic properties -------------------------------------------------------------
    @property
    def cores(self) -> list[torch.Tensor]:
        return self._cores

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(c.shape[1]) for c in self._cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        """``(r_1, ..., r_d)``; ``r_{d+1} = r_1`` closes the ring."""
        return tuple(int(c.shape[0]) for c in self._cores)

    @property
    def ndim(self) -> int:
        return len(self._cores)

    @property
    def n_params(self) -> int:
        return sum(c.numel() for c in self._cores)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=object))

    @property
    def dtype(self) -> torch.dtype:
        return self._cores[0].dtype

    @property
    def device(self) -> torch.device:
        return self._cores[0].device

    @property
    def is_tensor_train(self) -> bool:
        return self.ranks[0] == 1

    def __repr__(self) -> str:
        return (f"TensorRing(shape={self.shape}, ranks={self.ranks}, n_params={self.n_params}, "
                f"dtype={self.dtype}, device={self.device})")

    def __len__(self) -> int:
        return self.ndim

    # ---- torch-like conveniences ------------------------------------------------------
    def to(self, *args, **kwargs) -> "TensorRing":
        return TensorRing([c.to(*args, **kwargs) for c in self._cores], validate=False)

    def detach(self) -> "TensorRing":
        return TensorRing([c.detach() for c in self._cores], validate=False)

    def clone(self) -> "TensorRing":
        return TensorRing([c.clone() for c in self._cores], validate=False)

    def requires_grad_(self, flag: bool = True) -> "TensorRing":
        for c in self._cores:
            c.requires_grad_(flag)
        return self

    # ---- dense form -------------------------------------------------------------------
    def to_dense(self) -> torch.Tensor:
        """The full tensor of shape ``self.shape`` (planned contraction of all cores)."""
        return _contract.contract(dense_equation(self.ndim), *self._cores)

    def to_numpy(self) -> np.ndarray:
        return self.to_dense().detach().cpu().numpy()

    # ---- algebra (implemented in trkit.algebra) ---------------------------------------
    def norm(self) -> torch.Tensor:
        """Frobenius norm without densifying (transfer-matrix sweep; see ``trkit.algebra.inner``)."""
        from trkit import algebra
        return algebra.norm(self)


def _validate(cores: list[torch.Tensor]) -> None:
    if len(cores) == 0:
        raise ValueError("a TensorRing needs at least one core")
    dtype, device = cores[0].dtype, cores[0].device
    for k, c in enumerate(cores):
        if c.ndim != 3:
            raise ValueError(f"core {k} must be 3-way (r_k, n_k, r_k+1), got shape {tuple(c.shape)}")
        if not c.is_floating_point() and not c.is_complex():
            raise ValueError(f"core {k} has dtype {c.dtype}; cores must be floating point")
        if c.dtype != dtype:
            raise ValueError(f"core {k} has dtype {c.dtype} but core 0 has {dtype}")
        if c.device != device:
            raise ValueError(f"core {k} is on {c.device} but core 0 is on {device}")
        if min(c.shape) < 1:
            raise ValueError(f"core {k} has shape {tuple(c.shape)}: ranks and mode sizes must be >= 1")
    d = len(cores)
    for k in range(d):
        right, left = cores[k].shape[2], cores[(k + 1) % d].shape[0]
        if right != left:
            raise ValueError(
                f"ranks disagree between core {k} and core {(k + 1) % d}: core {k} has right rank "
                f"{right}, core {(k + 1) % d} has left rank {left}")
    for k, c in enumerate(cores):
        if not torch.isfinite(c).all():
            raise ValueError(f"core {k} contains NaN or Inf values")
