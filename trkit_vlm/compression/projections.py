"""MMA's five projections as stacked tensors, the adapter body computed from them, and the output error
of a changed projection on calibration inputs.

Convention: a projection is ``(W (L, d_in, d_out), b (L, d_out))`` with output ``x @ W[k] + b[k]`` at
adapted-layer pair ``k``. The body of tower ``t`` at pair ``k`` is MMA's
``y = relu(relu(h W_down + b) W_shared + b) W_up + b``; the block adds ``scale * y`` to its output.
"""

from __future__ import annotations

import torch

from trkit.errors import InputError
from trkit_vlm.adapters.io import mma_config_from_state_dict
from trkit_vlm.adapters.mma.layer import shared_key
from trkit_vlm.compression.calibration import Calibration

__all__ = ["PROJECTION_TOWERS", "TOWER_PATH", "mma_projections", "OutputMeter"]

Projections = dict[str, tuple[torch.Tensor, torch.Tensor]]

# Which towers read each projection, and each tower's path through the projections.
PROJECTION_TOWERS = {
    "down_text": ("text",),
    "down_image": ("image",),
    "shared": ("text", "image"),
    "up_text": ("text",),
    "up_image": ("image",),
}
TOWER_PATH = {"text": ("down_text", "shared", "up_text"), "image": ("down_image", "shared", "up_image")}


def mma_projections(sd: dict[str, torch.Tensor]) -> tuple[Projections, list[int], list[int]]:
    """Stack an MMA state dict's projections: ``{name: (W (L, d_in, d_out), b (L, d_out))}`` (float64) in the
    ``x @ W + b`` convention, plus the text and image layer lists."""
    cfg = mma_config_from_state_dict(sd)
    tl = list(range(cfg.text_layers[0], cfg.text_layers[1] + 1))
    il = list(range(cfg.image_layers[0], cfg.image_layers[1] + 1))
    if len(tl) != len(il):
        raise InputError(f"MMA text layers {tl} and image layers {il} differ in number")
    keys = {
        "down_text": [f"text_adapter.{t}.down.0" for t in tl],
        "down_image": [f"visual_adapter.{v}.down.0" for v in il],
        "shared": [f"shared_adapter.{shared_key(t, v)}.0" for t, v in zip(tl, il)],
        "up_text": [f"text_adapter.{t}.up" for t in tl],
        "up_image": [f"visual_adapter.{v}.up" for v in il],
    }
    out = {}
    for p, ks in keys.items():
        missing = [k + suffix for k in ks for suffix in (".weight", ".bias") if k + suffix not in sd]
        if missing:
            raise InputError(f"MMA state dict lacks {missing[:4]}")
        w = torch.stack([sd[k + ".weight"].t() for k in ks]).double()
        b = torch.stack([sd[k + ".bias"] for k in ks]).double()
        out[p] = (w, b)
    return out, tl, il


def _linear(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor], k: int) -> torch.Tensor:
    return torch.addmm(wb[1][k], x, wb[0][k])


class OutputMeter:
    """Output errors of changed projections against the trained ones, on calibration inputs.

    For tower ``t`` the error is ``sum_k ||scale (y'_k - y_k)||^2`` over the calibration tokens, divided by
    the tower's block-output energy (data calibration: the share of the blocks' outputs that changes) or
    by ``sum_k ||scale y_k||^2`` (data-free: relative to the adapter's own output). The activations of
    the trained body are computed once; a changed projection is re-run from its own input on.
    """

    def __init__(self, projections: Projections, calibration: Calibration, scale: float):
        self.proj, self.cal, self.scale = projections, calibration, float(scale)
        self.acts: dict[str, list[dict[str, torch.Tensor]]] = {}
        for tower, hs in calibration.inputs.items():
            self.acts[tower] = [self.activations(projections, tower, k, h) for k, h in enumerate(hs)]
        energy = calibration.block_energy
        self.reference = {
            t: (energy[t] if energy is not None else sum(float(a["y"].pow(2).sum()) for a in acts) * self.scale**2)
            for t, acts in self.acts.items()
        }

    @staticmethod
    def activations(proj: Projections, tower: str, k: int, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inputs of each projection on ``tower``'s path at pair ``k`` (keyed by projection name), the
        pre-activations ``a_down`` / ``a_shared`` and the body output ``y``."""
        down, shared, up = TOWER_PATH[tower]
        a1 = _linear(h, proj[down], k)
        z = torch.relu(a1)
        a2 = _linear(z, proj[shared], k)
        u = torch.relu(a2)
        return {down: h, shared: z, up: u, "a_down": a1, "a_shared": a2, "y": _linear(u, proj[up], k)}

    def tower_errors(self, changed: Projections) -> dict[str, float]:
        """Error per tower with the projections in ``changed`` replaced (the others trained)."""
        proj = {**self.proj, **changed}
        out = {}
        for tower, acts in self.acts.items():
            path = TOWER_PATH[tower]
            first = next((i for i, p in enumerate(path) if p in changed), None)
            if first is None:
                out[tower] = 0.0
                continue
            num = 0.0
            for k, a in enumerate(acts):
                x = a[path[first]]
                for i in range(first, 3):
                    x = _linear(x, proj[path[i]], k)
                    if i < 2:
                        x = torch.relu(x)
                num += float((x - a["y"]).pow(2).sum())
            out[tower] = num * self.scale**2 / max(self.reference[tower], 1e-300)
        return out

    def error(self, changed: Projections) -> float:
        """Sum over towers of :meth:`tower_errors`: the quantity the budget allocation minimises."""
        return sum(self.tower_errors(changed).values())
