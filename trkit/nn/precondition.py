"""Preconditioned gradients for tensor-ring cores: a step on the cores moves the reconstructed
weight like a gradient step on the weight itself.

Why: for a ring ``W = TR(G_1, ..., G_d)`` the gradient of core ``k`` is ``g_k = J_k^T D``, with ``D``
the gradient with respect to ``W`` and ``J_k`` the linear map from core ``k`` (the others fixed) to
``W``. A plain step on every core moves ``W`` by ``lr sum_k J_k J_k^T D``. The gains (eigenvalues
of ``J_k^T J_k``) grow with the norms of the other cores, so one learning rate is far too large for
some directions and too small for others, and the mismatch grows as the weight grows.

What: the best move a step on the cores can make is ``P_T D``, the projection of ``D`` onto the
tangent space of fixed-rank rings (the span of all ``J_k``). It is ``J u`` with ``u`` solving the
Gauss-Newton normal equations ``(J^T J) u = g`` (``J = [J_1 .. J_d]``, ``g`` the core gradients).
``method="gauss_newton"`` solves them by conjugate gradients, preconditioned by the diagonal blocks
``H_k = J_k^T J_k``; every product with ``J^T J`` is a ring contraction through ``r^2 x r^2``
transfer matrices, so ``W`` is never formed. ``method="scaled_gd"`` uses the diagonal blocks only
(``u_k = H_k^{-1} g_k``, ScaledGD / Riemannian preconditioning): it moves ``W`` by
``sum_k P_k D``, which counts directions several cores can reach (``W`` itself, the gauge at every
bond) more than once.

Damping: ``H_k + eps_k I`` (and ``J^T J + diag(eps_k)``) with
``eps_k = max(damping, rel_damping * lambda_max(H_k))``. ``damping`` is in gain units: ``J_k J_k^T``
maps a dense step to the move of ``W``, so a gain of 1 moves ``W`` as far as the dense step, and a
direction whose plain gain is below ``damping`` is not amplified past ``1 / damping``. A zero core
(an adapter whose up projection starts at zero) makes the other cores' Grams zero: their updates
stay zero (their gradients are zero too) until it has grown.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from trkit.errors import InputError, InputTypeError

__all__ = [
    "RingPreconditioner",
    "precondition_ring_grads",
    "ring_cores",
    "core_grams",
    "transfer_matrices",
    "tangent_projection",
    "limit_relative_steps",
]

_METHODS = ("gauss_newton", "scaled_gd")


def ring_cores(module: nn.Module) -> list[nn.Parameter]:
    """The cores of a ``TRLinear`` or ``CrossLayerTR`` in ring order."""
    from trkit.nn.cross_layer import CrossLayerTR
    from trkit.nn.linear import TRLinear

    if isinstance(module, CrossLayerTR):
        return module.cores
    if isinstance(module, TRLinear):
        return list(module.cores)
    raise InputTypeError(f"expected a TRLinear or CrossLayerTR, got {type(module).__name__}")


def _flat(core_like: torch.Tensor) -> torch.Tensor:
    """``(r_a, n, r_b) -> (n, r_a r_b)``: each mode slice as a row over the bond pair ``(a, b)``."""
    ra, n, rb = core_like.shape
    return core_like.permute(1, 0, 2).reshape(n, ra * rb)


def _unflat(flat: torch.Tensor, ra: int, rb: int) -> torch.Tensor:
    return flat.reshape(-1, ra, rb).permute(1, 0, 2)


def _transfer(bra: torch.Tensor, ket: torch.Tensor, ra: int, rb: int) -> torch.Tensor:
    """``E[(a, a'), (b, b')] = sum_i bra[a, i, b] ket[a', i, b']`` from flat cores (one GEMM)."""
    return (bra.T @ ket).reshape(ra, rb, ra, rb).permute(0, 2, 1, 3).reshape(ra * ra, rb * rb)


def _environments(transfers: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """For each core ``k`` the product of the other cores' transfer matrices around the ring,
    ``E_{k+1} ... E_{k-1}``: rows ``(b, b')`` its right bond, columns ``(a, a')`` its left bond."""
    d = len(transfers)
    if d == 1:  # a one-core ring: nothing around it
        rb2 = transfers[0].shape[1]
        return [torch.eye(rb2, dtype=transfers[0].dtype, device=transfers[0].device)]
    out = []
    for k in range(d):
        # Start from the next core's transfer, not an identity: at a bond of rank r the identity is
        # r^2 x r^2 (1 GiB at r = 128), and its product costs r^4 times the next bond's r^2.
        m = transfers[(k + 1) % d]
        for j in range(2, d):
            m = m @ transfers[(k + j) % d]
        out.append(m)
    return out


def _slice_matrix(env: torch.Tensor, ra: int, rb: int) -> torch.Tensor:
    """``env[(b, b'), (a, a')]`` as the matrix ``C[(a', b'), (a, b)]`` acting on flat slices."""
    return env.reshape(rb, rb, ra, ra).permute(3, 1, 2, 0).reshape(ra * rb, ra * rb)


def transfer_matrices(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``E_k[(a, a'), (b, b')] = sum_i G_k[a, i, b] G_k[a', i, b']``, shape ``(r_k^2, r_{k+1}^2)``:
    the product of all of them around the ring has trace ``||W||^2``."""
    return [_transfer(_flat(c), _flat(c), c.shape[0], c.shape[2]) for c in cores]


def core_grams(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``H_k = J_k^T J_k`` for every core, shape ``(r_k r_{k+1}, r_k r_{k+1})`` indexed ``(a, b)``.

    ``J_k^T J_k`` is block diagonal over core ``k``'s mode index with the same block ``H_k`` for
    every slice ``G_k[:, i, :]`` (flattened as the bond pair ``(a, b)``).
    """
    envs = _environments(transfer_matrices(cores))
    return [_slice_matrix(e, c.shape[0], c.shape[2]) for e, c in zip(envs, cores)]


def _damped_inverse(h: torch.Tensor, damping: float, rel_damping: float) -> tuple[torch.Tensor, float]:
    """``((H + eps I)^{-1}, eps)`` with ``eps = max(damping, rel_damping * lambda_max(H))``."""
    lam, v = torch.linalg.eigh(h)
    lam = lam.clamp_min(0.0)
    eps = max(float(damping), float(rel_damping) * float(lam[-1]), torch.finfo(h.dtype).tiny)
    return (v / (lam + eps)) @ v.T, eps


class _NormalEquations:
    """``J^T J + diag(eps)`` of one ring as an operator on flat core-shaped tensors ``(n_k, r_k r_{k+1})``."""

    def __init__(self, cores: list[torch.Tensor], damping: float, rel_damping: float):
        self.shapes = [(c.shape[0], c.shape[2]) for c in cores]
        self.flats = [_flat(c) for c in cores]
        self.transfers = [_transfer(f, f, *s) for f, s in zip(self.flats, self.shapes)]
        self.grams = [_slice_matrix(e, *s) for e, s in zip(_environments(self.transfers), self.shapes)]
        inv = [_damped_inverse(h, damping, rel_damping) for h in self.grams]
        self.inverses = [i for i, _ in inv]
        self.eps = [e for _, e in inv]

    def precondition(self, r: list[torch.Tensor]) -> list[torch.Tensor]:
        return [v @ inv for v, inv in zip(r, self.inverses)]

    def __call__(self, u: list[torch.Tensor]) -> list[torch.Tensor]:
        """Block ``(k, l)``, ``l != k``: the ring with core ``l`` replaced by ``u_l`` contracted with
        the ring with a hole at ``k``. Summed over ``l`` in one pass around the ring, carrying the
        product ``s`` of plain transfers and ``t`` of the products with one mixed transfer."""
        d = len(u)
        mixed = [_transfer(f, v, *sh) for f, v, sh in zip(self.flats, u, self.shapes)]
        out = []
        for k in range(d):
            s: torch.Tensor | None = None
            t: torch.Tensor | None = None
            for j in range(1, d):
                idx = (k + j) % d
                if s is None or t is None:  # the first step sets both
                    s, t = self.transfers[idx], mixed[idx]
                else:
                    s, t = s @ self.transfers[idx], t @ self.transfers[idx] + s @ mixed[idx]
            v = torch.addmm(u[k], u[k], self.grams[k], beta=self.eps[k])
            if t is not None:  # a one-core ring has no cross terms
                v = v.addmm_(self.flats[k], _slice_matrix(t, *self.shapes[k]))
            out.append(v)
        return out


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum(torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)))


def _conjugate_gradients(op: _NormalEquations, g: list[torch.Tensor], max_iter: int, tol: float):
    """Preconditioned CG for ``op u = g`` from ``u = 0``; returns ``(u, iterations, relative
    residual in the preconditioned norm)``."""
    u = [torch.zeros_like(v) for v in g]
    r = [v.clone() for v in g]
    z = op.precondition(r)
    p = [v.clone() for v in z]
    rz = rz0 = _dot(r, z)
    it = 0
    while it < max_iter and rz > tol**2 * rz0:
        ap = op(p)
        pap = _dot(p, ap)
        if not pap > 0.0:
            break
        alpha = rz / pap
        for a, b, c, e in zip(u, p, r, ap):
            a.add_(b, alpha=alpha)
            c.sub_(e, alpha=alpha)
        z = op.precondition(r)
        rz_new = _dot(r, z)
        p = [zz.add_(pp, alpha=rz_new / rz) for zz, pp in zip(z, p)]
        rz, it = rz_new, it + 1
    return u, it, (max(rz, 0.0) / rz0) ** 0.5 if rz0 > 0 else 0.0


@torch.no_grad()
def precondition_ring_grads(
    cores: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor | None],
    method: str = "gauss_newton",
    damping: float = 1e-3,
    rel_damping: float = 1e-6,
    max_iter: int = 10,
    tol: float = 1e-3,
    info: dict | None = None,
) -> list[torch.Tensor]:
    """Preconditioned core updates for one ring (see the module docs).

    Args:
        cores: ``G_k`` of shapes ``(r_k, n_k, r_{k+1})`` in ring order.
        grads: ``dL/dG_k`` (same shapes; ``None`` counts as zero).
        method: ``"gauss_newton"`` (the tangent-space projection of the dense gradient, by
            preconditioned conjugate gradients) or ``"scaled_gd"`` (per-core ``H_k^{-1} g_k``).
        damping: absolute damping of ``H_k`` in gain units; ``rel_damping``: relative to its
            largest eigenvalue.
        max_iter, tol: conjugate-gradient iterations at most, and the relative residual (in the
            preconditioned norm) at which they stop.
        info: a dict that receives ``iterations`` and ``residual`` (``gauss_newton`` only).

    Returns:
        Updates ``u_k`` (same shapes and dtype as the cores): ``G_k - lr u_k`` moves the ring, to
        first order, by ``-lr P_T D`` (``gauss_newton``) or ``-lr sum_k P_k D`` (``scaled_gd``).
    """
    if len(cores) != len(grads):
        raise InputError(f"got {len(cores)} cores but {len(grads)} gradients")
    if method not in _METHODS:
        raise InputError(f"method must be one of {_METHODS}, got {method!r}")
    dtype = cores[0].dtype
    # float64 for the small Gram matrices: their condition number is the square of the cores'
    cs = [c.detach().to(torch.float64) for c in cores]
    gs = [_flat(torch.zeros_like(c) if g is None else g.detach().to(torch.float64)) for c, g in zip(cs, grads)]
    op = _NormalEquations(cs, damping, rel_damping)
    if method == "scaled_gd":
        updates = op.precondition(gs)
    else:
        updates, iters, residual = _conjugate_gradients(op, gs, int(max_iter), float(tol))
        if info is not None:
            info.update(iterations=iters, residual=residual)
    return [_unflat(u, c.shape[0], c.shape[2]).to(dtype) for u, c in zip(updates, cs)]


def tangent_projection(
    cores: Sequence[torch.Tensor], dense_grad: torch.Tensor, rtol: float = 1e-12, max_iter: int = 1000
) -> torch.Tensor:
    """Orthogonal projection of ``dense_grad`` (shape of the ring's dense tensor) onto the span of
    all first-order moves of the cores, ``J (J^T J)^+ J^T D``. Conjugate gradients through the dense
    reconstruction (autograd): a reference for small rings, not a training tool.
    """
    from trkit.ring import TensorRing

    cs = tuple(c.detach() for c in cores)
    if tuple(dense_grad.shape) != tuple(c.shape[1] for c in cs):
        raise InputError(f"dense_grad has shape {tuple(dense_grad.shape)}, the ring {tuple(c.shape[1] for c in cs)}")

    def dense(*c):
        return TensorRing(list(c), validate=False).to_dense()

    def jvp(v):
        return torch.func.jvp(dense, cs, tuple(v))[1]

    vjp_fn = torch.func.vjp(dense, *cs)[1]  # (output, vjp function)
    r = list(vjp_fn(dense_grad.detach()))
    u = [torch.zeros_like(c) for c in cs]
    p = [t.clone() for t in r]
    rs = rs0 = _dot(r, r)
    for _ in range(max_iter):
        if rs <= rtol**2 * rs0:
            break
        ap = list(vjp_fn(jvp(p)))
        pap = _dot(p, ap)
        if not pap > 0.0:
            break
        alpha = rs / pap
        u = [a + alpha * b for a, b in zip(u, p)]
        r = [a - alpha * b for a, b in zip(r, ap)]
        rs_new = _dot(r, r)
        p = [a + (rs_new / rs) * b for a, b in zip(r, p)]
        rs = rs_new
    return jvp(u)


@torch.no_grad()
def limit_relative_steps(cores: Iterable[torch.Tensor], lr: float, max_ratio: float) -> tuple[int, int]:
    """Shrink each core's ``.grad`` so that a plain step ``lr * grad`` moves the core by at most
    ``max_ratio`` of its own norm (a per-core trust region, scale-free like LARS's trust ratio).

    Why: the preconditioned update keeps the reconstructed weight's first-order move equal to a dense
    step, but a core is a factor of a product: a step comparable to the core itself leaves the linear
    regime, and with momentum such steps can run away (the weight's norm grows, then the loss). The
    direction of each core's update is kept; only oversized steps shrink.

    Returns:
        ``(limited, total)``: how many cores with a gradient had their step shrunk, out of how many.
    """
    if not (lr > 0 and max_ratio > 0):
        raise InputError(f"lr and max_ratio must be > 0, got {lr} and {max_ratio}")
    limited = total = 0
    for c in cores:
        if c.grad is None:
            continue
        total += 1
        cap = max_ratio * float(c.norm()) / lr
        norm = float(c.grad.norm())
        if norm > cap:
            c.grad.mul_(cap / norm)
            limited += 1
    return limited, total


class RingPreconditioner:
    """Rewrites the gradients of every tensor-ring core in ``modules`` so that any optimiser's step
    on the cores moves the reconstructed weights like a step on the dense weights (module docs).

    Call it between ``backward()`` and the optimiser's ``step()``; momentum, weight decay and
    learning-rate schedules of the base optimiser then act on the preconditioned gradients::

        pre = RingPreconditioner(model)
        loss.backward()
        pre.step()              # rewrites .grad of the TR cores in place
        optimizer.step()

    Args:
        modules: a module or modules searched for ``TRLinear`` / ``CrossLayerTR`` submodules.
        method, damping, rel_damping, max_iter, tol: see :func:`precondition_ring_grads`.

    Other parameters (biases, scales) are left alone. No state is kept between steps beyond the
    settings (``state_dict`` / ``load_state_dict``); ``last_stats`` holds the mean and largest
    number of conjugate-gradient iterations and the largest residual of the latest step.
    """

    def __init__(
        self,
        modules: nn.Module | Iterable[nn.Module],
        method: str = "gauss_newton",
        damping: float = 1e-3,
        rel_damping: float = 1e-6,
        max_iter: int = 10,
        tol: float = 1e-3,
    ):
        from trkit.nn.cross_layer import CrossLayerTR
        from trkit.nn.linear import TRLinear

        if isinstance(modules, nn.Module):
            modules = [modules]
        found: list[nn.Module] = []
        for root in modules:
            if not isinstance(root, nn.Module):
                raise InputTypeError(f"RingPreconditioner expects nn.Module objects, got {type(root).__name__}")
            found.extend(m for m in root.modules() if isinstance(m, (TRLinear, CrossLayerTR)) and m not in found)
        if not found:
            raise InputError("RingPreconditioner found no TRLinear or CrossLayerTR module")
        self.modules = found
        self.last_stats: dict = {}
        self.load_state_dict(
            {"method": method, "damping": damping, "rel_damping": rel_damping, "max_iter": max_iter, "tol": tol}
        )

    @torch.no_grad()
    def step(self) -> None:
        """Replace each core's ``.grad`` by its preconditioned update (in a ring where some core
        has a gradient, cores without one count as zero gradient)."""
        iters, residuals = [], []
        for module in self.modules:
            cores = ring_cores(module)
            grads = [c.grad for c in cores]
            if all(g is None for g in grads):
                continue
            info: dict = {}
            updates = precondition_ring_grads(
                cores, grads, self.method, self.damping, self.rel_damping, self.max_iter, self.tol, info
            )
            if info:
                iters.append(info["iterations"])
                residuals.append(info["residual"])
            for c, u in zip(cores, updates):
                if c.grad is None:
                    c.grad = u
                else:
                    c.grad.copy_(u)
        self.last_stats = (
            {
                "cg_iterations_mean": sum(iters) / len(iters),
                "cg_iterations_max": max(iters),
                "cg_residual_max": max(residuals),
            }
            if iters
            else {}
        )

    def state_dict(self) -> dict:
        return {
            "method": self.method,
            "damping": self.damping,
            "rel_damping": self.rel_damping,
            "max_iter": self.max_iter,
            "tol": self.tol,
        }

    def load_state_dict(self, state: dict) -> None:
        method = state["method"]
        damping, rel, tol, max_iter = (float(state[k]) for k in ("damping", "rel_damping", "tol", "max_iter"))
        if method not in _METHODS:
            raise InputError(f"method must be one of {_METHODS}, got {method!r}")
        if not (damping >= 0.0 and rel >= 0.0 and tol >= 0.0):
            raise InputError(f"damping, rel_damping and tol must be >= 0, got {damping}, {rel}, {tol}")
        if max_iter < 1 or max_iter != int(max_iter):
            raise InputError(f"max_iter must be a positive int, got {state['max_iter']!r}")
        self.method, self.damping, self.rel_damping, self.tol, self.max_iter = method, damping, rel, tol, int(max_iter)
