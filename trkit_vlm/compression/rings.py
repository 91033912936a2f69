"""Three-core tensor rings ``T[i, j, l] = sum G_in[a, i, b] G_out[b, j, c] G_layer[c, l, a]`` (the layout of
``CrossLayerTR``): TR-SVD starts, warm-started ALS sweeps, and growing one bond by one slice."""

from __future__ import annotations

import warnings

import torch

from trkit.decompose import tr_svd

__all__ = ["svd_ring", "als", "grow", "reconstruct"]

# The cyclic views of the target under which core k is the first one.
_ROTATIONS = ((0, 1, 2), (1, 2, 0), (2, 0, 1))
# Relative ridge of the ALS normal equations (keeps an unused slice from making them singular).
_ALS_RIDGE = 1e-10


def _pair(nxt: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """``sum_c nxt[b, j, c] after[c, l, a]`` as ``(a, b, j, l)`` (two matrix products; no einsum planning)."""
    rb, nj, rc = nxt.shape
    _, nl, ra = after.shape
    m = (nxt.reshape(rb * nj, rc) @ after.reshape(rc, nl * ra)).reshape(rb, nj, nl, ra)
    return m.permute(3, 0, 1, 2)


def reconstruct(cores: list[torch.Tensor]) -> torch.Tensor:
    """The tensor ``(d_in, d_out, L)`` of three cores."""
    g_in, g_out, g_layer = cores
    ra, ni, rb = g_in.shape
    m = _pair(g_out, g_layer)  # (a, b, j, l)
    return (g_in.permute(1, 0, 2).reshape(ni, ra * rb) @ m.reshape(ra * rb, -1)).reshape(ni, *m.shape[2:])


def svd_ring(target: torch.Tensor, ranks=None, tol: float | None = None) -> list[torch.Tensor]:
    """TR-SVD cores of ``target`` at ``ranks`` (clamped to what the shape holds) or at relative error ``tol``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ranks the shape cannot hold are clamped: that is fine here
        ring = tr_svd(target, rank=list(ranks)) if ranks is not None else tr_svd(target, tol=tol)
    return [c.to(target.dtype) for c in ring.cores]


def _update(t: torch.Tensor, nxt: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Least-squares first core of ``t[i, j, l] ~ sum X[a, i, b] nxt[b, j, c] after[c, l, a]``."""
    m = _pair(nxt, after)
    ra, rb = m.shape[:2]
    design = m.reshape(ra * rb, -1)
    gram = design @ design.T
    gram = gram + (_ALS_RIDGE * float(torch.trace(gram)) / gram.shape[0]) * torch.eye(gram.shape[0], dtype=gram.dtype)
    rhs = t.reshape(t.shape[0], -1) @ design.T
    x = torch.linalg.solve(gram, rhs.T).T
    return x.reshape(t.shape[0], ra, rb).permute(1, 0, 2).contiguous()


def als(target: torch.Tensor, cores: list[torch.Tensor], sweeps: int, start: int = 0) -> list[torch.Tensor]:
    """``sweeps`` rounds of alternating least squares on the three cores, the first update on core ``start``."""
    cores = list(cores)
    for step in range(3 * sweeps):
        k = (start + step) % 3
        cores[k] = _update(target.permute(*_ROTATIONS[k]), cores[(k + 1) % 3], cores[(k + 2) % 3])
    return cores


def grow(cores: list[torch.Tensor], bond: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The cores with one more slice on ``bond`` (the left bond of core ``bond``): zero in that core and
    random (at the size of its entries) in the core before, so the ring is unchanged until ALS moves it.
    Start the ALS sweep at core ``bond``: updated first, the zero half is solved against the random one."""
    cores = list(cores)
    c = cores[bond]
    cores[bond] = torch.cat([c, torch.zeros(1, *c.shape[1:], dtype=c.dtype)], dim=0)
    prev = (bond - 1) % 3
    c = cores[prev]
    rms = float(c.pow(2).mean().sqrt()) or 1.0
    new = rms * torch.randn(*c.shape[:2], 1, generator=generator, dtype=c.dtype)
    cores[prev] = torch.cat([c, new], dim=2)
    return cores
