"""``compress_mma``: the AdaRing adapter closest to a trained MMA set, output-aware, under a budget.

Each of MMA's five projections (text down, image down, shared, text up, image up) is stacked over the
adapted layers into a ``(L, d_in, d_out)`` tensor and fitted as a cross-layer tensor ring
(``trkit.nn.CrossLayerTR``): whitened by how its errors reach the adapted blocks' outputs on a
calibration batch (:mod:`trkit_vlm.compression.fit`), so parameters go where the outputs need them.
Every projection gets a ladder of fits with growing per-bond ranks; a greedy knapsack spends the budget
on the upgrades that lower the summed output error most per parameter. Without calibration data the
inputs are N(0, I) and errors are relative to the adapter's own output (data-free).
"""

from __future__ import annotations

import torch

from trkit.errors import InputError
from trkit_vlm.adapters.adaring.config import PROJECTIONS, AdaRingConfig
from trkit_vlm.adapters.mma.config import mma_param_count
from trkit_vlm.compression.allocate import allocate
from trkit_vlm.compression.calibration import Calibration, gaussian_calibration
from trkit_vlm.compression.compensate import compensate as compensate_errors
from trkit_vlm.compression.fit import Candidate, fit_at, rank_ladder
from trkit_vlm.compression.projections import PROJECTION_TOWERS, OutputMeter, mma_projections
from trkit_vlm.compression.result import CompressionResult
from trkit_vlm.compression.source import MMASource, read_mma_source
from trkit_vlm.compression.whitening import Whitening, whitening
from trkit_vlm.models import tower_info_from_config

__all__ = ["compress_mma"]

# The one learnable branch scale of a one-branch AdaRing adapter.
_BRANCH_SCALES = 1


def _identity_whitening(w: torch.Tensor) -> Whitening:
    n_layers, d_in, d_out = w.shape
    eye_in, eye_out = torch.eye(d_in, dtype=w.dtype), torch.eye(d_out, dtype=w.dtype)
    return Whitening(eye_in, eye_in, eye_out, eye_out, torch.ones(n_layers, dtype=w.dtype))


def compress_mma(
    source,
    budget: float | None = 0.1,
    tol: float | None = None,
    towers: dict | None = None,
    model_name: str | None = None,
    calibration: Calibration | None = None,
    scale: float | None = None,
    ridge: float = 0.01,
    correct_bias: bool = True,
    compensate: bool = True,
) -> CompressionResult:
    """The AdaRing adapter (one branch, per-projection, per-bond TR ranks) closest to a trained MMA set.

    Args:
        source: a run folder of an MMA run, a trkit MMA adapter file (``.safetensors``), an official
            MMA checkpoint (``.pth.tar``/``.pt``), an MMA state dict, or a read :class:`MMASource`.
        budget: total parameters as a fraction of the MMA set's, biases included (0.1 = 10%). Above the
            size of the exact fit the exact fit is returned. Ignored when ``tol`` is given.
        tol: instead of a budget, fit every projection's stacked weights to this relative error.
        towers: tower widths/depths (``trkit_vlm.models.tower_info``); or ``model_name`` (read from its
            open_clip config). Default: widths from the checkpoint, depth = last adapted layer.
        calibration: adapter inputs on real data (:func:`~trkit_vlm.compression.collect_calibration`);
            None: data-free (N(0, I) inputs).
        scale: MMA's output scale, for sources that do not store it (official checkpoints; default 0.001).
        ridge: share of the identity in the whitening (0: calibration only; 1: plain weight error).
        correct_bias: move each bias by the mean calibration error of its fitted weights.
        compensate: refit the shared and up projections on the compressed projections' activations
            (:mod:`trkit_vlm.compression.compensate`); ranks and parameters unchanged.
    Returns:
        a :class:`CompressionResult` (``.apply(model)``, ``.save(path)``, ``.write(folder)``, ``.table()``).
    """
    if tol is None and budget is None:
        raise InputError("give budget (fraction of MMA's parameters) or tol (relative error per projection)")
    if tol is None and not float(budget) > 0:
        raise InputError(f"budget must be a positive fraction of MMA's parameters, got {budget}")
    if tol is not None and not 0 < float(tol) < 1:
        raise InputError(f"tol must be in (0, 1), got {tol}")
    if not 0 <= float(ridge) <= 1:
        raise InputError(f"ridge must be in [0, 1], got {ridge}")
    src = source if isinstance(source, MMASource) else read_mma_source(source, scale)
    mma_cfg = src.config
    proj, tl, il = mma_projections(src.state_dict)
    dt, dv, h = proj["down_text"][0].shape[1], proj["down_image"][0].shape[1], mma_cfg.hidden
    if towers is None and model_name is not None:
        towers = tower_info_from_config(model_name)
    if towers is None:
        towers = {"text": {"width": dt, "depth": tl[-1]}, "image": {"width": dv, "depth": il[-1]}}
    if (towers["text"]["width"], towers["image"]["width"]) != (dt, dv):
        raise InputError(
            f"checkpoint has text/image widths ({dt}, {dv}); the given backbone has "
            f"({towers['text']['width']}, {towers['image']['width']})"
        )
    if calibration is None:
        calibration = gaussian_calibration({"text": dt, "image": dv}, len(tl))
    _check_calibration(calibration, {"text": dt, "image": dv}, len(tl))
    meter = OutputMeter(proj, calibration, mma_cfg.scale)
    n_mma = mma_param_count(dt, dv, h, len(tl))
    if tol is not None:
        fits = {p: fit_at(meter, p, _identity_whitening(proj[p][0]), tol=tol, correct_bias=False) for p in PROJECTIONS}
    else:
        limit = int(float(budget) * n_mma)
        ladders = {
            p: rank_ladder(meter, p, whitening(meter, p, ridge), limit, correct_bias=correct_bias) for p in PROJECTIONS
        }
        pick = allocate(ladders, limit, fixed=_BRANCH_SCALES)
        fits = {p: ladders[p][i] for p, i in pick.items()}
        if compensate:
            fits = compensate_errors(meter, fits, ridge)
    config = AdaRingConfig(
        hidden=h,
        ranks=[{p: list(fits[p].ranks) for p in PROJECTIONS}],
        bias="all",
        init="kaiming",
        text_layers=mma_cfg.text_layers,
        image_layers=mma_cfg.image_layers,
        scale=mma_cfg.scale,
    )
    state = _adaring_state(config, towers, fits)
    all_errors = meter.tower_errors({p: (c.weights(), c.bias) for p, c in fits.items()})
    return CompressionResult(
        config=config,
        state_dict=state,
        towers=towers,
        projections={p: _projection_report(p, proj[p][0], fits[p]) for p in PROJECTIONS},
        n_params=sum(v.numel() for v in state.values()),
        mma_params=n_mma,
        output_rel_error={t: e**0.5 for t, e in all_errors.items()},
        output_reference="block output" if calibration.block_energy is not None else "adapter output",
        settings={
            "source": src.description,
            "budget": budget if tol is None else None,
            "tol": tol,
            "scale": mma_cfg.scale,
            "scale_origin": src.scale_origin,
            "calibration": calibration.source,
            "calibration_tokens": calibration.n_tokens(),
            "ridge": ridge,
            "correct_bias": correct_bias,
            "compensate": compensate and tol is None,
        },
    )


def _check_calibration(cal: Calibration, widths: dict[str, int], n_pairs: int) -> None:
    for tower, hs in cal.inputs.items():
        if len(hs) != n_pairs or any(h.shape[1] != widths[tower] for h in hs):
            raise InputError(
                f"calibration for the {tower} tower has {len(hs)} layers of width "
                f"{sorted({h.shape[1] for h in hs})}; the MMA set has {n_pairs} of width {widths[tower]}"
            )


def _adaring_state(config: AdaRingConfig, towers: dict, fits: dict[str, Candidate]) -> dict[str, torch.Tensor]:
    aset = config.build(towers)
    with torch.no_grad():
        for p in PROJECTIONS:
            target = aset.branches[0][p]
            for a, c in zip(target.cores, fits[p].cores):
                a.copy_(c)
            target.bias.copy_(fits[p].bias)
    return {k: v.detach().float().clone() for k, v in aset.state_dict().items()}


def _projection_report(projection: str, w: torch.Tensor, fit: Candidate) -> dict:
    dw = fit.weights() - w
    layer = torch.linalg.matrix_norm(dw) / torch.linalg.matrix_norm(w).clamp_min(1e-300)
    n_layers, d_in, d_out = w.shape
    return {
        "ranks": list(fit.ranks),
        "n_params": fit.n_params,
        "dense_params": n_layers * d_out * (d_in + 1),
        "weight_rel_error": float(torch.linalg.vector_norm(dw) / torch.linalg.vector_norm(w).clamp_min(1e-300)),
        "layer_weight_rel_errors": [float(e) for e in layer],
        "output_rel_error": {t: fit.tower_errors[t] ** 0.5 for t in PROJECTION_TOWERS[projection]},
    }
