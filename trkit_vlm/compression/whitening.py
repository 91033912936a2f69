"""How a projection's errors reach the adapter output: the mode weights that make a plain tensor-ring fit
output-aware.

The error a compressed projection ``W'`` causes on the calibration outputs is approximated by a
Kronecker-factored quadratic form (as in data-aware compression methods and K-FAC)::

    E(W') ~ sum_k lam_k^2 || A^(1/2) (W'_k - W_k) B^(1/2) ||_F^2

``A`` is the Gram matrix of the projection's inputs (pooled over layers), ``B`` the mean outer
product of the Jacobian from its output to the body output ``y`` (identity for an up projection; the
ReLU masks and later projections otherwise), and ``lam_k`` the weight of pair ``k`` (its input and
output energy, in block-output units). All three act on one mode of the stacked tensor each, so
fitting the whitened stack ``lam_k A^(1/2) W_k B^(1/2)`` with TR-SVD and undoing the whitening on the
in-, out- and layer cores gives a ring of the same ranks: whitening keeps the tensor-ring structure.
A ridge (:func:`whitening_from`) keeps the directions the calibration batch does not visit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trkit_vlm.compression.projections import PROJECTION_TOWERS, TOWER_PATH, OutputMeter

__all__ = ["Whitening", "whitening", "output_gram", "balanced", "whitening_from"]


@dataclass
class Whitening:
    """Mode weights of one projection: ``left`` (d_in, d_in) and ``right`` (d_out, d_out) symmetric square
    roots with their inverses, ``layer`` (L,) positive."""

    left: torch.Tensor
    left_inv: torch.Tensor
    right: torch.Tensor
    right_inv: torch.Tensor
    layer: torch.Tensor

    def apply(self, w: torch.Tensor) -> torch.Tensor:
        """Whitened stack ``lam_k A^(1/2) W_k B^(1/2)``, laid out ``(d_in, d_out, L)`` as the ring's modes."""
        return (self.layer[:, None, None] * (self.left @ w @ self.right)).permute(1, 2, 0).contiguous()

    def unwhiten(self, cores: list[torch.Tensor]) -> list[torch.Tensor]:
        """Cores ``[G_in, G_out, G_layer]`` of the whitened ring -> cores of the fit of the stack itself,
        balanced (equal Frobenius norms, same product): a fine-tune of the ring starts with gradients of
        comparable size on every core."""
        g_in, g_out, g_layer = cores
        return balanced(
            [
                torch.einsum("ij,ajb->aib", self.left_inv, g_in),
                torch.einsum("bjc,jk->bkc", g_out, self.right_inv),
                g_layer / self.layer[None, :, None],
            ]
        )


def balanced(cores: list[torch.Tensor]) -> list[torch.Tensor]:
    """The cores rescaled to equal Frobenius norms; their ring product is unchanged."""
    norms = [float(torch.linalg.vector_norm(c)) for c in cores]
    if min(norms) == 0.0:
        return cores
    mean_log = sum(math.log(n) for n in norms) / len(norms)
    return [c * math.exp(mean_log - math.log(n)) for c, n in zip(cores, norms)]


def _sqrt_pair(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    e, v = torch.linalg.eigh(c)
    e = e.clamp_min(torch.finfo(c.dtype).tiny)
    return (v * e.sqrt()) @ v.T, (v / e.sqrt()) @ v.T


def _normalised(c: torch.Tensor, ridge: float) -> torch.Tensor:
    """``c`` scaled to mean eigenvalue 1, blended with the identity (``ridge`` in [0, 1])."""
    n = c.shape[0]
    c = c * (n / max(float(torch.trace(c)), 1e-300))
    return (1.0 - ridge) * c + ridge * torch.eye(n, dtype=c.dtype)


def output_gram(meter: OutputMeter, projection: str, tower: str, k: int) -> torch.Tensor:
    """Mean over tokens of ``J J^T``, ``J`` the Jacobian of the body output w.r.t. ``projection``'s output."""
    down, shared, up = TOWER_PATH[tower]
    a = meter.acts[tower][k]
    w_up = meter.proj[up][0][k]
    if projection == up:
        return torch.eye(w_up.shape[1], dtype=w_up.dtype)
    m2 = (a["a_shared"] > 0).to(w_up.dtype)  # (N, h)
    g = w_up @ w_up.T  # (h, h)
    if projection == shared:
        return (m2.T @ m2) / m2.shape[0] * g
    m1 = (a["a_down"] > 0).to(w_up.dtype)
    j = meter.proj[shared][0][k][None] * m2[:, None, :]  # W_s diag(m2) per token: (N, h, h)
    inner = j @ g @ j.transpose(1, 2)  # (N, h, h)
    return torch.einsum("ni,nj,nij->ij", m1, m1, inner) / m1.shape[0]


def whitening(meter: OutputMeter, projection: str, ridge: float = 0.01) -> Whitening:
    """The mode weights of ``projection`` from the meter's calibration activations (see the module doc)."""
    w, _ = meter.proj[projection]
    n_layers, d_in, d_out = w.shape
    left = torch.zeros(d_in, d_in, dtype=w.dtype)
    right = torch.zeros(d_out, d_out, dtype=w.dtype)
    layer = torch.zeros(n_layers, dtype=w.dtype)
    for tower in PROJECTION_TOWERS[projection]:
        unit = meter.scale**2 / max(meter.reference[tower], 1e-300)
        for k in range(n_layers):
            x = meter.acts[tower][k][projection]
            a, b = x.T @ x, output_gram(meter, projection, tower, k)
            ta, tb = float(torch.trace(a)), float(torch.trace(b))
            energy = unit * ta * tb / (d_in * d_out)
            layer[k] += energy
            left += a * (energy / max(ta, 1e-300))
            right += b * (energy / max(tb, 1e-300))
    return whitening_from(left, right, layer, ridge)


def whitening_from(left: torch.Tensor, right: torch.Tensor, layer: torch.Tensor, ridge: float) -> Whitening:
    """The whitening of an input Gram ``left``, an output Gram ``right`` and layer energies ``layer``, each
    normalised to mean 1 and blended with the identity by ``ridge ** (1/3)``: the three weights multiply,
    so a direction no calibration token visits (in any mode) keeps the weight ``ridge`` of a plain
    weight error, and its fitted weights stay near the trained ones instead of growing without bound."""
    share = ridge ** (1.0 / 3.0)
    layer = layer * (layer.shape[0] / max(float(layer.sum()), 1e-300))
    left_h, left_ih = _sqrt_pair(_normalised(left, share))
    right_h, right_ih = _sqrt_pair(_normalised(right, share))
    return Whitening(left_h, left_ih, right_h, right_ih, ((1.0 - share) * layer + share).sqrt())
