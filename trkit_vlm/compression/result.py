"""What compressing an MMA set produced: the AdaRing config and tensors, and how close they are."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trkit_vlm.adapters.adaring.config import AdaRingConfig
from trkit_vlm.adapters.base import AdapterSet
from trkit_vlm.adapters.io import add_adapters_with_weights, save_adapters
from trkit_vlm.files import atomic_write_text

__all__ = ["CompressionResult"]


@dataclass
class CompressionResult:
    """An AdaRing adapter (``config`` + ``state_dict``) fitted to a trained MMA set.

    Attributes:
        config, state_dict: the AdaRing adapter (one branch, per-projection TR ranks, MMA's scale).
        towers: the tower widths and depths it was built for.
        projections: per projection: ``ranks``, ``n_params``, ``dense_params``, ``weight_rel_error`` (of the
            stacked weights) and ``layer_weight_rel_errors``, ``output_rel_error`` (per tower, this
            projection alone compressed; see ``output_reference``).
        n_params, mma_params: parameters of the AdaRing adapter and of the MMA set (biases included).
        output_rel_error: per tower, every projection compressed: ``||scale (y' - y)|| / ||reference||`` over
            the calibration tokens and adapted layers.
        output_reference: ``"block output"`` (calibration data: the error relative to the adapted
            blocks' outputs) or ``"adapter output"`` (data-free, N(0, I) inputs).
        settings: how it was made (budget or tol, calibration, scale origin, ridge, ...).
    """

    config: AdaRingConfig
    state_dict: dict[str, torch.Tensor]
    towers: dict
    projections: dict[str, dict[str, Any]]
    n_params: int
    mma_params: int
    output_rel_error: dict[str, float] = field(default_factory=dict)
    output_reference: str = "adapter output"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.n_params / self.mma_params

    def apply(self, model: nn.Module) -> nn.Module:
        """Add the compressed AdaRing adapters to ``model`` (a backbone without adapters)."""
        add_adapters_with_weights(model, self.config, self.state_dict, "compressed adapters")
        return model

    def adapter_set(self) -> AdapterSet:
        """The AdaRing adapter module alone (no backbone)."""
        aset = self.config.build(self.towers)
        with torch.no_grad():
            for k, v in aset.state_dict().items():
                v.copy_(self.state_dict[k])
        return aset

    def save(self, path: str | os.PathLike) -> Path:
        """Write a trkit adapter file that ``load_adapters`` reads (atomic)."""
        holder = nn.Module()
        holder.trkit_adapters = self.adapter_set()
        return save_adapters(holder, path)

    def report(self) -> dict[str, Any]:
        """Everything in ``report.json``: settings, sizes, per-projection ranks and errors, the config."""
        return {
            **self.settings,
            "n_params": self.n_params,
            "mma_params": self.mma_params,
            "fraction": self.fraction,
            "projections": self.projections,
            "output_rel_error": self.output_rel_error,
            "output_reference": self.output_reference,
            "config": self.config.to_dict(),
        }

    def write(self, out_dir: str | os.PathLike) -> list[Path]:
        """``adapters.safetensors`` and ``report.json`` in ``out_dir`` (atomic writes)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [Path(self.save(out / "adapters.safetensors")), out / "report.json"]
        atomic_write_text(paths[1], json.dumps(self.report(), indent=2))
        return paths

    def table(self) -> str:
        """Per projection: ranks, parameters, weight error, output error per tower; then the totals."""
        towers = list(self.output_rel_error)
        head = f"{'projection':<12}{'ranks':>14}{'params':>10}{'dense':>10}{'weight err':>12}"
        head += "".join(f"{'out err ' + t:>16}" for t in towers)
        lines = [head]
        for p, r in self.projections.items():
            line = (
                f"{p:<12}{str(tuple(r['ranks'])):>14}{r['n_params']:>10,}{r['dense_params']:>10,}"
                f"{r['weight_rel_error']:>12.3e}"
            )
            line += "".join(
                f"{r['output_rel_error'][t]:>16.3e}" if t in r["output_rel_error"] else f"{'-':>16}" for t in towers
            )
            lines.append(line)
        lines.append(
            f"{'total':<12}{'':>14}{self.n_params:>10,}{self.mma_params:>10,}"
            f"  ({100 * self.fraction:.2f}% of MMA, incl. biases and 1 branch scale)"
        )
        lines.append(
            f"output rel. error (all projections, relative to the {self.output_reference}): "
            + ", ".join(f"{t} {e:.3e}" for t, e in self.output_rel_error.items())
        )
        return "\n".join(lines)
