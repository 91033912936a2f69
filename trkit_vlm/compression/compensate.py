"""Error compensation: refit the later projections on the inputs the compressed earlier ones produce.

After the budget is allocated, the shared projection and then each up projection are fitted again at
their chosen ranks, this time to reproduce the trained body's pre-activation (shared) or output (up)
from the activations the *compressed* projections before them give, as sequential, layer-by-layer
data-aware compression methods do. For each layer the least-squares weights on the calibration
tokens, pulled toward the trained weights by a ridge, are the new target; it is fitted with the same
whitening as the first fits (input Gram of the compressed activations, output Jacobian, layer weights)
and the biases are set to their least-squares values for the fitted weights.
"""

from __future__ import annotations

import torch

from trkit_vlm.compression import rings
from trkit_vlm.compression.fit import Candidate, candidate
from trkit_vlm.compression.projections import PROJECTION_TOWERS, TOWER_PATH, OutputMeter
from trkit_vlm.compression.whitening import output_gram, whitening_from

__all__ = ["compensate"]

# Refit order: each projection's inputs come from projections already final.
ORDER = ("shared", "up_text", "up_image")
# ALS sweeps polishing the TR-SVD start of a refit.
REFIT_SWEEPS = 10
# Least pull toward the trained weights (relative), so calibration inputs of low rank leave a solvable system.
_MIN_PULL = 1e-8


def _compressed_input(meter: OutputMeter, fits: dict[str, Candidate], projection: str, tower: str, k: int):
    path = TOWER_PATH[tower]
    x = meter.acts[tower][k][path[0]]
    for q in path[: path.index(projection)]:
        x = torch.relu(torch.addmm(fits[q].bias[k], x, fits[q].weights()[k]))
    return x


def refit(meter: OutputMeter, fits: dict[str, Candidate], projection: str, ridge: float) -> Candidate:
    """``projection`` fitted again at its chosen ranks against the compressed inputs (see the module doc)."""
    w, b = meter.proj[projection]
    n_layers, d_in, d_out = w.shape
    target_w = torch.empty_like(w)
    left = torch.zeros(d_in, d_in, dtype=w.dtype)
    right = torch.zeros(d_out, d_out, dtype=w.dtype)
    layer = torch.zeros(n_layers, dtype=w.dtype)
    samples: list[list[tuple[torch.Tensor, torch.Tensor, float]]] = []
    for k in range(n_layers):
        gram = torch.zeros(d_in + 1, d_in + 1, dtype=w.dtype)
        rhs = torch.zeros(d_in + 1, d_out, dtype=w.dtype)
        samples.append([])
        for tower in PROJECTION_TOWERS[projection]:
            x = _compressed_input(meter, fits, projection, tower, k)
            target = torch.addmm(b[k], meter.acts[tower][k][projection], w[k])  # the trained (pre-)activation
            out_gram = output_gram(meter, projection, tower, k)
            weight = meter.scale**2 / max(meter.reference[tower], 1e-300) * float(torch.trace(out_gram)) / d_out
            xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
            gram += weight * xa.T @ xa
            rhs += weight * xa.T @ target
            a = x.T @ x
            layer[k] += weight * float(torch.trace(a))
            left += weight * a
            right += out_gram * (weight * float(torch.trace(a)) / max(float(torch.trace(out_gram)), 1e-300))
            samples[k].append((x, target, weight))
        strength = max(ridge, _MIN_PULL) * float(torch.trace(gram[:d_in, :d_in])) / d_in
        if not strength > 0:  # no calibration signal reaches this layer (e.g. zero up weights): keep it
            target_w[k] = w[k]
            continue
        pull = torch.zeros_like(gram)
        pull[:d_in, :d_in] = torch.eye(d_in, dtype=w.dtype) * strength
        prior = torch.cat([w[k], b[k][None]])
        target_w[k] = torch.linalg.solve(gram + pull, rhs + pull @ prior)[:d_in]
    wh = whitening_from(left, right, layer, ridge)
    target = wh.apply(target_w)
    whitened = rings.als(target, rings.svd_ring(target, fits[projection].ranks), REFIT_SWEEPS)
    cand = candidate(meter, projection, wh, whitened, correct_bias=False)
    fitted = cand.weights()
    bias = torch.empty_like(b)
    for k in range(n_layers):
        mass = sum(wt * x.shape[0] for x, _, wt in samples[k])
        if not mass > 0:
            bias[k] = b[k]
            continue
        bias[k] = sum(wt * (t - x @ fitted[k]).sum(dim=0) for x, t, wt in samples[k]) / mass
    cand.bias = bias
    return cand


def compensate(meter: OutputMeter, fits: dict[str, Candidate], ridge: float = 0.01) -> dict[str, Candidate]:
    """``fits`` with the shared and up projections refitted in turn (:func:`refit`); a refit is kept only
    when it lowers the total calibration output error. Ranks and parameter counts do not change."""
    fits = dict(fits)

    def total(f):
        return meter.error({p: (c.weights(), c.bias) for p, c in f.items()})

    best = total(fits)
    for projection in ORDER:
        trial = {**fits, projection: refit(meter, fits, projection, ridge)}
        err = total(trial)
        if err < best:
            fits, best = trial, err
    for p, c in fits.items():
        c.tower_errors = meter.tower_errors({p: (c.weights(), c.bias)})
        c.output_error = sum(c.tower_errors.values())
    return fits
