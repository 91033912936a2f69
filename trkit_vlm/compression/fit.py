"""Candidate fits of one stacked projection: whitened tensor rings measured on the calibration outputs, and
the ladder of per-bond ranks the budget is spent on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trkit.nn.bonds import ring_params
from trkit_vlm.compression import rings
from trkit_vlm.compression.projections import PROJECTION_TOWERS, OutputMeter
from trkit_vlm.compression.whitening import Whitening

__all__ = ["Candidate", "candidate", "fit_at", "rank_ladder", "EXACT_TOL"]

# Below this output error (relative to the calibration reference) a fit counts as exact.
EXACT_ERROR = 1e-18
# TR-SVD tolerance of the exact ring.
EXACT_TOL = 1e-12
# ALS sweeps after each one-slice step of the ladder (warm-started from the step before).
LADDER_SWEEPS = 4


@dataclass
class Candidate:
    """One fit of a projection: cores ``[G_in, G_out, G_layer]`` of the stack itself, its bias, its size
    (cores and bias), its output error alone (``tower_errors`` summed) and its whitened cores."""

    ranks: tuple[int, int, int]
    cores: list[torch.Tensor]
    bias: torch.Tensor
    n_params: int
    output_error: float = 0.0
    tower_errors: dict[str, float] = field(default_factory=dict)
    whitened: list[torch.Tensor] = field(default_factory=list, repr=False)
    _weights: torch.Tensor | None = field(default=None, repr=False)

    def weights(self) -> torch.Tensor:
        """The fitted stack ``(L, d_in, d_out)``."""
        if self._weights is None:
            self._weights = rings.reconstruct(self.cores).permute(2, 0, 1)
        return self._weights


def _mean_error(meter: OutputMeter, projection: str, dw: torch.Tensor) -> torch.Tensor:
    """Per layer, the mean over calibration tokens of ``x (W - W')``: ``(L, d_out)``."""
    out = torch.zeros(dw.shape[0], dw.shape[2], dtype=dw.dtype)
    for k in range(dw.shape[0]):
        mean_x = torch.cat([meter.acts[t][k][projection] for t in PROJECTION_TOWERS[projection]]).mean(dim=0)
        out[k] = mean_x @ dw[k]
    return out


def candidate(
    meter: OutputMeter, projection: str, wh: Whitening, whitened: list[torch.Tensor], correct_bias: bool = True
) -> Candidate:
    """The fit given by the whitened cores, unwhitened and measured on the meter.

    ``correct_bias`` moves each layer's bias by the mean calibration error of the fitted weights (the
    least-squares bias for them); otherwise MMA's biases are kept exactly."""
    w, b = meter.proj[projection]
    n_layers, d_in, d_out = w.shape
    ranks = tuple(int(c.shape[0]) for c in whitened)
    cand = Candidate(ranks, wh.unwhiten(whitened), b.clone(), ring_params((d_in, d_out, n_layers), ranks) + b.numel())
    cand.whitened = whitened
    if correct_bias:
        cand.bias = b + _mean_error(meter, projection, w - cand.weights())
    cand.tower_errors = meter.tower_errors({projection: (cand.weights(), cand.bias)})
    cand.output_error = sum(cand.tower_errors.values())
    return cand


def fit_at(
    meter: OutputMeter,
    projection: str,
    wh: Whitening,
    ranks=None,
    tol: float = EXACT_TOL,
    correct_bias: bool = True,
) -> Candidate:
    """The whitened TR-SVD fit of ``projection`` at ``ranks``, or (``ranks=None``) at relative error ``tol`` of
    the whitened stack (default: the exact ring)."""
    target = wh.apply(meter.proj[projection][0])
    return candidate(meter, projection, wh, rings.svd_ring(target, ranks, tol), correct_bias)


def _redundant(ranks: list[int], modes: tuple[int, int, int]) -> bool:
    """Ranks a ring of these modes cannot use: ``r_k <= r_(k-1) n_(k-1)`` and ``r_k <= n_k r_(k+1)``."""
    return any(ranks[k] > min(ranks[k - 1] * modes[k - 1], modes[k] * ranks[(k + 1) % 3]) for k in range(3))


def rank_ladder(
    meter: OutputMeter, projection: str, wh: Whitening, max_params: int, correct_bias: bool = True, seed: int = 0
) -> list[Candidate]:
    """Candidate fits of ``projection`` with growing per-bond ranks, cheapest first, each lowering the error.

    From the TR-SVD ring of ranks (1, 1, 1), each step adds one slice to the bond whose slice lowers the
    output error most per added parameter (every trial: the ring grown by a slice, then a few ALS sweeps
    on the whitened stack, warm-started), until the error is exact or the next step would pass
    ``max_params`` or the size of the exact ring (whitened TR-SVD at tolerance ``EXACT_TOL``), which is
    added when it fits.
    """
    w = meter.proj[projection][0]
    target = wh.apply(w)
    modes = tuple(int(n) for n in target.shape)
    g = torch.Generator().manual_seed(seed)
    exact = fit_at(meter, projection, wh, None, EXACT_TOL, correct_bias)
    limit = min(max_params, exact.n_params)
    start = rings.als(target, rings.svd_ring(target, (1, 1, 1)), LADDER_SWEEPS)
    current = candidate(meter, projection, wh, start, correct_bias)
    ladder = [current]
    while current.output_error > EXACT_ERROR:
        best = None
        for bond in range(3):
            ranks = list(current.ranks)
            ranks[bond] += 1
            extra = ring_params(modes, ranks) - ring_params(modes, current.ranks)
            if _redundant(ranks, modes) or current.n_params + extra > limit:
                continue
            grown = rings.als(target, rings.grow(current.whitened, bond, g), LADDER_SWEEPS, start=bond)
            cand = candidate(meter, projection, wh, grown, correct_bias)
            gain = (current.output_error - cand.output_error) / extra
            if best is None or gain > best[0]:
                best = (gain, cand)
        if best is None:
            break
        current = best[1]
        ladder.append(current)
    if exact.n_params <= max_params:
        ladder.append(exact)
    front, lowest = [], float("inf")
    for cand in sorted(ladder, key=lambda c: (c.n_params, c.output_error)):
        if cand.output_error < lowest:
            front.append(cand)
            lowest = cand.output_error
    return front
