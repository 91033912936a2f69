"""The tensor-ring (TR) format.

A d-way tensor ``X`` of shape ``(n_1, ..., n_d)`` is stored as cores ``G_k`` of shape
``(r_k, n_k, r_{k+1})`` with ``r_{d+1} = r_1``::

    X[i_1, ..., i_d] = trace(G_1[:, i_1, :] @ G_2[:, i_2, :] @ ... @ G_d[:, i_d, :])

This is tensorly's convention, so ``from_tensorly``/``to_tensorly`` only convert arrays.
``r_1 = 1`` is a tensor train.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from trkit import contract as _contract
from trkit._kernels import merge_chain
from trkit._kernels import ring_equation as dense_equation
from trkit.errors import InputError, InputTypeError

__all__ = ["TensorRing", "as_tensor", "dense_equation"]


def as_tensor(x, dtype=None, device=None) -> torch.Tensor:
    """Accept a torch tensor or anything numpy understands; floats become float64 unless told."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if arr.dtype == object:
            raise InputTypeError(f"cannot convert object array of shape {arr.shape} to a tensor")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype or t.dtype, device=device or t.device)
    return t


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
    def random(
        cls,
        shape: Sequence[int],
        ranks,
        *,
        dtype=torch.float64,
        device=None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> TensorRing:
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
            raise InputError(f"got {len(ranks)} ranks for {d} modes; need one rank per mode")
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
        return (
            f"TensorRing(shape={self.shape}, ranks={self.ranks}, n_params={self.n_params}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    def __len__(self) -> int:
        return self.ndim

    # ---- torch-like conveniences ------------------------------------------------------
    def to(self, *args, **kwargs) -> TensorRing:
        return TensorRing([c.to(*args, **kwargs) for c in self._cores], validate=False)

    def detach(self) -> TensorRing:
        return TensorRing([c.detach() for c in self._cores], validate=False)

    def clone(self) -> TensorRing:
        return TensorRing([c.clone() for c in self._cores], validate=False)

    def requires_grad_(self, flag: bool = True) -> TensorRing:
        for c in self._cores:
            c.requires_grad_(flag)
        return self

    # ---- dense form and entries ------------------------------------------------------
    def to_dense(self) -> torch.Tensor:
        """The full tensor of shape ``self.shape``.

        The ring is cut at the two bonds ``(p, q)`` chosen by ``trkit.contract.ring_dense_plan``:
        each arc is merged by matmuls in matrix-chain order and the two halves meet in one GEMM of
        cost ``2 N r_p r_q``. Every step is a plain matmul, with no einsum transposes.
        """
        cores, d = self._cores, self.ndim
        if d == 1:
            return torch.diagonal(cores[0], dim1=0, dim2=2).sum(-1)
        plan = _contract.ring_dense_plan(self.shape, self.ranks)
        p = plan.cut[0]
        left, right = (_merge_tree(cores, t) for t in plan.tree)
        rp, nl, rq = left.shape
        nr = right.shape[1]
        # X[iL, iR] = sum_{a,b} L[a, iL, b] R[b, iR, a]
        out = left.permute(1, 0, 2).reshape(nl, rp * rq) @ right.permute(2, 0, 1).reshape(rp * rq, nr)
        order = [k % d for k in range(p, p + d)]
        out = out.reshape([self.shape[k] for k in order])
        if p != 0:
            out = out.permute([order.index(k) for k in range(d)]).contiguous()
        return out

    def to_numpy(self) -> np.ndarray:
        return self.to_dense().detach().cpu().numpy()

    # numpy: np.asarray(ring) densifies once through to_dense (not entry by entry through
    # __getitem__); ufuncs and operators with numpy operands defer to the ring's own methods
    # (np.float64(2) * ring scales the ring instead of densifying it).
    __array_ufunc__ = None

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.to_numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    def entries(self, index, chunk_size: int | None = None) -> torch.Tensor:
        """Values ``X[index[j]]`` for an integer array ``index`` of shape ``(m, d)``; returns ``(m,)``.

        Batched product of core slices around the ring, started at the smallest rank;
        ``m`` is processed in chunks (default: 2^18 state elements) so memory stays bounded.
        """
        idx = as_tensor(index).to(self.device)
        d = self.ndim
        if idx.ndim != 2 or idx.shape[1] != d or idx.dtype.is_floating_point or idx.is_complex():
            raise InputError(f"index must be an integer array of shape (m, {d}), got {idx.dtype} {tuple(idx.shape)}")
        idx = idx.long()
        if idx.numel():
            lo, hi = idx.min(0).values, idx.max(0).values
            for k in range(d):
                if lo[k] < 0 or hi[k] >= self.shape[k]:
                    raise IndexError(
                        f"index for mode {k} must be in [0, {self.shape[k]}), got "
                        f"values in [{int(lo[k])}, {int(hi[k])}]"
                    )
        start = min(range(d), key=lambda k: self.ranks[k])
        order = [(start + j) % d for j in range(d)]
        rmax = max(self.ranks)
        # ~2 MB of float64 state per chunk: bounded memory, and small batches run faster in cache
        chunk = chunk_size or max(1, (1 << 18) // (self.ranks[start] * rmax))
        slices = [c.permute(1, 0, 2) for c in self._cores]  # (n, r, r'): a gather gives contiguous batches
        out = []
        for lo_ in range(0, idx.shape[0], chunk):
            sub = idx[lo_ : lo_ + chunk]
            prod = slices[order[0]][sub[:, order[0]]]
            for k in order[1:]:
                prod = torch.bmm(prod, slices[k][sub[:, k]])
            out.append(torch.diagonal(prod, dim1=1, dim2=2).sum(-1))
        if not out:
            return torch.zeros(0, dtype=self.dtype, device=self.device)
        return torch.cat(out)

    # ---- slicing ----------------------------------------------------------------------
    def select(self, mode: int, i: int) -> TensorRing | torch.Tensor:
        """Fix mode ``mode`` at index ``i``: a ring of order ``d - 1`` (a 0-d tensor when d = 1).

        The slice ``G_k[:, i, :]`` is absorbed into the neighbour across the larger of the
        core's two bonds, so that bond disappears (dense: ``X.select(mode, i)``).
        """
        d = self.ndim
        mode, i = _check_mode(mode, d), _check_index(i, self.shape[mode], mode)
        s = self._cores[mode][:, i, :]
        if d == 1:
            return torch.diagonal(s).sum()
        cores = list(self._cores)
        nxt, prv = (mode + 1) % d, (mode - 1) % d
        if self.ranks[nxt] >= self.ranks[mode]:
            cores[nxt] = _contract.contract("ab,bjc->ajc", s, cores[nxt])
        else:
            cores[prv] = _contract.contract("ajb,bc->ajc", cores[prv], s)
        del cores[mode]
        return TensorRing(cores, validate=False)

    def __getitem__(self, key) -> TensorRing | torch.Tensor:
        """Index with ints, slices and one ``...`` (dense semantics: ``tr[k].to_dense() == X[k]``)."""
        key = key if isinstance(key, tuple) else (key,)
        if sum(k is Ellipsis for k in key) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if Ellipsis in key:
            pos = key.index(Ellipsis)
            key = key[:pos] + (slice(None),) * (self.ndim - len(key) + 1) + key[pos + 1 :]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices: {len(key)} for a ring of order {self.ndim}")
        key = key + (slice(None),) * (self.ndim - len(key))
        cores = list(self._cores)
        for k, item in enumerate(key):
            if isinstance(item, slice):
                cores[k] = cores[k][:, item, :]
                if cores[k].shape[1] == 0:
                    raise IndexError(f"slice {item} selects nothing from mode {k} of size {self.shape[k]}")
            elif not isinstance(item, (int, np.integer)):
                raise InputTypeError(
                    f"TensorRing indices must be ints, slices or '...', got {type(item).__name__} for mode {k}"
                )
        out: TensorRing | torch.Tensor = TensorRing(cores, validate=False)
        for k in reversed(range(self.ndim)):  # from the right so earlier mode numbers stay valid
            if not isinstance(key[k], slice):
                out = out.select(k, int(key[k]))
        return out

    # ---- reordering and reshaping -----------------------------------------------------
    def shift(self, k: int) -> TensorRing:
        """Rotate the ring so core ``k`` comes first (a free relabelling: trace is cyclic).

        ``tr.shift(k).to_dense() == tr.to_dense().permute([(j + k) % d for j in range(d)])``,
        i.e. old mode ``k`` becomes mode 0; negative ``k`` rotates the other way.
        """
        k = int(k) % self.ndim
        return TensorRing(self._cores[k:] + self._cores[:k], validate=False)

    def reverse(self) -> TensorRing:
        """Reverse the mode order: ``tr.reverse().to_dense() == X.permute(d-1, ..., 0)``."""
        return TensorRing([c.permute(2, 1, 0) for c in reversed(self._cores)], validate=False)

    def merge_modes(self, start: int, stop: int) -> TensorRing:
        """Merge the adjacent modes ``start..stop-1`` into one core of size ``prod n_k``.

        Dense: ``X.reshape(*shape[:start], -1, *shape[stop:])`` (row-major, ``start`` slowest).
        """
        d = self.ndim
        if not (0 <= start < stop <= d):
            raise InputError(f"merge_modes needs 0 <= start < stop <= {d}, got start={start}, stop={stop}")
        merged = merge_chain(self._cores[start:stop])
        return TensorRing(self._cores[:start] + [merged] + self._cores[stop:], validate=False)

    def split_mode(self, mode: int, sizes: Sequence[int], max_rank: int | None = None, tol: float = 0.0) -> TensorRing:
        """Split mode ``mode`` into modes of ``sizes`` (inverse of :meth:`merge_modes`) by SVDs.

        Each new bond keeps singular values above ``tol * sigma_max`` (at most ``max_rank``);
        with the defaults the split is exact.
        """
        d = self.ndim
        mode = _check_mode(mode, d)
        sizes = [int(s) for s in sizes]
        if any(s < 1 for s in sizes) or int(np.prod(sizes)) != self.shape[mode]:
            raise InputError(
                f"split_mode: sizes {sizes} must be >= 1 and multiply to mode {mode}'s size {self.shape[mode]}"
            )
        rest = self._cores[mode]
        new = []
        for n in sizes[:-1]:
            r0, m, r1 = rest.shape
            u, sv, vh = torch.linalg.svd(rest.reshape(r0 * n, (m // n) * r1), full_matrices=False)
            keep = int((sv > tol * sv[0]).sum()) if tol > 0 else sv.numel()
            keep = max(1, min(keep, max_rank or keep))
            new.append(u[:, :keep].reshape(r0, n, keep))
            rest = (sv[:keep, None] * vh[:keep]).reshape(keep, m // n, r1)
        new.append(rest)
        return TensorRing(self._cores[:mode] + new + self._cores[mode + 1 :], validate=False)

    @classmethod
    def from_tensor_train(cls, cores: Sequence) -> TensorRing:
        """A ring from tensor-train cores; end cores may be 2-D ``(n_1, r_2)`` and ``(r_d, n_d)``.

        Raises ValueError unless the boundary ranks are 1.
        """
        cores = [as_tensor(c) for c in cores]
        if len(cores) == 0:
            raise InputError("a tensor train needs at least one core")
        if cores[0].ndim == 2:
            cores[0] = cores[0].unsqueeze(0)
        if cores[-1].ndim == 2:
            cores[-1] = cores[-1].unsqueeze(-1)
        if cores[0].ndim == 3 and cores[-1].ndim == 3 and (cores[0].shape[0] != 1 or cores[-1].shape[2] != 1):
            raise InputError(
                f"tensor-train boundary ranks must be 1: first core has left rank "
                f"{cores[0].shape[0]}, last core has right rank {cores[-1].shape[2]}"
            )
        return cls(cores)

    # ---- algebra (implemented in trkit.algebra) ---------------------------------------
    def norm(self) -> torch.Tensor:
        """Frobenius norm without densifying (transfer-matrix sweep; see ``trkit.algebra.inner``)."""
        from trkit import algebra

        return algebra.norm(self)

    def __add__(self, other):
        from trkit import algebra

        return algebra.add(self, other) if isinstance(other, TensorRing) else NotImplemented

    def __sub__(self, other):
        from trkit import algebra

        return algebra.sub(self, other) if isinstance(other, TensorRing) else NotImplemented

    def __neg__(self) -> TensorRing:
        from trkit import algebra

        return algebra.scale(self, -1.0)

    def __mul__(self, alpha):
        from trkit import algebra

        return NotImplemented if isinstance(alpha, TensorRing) else algebra.scale(self, alpha)

    __rmul__ = __mul__

    def __truediv__(self, alpha):
        from trkit import algebra

        return NotImplemented if isinstance(alpha, TensorRing) else algebra.scale(self, 1.0 / alpha)


def _merge_tree(cores: Sequence[torch.Tensor], tree) -> torch.Tensor:
    """Merge an arc of cores following a plan tree (leaves: core numbers) into one core."""
    if isinstance(tree, int):
        return cores[tree]
    return merge_chain([_merge_tree(cores, tree[0]), _merge_tree(cores, tree[1])])


def _check_mode(mode, d: int) -> int:
    if not isinstance(mode, (int, np.integer)) or not -d <= mode < d:
        raise IndexError(f"mode must be an int in [{-d}, {d}), got {mode!r}")
    return int(mode) % d


def _check_index(i, n: int, mode: int) -> int:
    if not isinstance(i, (int, np.integer)) or not -n <= i < n:
        raise IndexError(f"index {i!r} is out of range for mode {mode} of size {n}")
    return int(i) % n


def _validate(cores: list[torch.Tensor]) -> None:
    if len(cores) == 0:
        raise InputError("a TensorRing needs at least one core")
    dtype, device = cores[0].dtype, cores[0].device
    for k, c in enumerate(cores):
        if c.ndim != 3:
            raise InputError(f"core {k} must be 3-way (r_k, n_k, r_k+1), got shape {tuple(c.shape)}")
        if not c.is_floating_point() and not c.is_complex():
            raise InputError(f"core {k} has dtype {c.dtype}; cores must be floating point")
        if c.dtype != dtype:
            raise InputError(f"core {k} has dtype {c.dtype} but core 0 has {dtype}")
        if c.device != device:
            raise InputError(f"core {k} is on {c.device} but core 0 is on {device}")
        if min(c.shape) < 1:
            raise InputError(f"core {k} has shape {tuple(c.shape)}: ranks and mode sizes must be >= 1")
    d = len(cores)
    for k in range(d):
        right, left = cores[k].shape[2], cores[(k + 1) % d].shape[0]
        if right != left:
            raise InputError(
                f"ranks disagree between core {k} and core {(k + 1) % d}: core {k} has right rank "
                f"{right}, core {(k + 1) % d} has left rank {left}"
            )
    for k, c in enumerate(cores):
        if not torch.isfinite(c).all():
            raise InputError(f"core {k} contains NaN or Inf values")
