"""Algebra on tensor rings without building the dense tensor.

Rank rules (``a`` with ranks ``r``, ``b`` with ranks ``s``):

- ``inner(a, b)``, ``norm(a)``: scalars; transfer-matrix sweep around the ring, memory
  ``O(r_1 s_1 r_k s_k)``, FLOPs ``O(d n r^2 s^2 (r + s))``.
- ``add(a, b)`` / ``a - b``: ranks ``r_k + s_k`` (block-diagonal cores).
- ``scale(a, alpha)``: ranks unchanged (``alpha`` folded into one core).
- ``hadamard(a, b)``: ranks ``r_k * s_k`` (Kronecker product of core slices).
- ``mode_product(a, M, k)``: ranks unchanged, mode ``k`` becomes ``M.shape[0]``.
- ``contract_vectors(a, vs)``: scalar, ``O(d n r^2 + d r^3)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from trkit import contract as _contract
from trkit.errors import InputError, InputTypeError
from trkit.ring import TensorRing, as_tensor

__all__ = ["inner", "norm", "add", "sub", "scale", "hadamard", "mode_product", "contract_vectors", "tensorize"]


def _as_ring(x, name: str = "argument") -> TensorRing:
    if isinstance(x, TensorRing):
        return x
    if isinstance(x, (list, tuple)):
        return TensorRing(x)
    raise InputTypeError(f"{name} must be a TensorRing or a sequence of cores, got {type(x).__name__}")


def _common(a: TensorRing, b: TensorRing, op: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Check shapes agree and bring both rings to one dtype (promoted) and a's device."""
    if a.shape != b.shape:
        raise InputError(f"{op}: shapes differ, {a.shape} vs {b.shape}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    ca = [c.to(dtype) for c in a.cores]
    cb = [c.to(dtype=dtype, device=a.device) for c in b.cores]
    return ca, cb


def _transfer_sweep(ca: list[torch.Tensor], cb: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Contract ``<a, b>`` around the ring; returns ``(t, log_scale)`` with inner = t * exp(log_scale).

    State ``M[x, y, a, b]`` holds the product of transfer matrices from the start core; it is
    renormalised after every core so order-12+ rings neither overflow nor underflow (the scale
    is detached: any constant factor taken out and multiplied back leaves gradients exact).
    The sweep starts where ``r_k s_k`` is smallest, which keeps the state small (a tensor
    train, ``r_1 = 1``, costs only ``O(d n r^3)``).
    """
    d = len(ca)
    start = min(range(d), key=lambda k: ca[k].shape[0] * cb[k].shape[0])
    order = [(start + j) % d for j in range(d)]
    if ca[0].is_complex():
        ca = [c.conj() for c in ca]
    m = _contract.contract("xic,yie->xyce", ca[order[0]], cb[order[0]])
    log_scale = torch.zeros((), dtype=m.real.dtype, device=m.device)
    for k in order[1:]:
        s = m.detach().abs().amax().clamp_min(torch.finfo(log_scale.dtype).tiny)
        m = m / s
        log_scale = log_scale + torch.log(s)
        m = _contract.contract("xyab,aic,bie->xyce", m, ca[k], cb[k])
    x, y = m.shape[0], m.shape[1]
    t = torch.diagonal(m.reshape(x * y, x * y)).sum()  # close the ring: m[x, y, x, y] summed
    return t, log_scale


def inner(a, b) -> torch.Tensor:
    """Frobenius inner product ``sum_i conj(a[i]) * b[i]`` of two rings of equal shape (0-d tensor).

    Args:
        a, b: TensorRing (or sequences of cores) of the same shape; ranks may differ.
    Returns:
        0-d tensor in the promoted dtype, differentiable w.r.t. both rings' cores.
    """
    a, b = _as_ring(a, "a"), _as_ring(b, "b")
    ca, cb = _common(a, b, "inner")
    t, log_scale = _transfer_sweep(ca, cb)
    return t * torch.exp(log_scale)


def norm(a) -> torch.Tensor:
    """Frobenius norm ``||a||_F`` (0-d tensor) without densifying; see :func:`inner` for cost."""
    a = _as_ring(a, "a")
    t, log_scale = _transfer_sweep(list(a.cores), list(a.cores))
    # sqrt before exp doubles the representable range (float32 norms up to ~1e38, not ~1e19);
    # clamp because rounding can make a tiny positive <a, a> slightly negative.
    return torch.sqrt(t.real.clamp_min(0)) * torch.exp(0.5 * log_scale)


def add(a, b) -> TensorRing:
    """``a + b`` with ranks ``r_k + s_k``: core slices are block-diagonal ``diag(A_k[:, i, :], B_k[:, i, :])``.

    Two tensor trains (``r_1 = s_1 = 1``, order >= 2) stay a tensor train: the first core is
    ``[A_1 B_1]``, the last ``[A_d; B_d]``, so their ranks are ``(1, r_2 + s_2, ..., r_d + s_d)``.
    """
    a, b = _as_ring(a, "a"), _as_ring(b, "b")
    ca, cb = _common(a, b, "add")
    d = len(ca)
    out = []
    for k in range(d):
        x, y = ca[k], cb[k]
        (ra, n, ra1), (rb, _, rb1) = x.shape, y.shape
        if a.is_tensor_train and b.is_tensor_train and d >= 2 and k in (0, d - 1):
            out.append(torch.cat([x, y], dim=2 if k == 0 else 0))
            continue
        top = torch.cat([x, x.new_zeros(ra, n, rb1)], dim=2)
        bottom = torch.cat([y.new_zeros(rb, n, ra1), y], dim=2)
        out.append(torch.cat([top, bottom], dim=0))
    return TensorRing(out, validate=False)


def scale(a, alpha) -> TensorRing:
    """``alpha * a`` (ranks unchanged): ``alpha`` (a number or 0-d tensor, differentiable) multiplies core 0."""
    a = _as_ring(a, "a")
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise InputError(f"scale: alpha must be a scalar, got a tensor of shape {tuple(alpha.shape)}")
        alpha = alpha.reshape(()).to(a.device)
    elif not isinstance(alpha, (int, float, complex, np.number)):
        raise InputTypeError(f"scale: alpha must be a number or a 0-d tensor, got {type(alpha).__name__}")
    cores = list(a.cores)
    cores[0] = cores[0] * alpha
    return TensorRing(cores, validate=False)


def sub(a, b) -> TensorRing:
    """``a - b``; ranks as for :func:`add`."""
    return add(a, scale(_as_ring(b, "b"), -1.0))


def hadamard(a, b) -> TensorRing:
    """Elementwise product ``a * b`` with ranks ``r_k * s_k`` (slices ``A_k[:, i, :] kron B_k[:, i, :]``)."""
    a, b = _as_ring(a, "a"), _as_ring(b, "b")
    ca, cb = _common(a, b, "hadamard")
    out = []
    for x, y in zip(ca, cb):
        (ra, n, ra1), (rb, _, rb1) = x.shape, y.shape
        out.append(_contract.contract("aib,cid->acibd", x, y).reshape(ra * rb, n, ra1 * rb1))
    return TensorRing(out, validate=False)


def mode_product(a, matrix, mode: int) -> TensorRing:
    """Mode-``k`` product ``X x_k M`` for ``M`` of shape ``(J, n_k)``: mode ``k`` becomes size ``J``.

    Dense: ``torch.movedim(torch.tensordot(X, M, dims=([k], [1])), -1, k)`` (tensorly's ``mode_dot``).
    Ranks unchanged; cost ``O(r_k J n_k r_{k+1})``.
    """
    a = _as_ring(a, "a")
    m = as_tensor(matrix).to(device=a.device)
    d = a.ndim
    if not isinstance(mode, (int, np.integer)) or not -d <= mode < d:
        raise IndexError(f"mode must be an int in [{-d}, {d}), got {mode!r}")
    mode = int(mode) % d
    if m.ndim != 2 or m.shape[1] != a.shape[mode]:
        raise InputError(
            f"mode_product: matrix must have shape (J, {a.shape[mode]}) for mode {mode}, got {tuple(m.shape)}"
        )
    m = m.to(torch.promote_types(m.dtype, a.dtype)) if m.is_floating_point() else m.to(a.dtype)
    cores = [c.to(m.dtype) for c in a.cores]
    cores[mode] = _contract.contract("jn,anb->ajb", m, cores[mode])
    return TensorRing(cores, validate=False)


def contract_vectors(a, vectors: Sequence) -> torch.Tensor:
    """``sum_i X[i_1..i_d] v_1[i_1] ... v_d[i_d]`` (0-d tensor), one vector per mode.

    Each core collapses to the ``(r_k, r_{k+1})`` matrix ``sum_i v_k[i] G_k[:, i, :]``; the product
    starts at the smallest rank. Cost ``O(d n r^2 + d r^3)``.
    """
    a = _as_ring(a, "a")
    if len(vectors) != a.ndim:
        raise InputError(f"contract_vectors: need {a.ndim} vectors (one per mode), got {len(vectors)}")
    mats = []
    for k, (g, v) in enumerate(zip(a.cores, vectors)):
        v = as_tensor(v).to(device=a.device)
        if v.ndim != 1 or v.shape[0] != a.shape[k]:
            raise InputError(f"contract_vectors: vector {k} must have shape ({a.shape[k]},), got {tuple(v.shape)}")
        dtype = torch.promote_types(v.dtype, g.dtype)
        mats.append(_contract.contract("anb,n->ab", g.to(dtype), v.to(dtype)))
    start = min(range(a.ndim), key=lambda k: a.ranks[k])
    prod = mats[start]
    for j in range(1, a.ndim):
        prod = prod @ mats[(start + j) % a.ndim].to(prod.dtype)
    return torch.diagonal(prod).sum()


def tensorize(x, modes: Sequence, *, interleave: bool = False) -> torch.Tensor:
    """Reshape a dense tensor into many small modes (row-major), ready for a TR decomposition.

    Args:
        x: tensor or numpy array.
        modes: a flat list of sizes whose product is ``x.numel()`` (plain reshape), or one list
            per axis of ``x`` (e.g. ``([4, 8], [2, 16])`` for a 32 x 32 matrix) splitting each axis.
        interleave: with one list per axis of equal length, order the modes
            ``(i_1, j_1, i_2, j_2, ...)`` (the usual TT-matrix layout) instead of ``(i_1, i_2, j_1, j_2)``.
    Returns:
        tensor of shape ``modes`` (flattened, possibly interleaved).
    """
    t = as_tensor(x)
    per_axis = len(modes) > 0 and all(isinstance(m, (list, tuple)) for m in modes)
    if not per_axis:
        sizes = [int(m) for m in modes]
        if math.prod(sizes) != t.numel():
            raise InputError(
                f"tensorize: modes {sizes} multiply to {math.prod(sizes)}, but x has "
                f"{t.numel()} entries (shape {tuple(t.shape)})"
            )
        return t.reshape(sizes)
    if len(modes) != t.ndim:
        raise InputError(f"tensorize: got {len(modes)} mode lists for a tensor with {t.ndim} axes")
    for ax, ms in enumerate(modes):
        if math.prod(ms) != t.shape[ax]:
            raise InputError(
                f"tensorize: modes {list(ms)} multiply to {math.prod(ms)}, but axis {ax} has size {t.shape[ax]}"
            )
    out = t.reshape([int(m) for ms in modes for m in ms])
    if not interleave:
        return out
    counts = {len(ms) for ms in modes}
    if len(counts) != 1:
        raise InputError(
            f"tensorize: interleave needs the same number of modes per axis, got {[len(ms) for ms in modes]}"
        )
    c, na = counts.pop(), len(modes)
    return out.permute([ax * c + j for j in range(c) for ax in range(na)])
