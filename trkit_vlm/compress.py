"""Compress a trained MMA adapter set into an AdaRing adapter under a parameter budget.

Each of MMA's five projections (text down, image down, shared, text up, image up) is stacked over the
adapted layers into a ``(L, d_in, d_out)`` tensor and fitted by ``CrossLayerTR.from_matrices`` (TR-SVD).
With a budget, every projection gets a short list of candidate fits (a sweep of tolerances), and a greedy
allocation upgrades, one step at a time, the projection whose squared relative error falls most per added
parameter until the budget is spent. MMA's biases are kept exactly (per layer) and counted.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from trkit.errors import InputError
from trkit.nn import CrossLayerTR
from trkit_vlm.adapters.adaring.config import PROJECTIONS, AdaRingConfig
from trkit_vlm.adapters.io import (
    add_adapters_with_weights,
    mma_config_from_state_dict,
    read_adapter_file,
    read_mma_state_dict,
    save_adapters,
)
from trkit_vlm.adapters.mma.config import mma_param_count
from trkit_vlm.adapters.mma.layer import shared_key
from trkit_vlm.files import atomic_write_text
from trkit_vlm.models import tower_info_from_config

__all__ = ["CompressionResult", "compress_mma", "mma_projections"]

# Relative-error targets tried per projection (the smallest recovers exactly low-rank stacks stored
# in float32).
_TOLS = (0.9, 0.7, 0.5, 0.35, 0.2, 0.1, 0.05, 0.01, 1e-4)
# Uniform TR ranks tried too: fine steps for stacks that tolerance targets cover only coarsely.
_RANKS = (1, 2, 3, 4, 5, 6, 8)


def mma_projections(sd: dict[str, torch.Tensor]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list, list]:
    """Stack an MMA state dict's projections: ``{name: (W (L, d_in, d_out), b (L, d_out))}`` in the
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
        missing = [k + ".weight" for k in ks if k + ".weight" not in sd]
        if missing:
            raise InputError(f"MMA state dict lacks {missing[:4]}")
        w = torch.stack([sd[k + ".weight"].t() for k in ks]).double()
        b = torch.stack([sd[k + ".bias"] for k in ks]).double()
        out[p] = (w, b)
    return out, tl, il


@dataclass
class CompressionResult:
    """What ``compress_mma`` built: an AdaRing config + tensors, and how close it is to the MMA set."""

    config: AdaRingConfig
    state_dict: dict[str, torch.Tensor]
    towers: dict
    projections: dict[str, dict]
    n_params: int
    mma_params: int
    output_rel_error: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.n_params / self.mma_params

    def apply(self, model: nn.Module) -> nn.Module:
        """Add the compressed AdaRing adapters to ``model`` (a backbone without adapters)."""
        add_adapters_with_weights(model, self.config, self.state_dict, "compressed adapters")
        return model

    def adapter_set(self):
        """The AdaRing adapter module alone (no backbone)."""
        aset = self.config.build(self.towers)
        with torch.no_grad():
            for k, v in aset.state_dict().items():
                v.copy_(self.state_dict[k])
        return aset

    def save(self, path: str | os.PathLike):
        """Write a trkit adapter file that ``load_adapters`` reads (atomic)."""
        holder = nn.Module()
        holder.trkit_adapters = self.adapter_set()
        return save_adapters(holder, path)

    def write(self, out_dir: str | os.PathLike, source: str, budget: float | None, tol: float | None) -> list[Path]:
        """``adapters.safetensors`` and ``report.json`` (what was asked, the ranks and errors) in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report = {
            "source": str(source),
            "budget": budget,
            "tol": tol,
            "n_params": self.n_params,
            "mma_params": self.mma_params,
            "fraction": self.fraction,
            "projections": self.projections,
            "output_rel_error": self.output_rel_error,
            "config": self.config.to_dict(),
        }
        paths = [Path(self.save(out / "adapters.safetensors")), out / "report.json"]
        atomic_write_text(paths[1], json.dumps(report, indent=2))
        return paths

    def table(self) -> str:
        lines = [f"{'projection':<12}{'ranks':>14}{'params':>10}{'dense':>10}{'rel.error':>11}  max layer err"]
        for p, r in self.projections.items():
            lines.append(
                f"{p:<12}{str(tuple(r['ranks'])):>14}{r['n_params']:>10,}{r['dense_params']:>10,}"
                f"{r['rel_error']:>11.3e}  {max(r['layer_rel_errors']):.3e}"
            )
        lines.append(
            f"{'total':<12}{'':>14}{self.n_params:>10,}{self.mma_params:>10,}"
            f"  ({100 * self.fraction:.2f}% of MMA, incl. biases and 1 branch scale)"
        )
        if self.output_rel_error:
            lines.append(
                "adapter output rel. error on N(0,1) inputs: "
                + ", ".join(f"{t} {e:.3e}" for t, e in self.output_rel_error.items())
            )
        return "\n".join(lines)


def _fit_ranks(w: torch.Tensor, b: torch.Tensor, r: int) -> CrossLayerTR:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ranks the stack cannot hold are clamped; that is fine here
        return CrossLayerTR.from_matrices(w, biases=b, ranks=r)


def _fit(w: torch.Tensor, b: torch.Tensor, tol: float) -> CrossLayerTR:
    return CrossLayerTR.from_matrices(w, biases=b, tol=tol)


def _allocate(cands: dict[str, list[CrossLayerTR]], budget_params: int) -> dict[str, CrossLayerTR]:
    """Greedy multiple-choice knapsack: minimise the sum of squared relative errors."""
    front = {}
    for p, fits in cands.items():
        fits = sorted(fits, key=lambda m: (m.n_params, m.fit_info["rel_error"]))
        pareto, best = [], float("inf")
        for m in fits:  # keep fits that lower the error as parameters grow
            if m.fit_info["rel_error"] < best - 1e-15:
                pareto.append(m)
                best = m.fit_info["rel_error"]
        front[p] = pareto
    pick = {p: 0 for p in front}
    used = sum(front[p][0].n_params for p in front) + 1
    if used > budget_params:
        raise InputError(
            f"budget of {budget_params:,} parameters is below the smallest AdaRing fit "
            f"({used:,} parameters with MMA's biases); raise --budget"
        )
    while True:
        best, choice = 0.0, None
        for p, fits in front.items():
            i = pick[p]
            for j in range(i + 1, len(fits)):
                extra = fits[j].n_params - fits[i].n_params
                if used + extra > budget_params:
                    continue
                gain = (fits[i].fit_info["rel_error"] ** 2 - fits[j].fit_info["rel_error"] ** 2) / max(extra, 1)
                if gain > best:
                    best, choice = gain, (p, j, extra)
        if choice is None:
            break
        p, j, extra = choice
        pick[p], used = j, used + extra
    return {p: front[p][pick[p]] for p in front}


def compress_mma(
    source,
    budget: float | None = 0.1,
    tol: float | None = None,
    towers: dict | None = None,
    model_name: str | None = None,
) -> CompressionResult:
    """The AdaRing adapter (one branch, per-projection TR ranks) closest to a trained MMA adapter set.

    Args:
        source: an official MMA checkpoint path (``.pth.tar``/``.pt``), a trkit MMA adapter file
            (``.safetensors``), or an MMA state dict.
        budget: total parameters as a fraction of the MMA set's (0.1 = 10%). Ignored when ``tol`` is given.
        tol: instead of a budget, fit every projection to this relative error.
        towers: tower widths/depths (``trkit_vlm.models.tower_info``); or ``model_name`` (an open_clip
            name, read from its config). Default: widths from the checkpoint, depth = last adapted layer.
    Returns:
        a :class:`CompressionResult` (``.apply(model)``, ``.save(path)``, ``.table()``).
    """
    if tol is None and budget is None:
        raise InputError("give budget (fraction of MMA's parameters) or tol (relative error per projection)")
    if tol is None and not 0 < float(budget) <= 1:
        raise InputError(f"budget must be a fraction in (0, 1], got {budget}")
    if tol is not None and not 0 < float(tol) < 1:
        raise InputError(f"tol must be in (0, 1), got {tol}")
    sd = read_mma_state_dict(_adapter_file_tensors(source))
    mma_cfg = mma_config_from_state_dict(sd)
    proj, tl, il = mma_projections(sd)
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
    n_mma = mma_param_count(dt, dv, h, len(tl))
    if tol is not None:
        fits = {p: _fit(w, b, tol) for p, (w, b) in proj.items()}
    else:
        cands = {
            p: [_fit_ranks(w, b, r) for r in _RANKS] + [_fit(w, b, t) for t in _TOLS] for p, (w, b) in proj.items()
        }
        fits = _allocate(cands, int(float(budget) * n_mma))
    config = AdaRingConfig(
        hidden=h,
        ranks=[{p: list(fits[p].ranks) for p in PROJECTIONS}],
        bias="all",
        init="kaiming",
        text_layers=mma_cfg.text_layers,
        image_layers=mma_cfg.image_layers,
        scale=mma_cfg.scale,
    )
    aset = config.build(towers)
    with torch.no_grad():
        for p in PROJECTIONS:
            tgt, src = aset.branches[0][p], fits[p]
            for a, c in zip(tgt.cores, src.cores):
                a.copy_(c)
            tgt.bias.copy_(src.bias)
    report = {
        p: {
            "ranks": list(fits[p].ranks),
            "n_params": fits[p].n_params,
            "dense_params": fits[p].dense_params,
            "rel_error": float(fits[p].fit_info["rel_error"]),
            "layer_rel_errors": [float(e) for e in fits[p].fit_info["layer_rel_errors"]],
        }
        for p in PROJECTIONS
    }
    state = {k: v.detach().float().clone() for k, v in aset.state_dict().items()}
    result = CompressionResult(
        config=config,
        state_dict=state,
        towers=towers,
        projections=report,
        n_params=sum(v.numel() for v in state.values()),
        mma_params=n_mma,
    )
    result.output_rel_error = _output_error(sd, mma_cfg, towers, result.adapter_set())
    return result


def _adapter_file_tensors(source):
    """The tensors of a trkit MMA adapter file (``.safetensors``); any other source as it is."""
    if not (isinstance(source, (str, os.PathLike)) and str(source).endswith(".safetensors")):
        return source
    config, _, tensors = read_adapter_file(source)
    if config.method != "mma":
        raise InputError(f"{source} holds {config.method} adapters, not MMA")
    return tensors


def _output_error(sd, mma_cfg, towers, ring) -> dict[str, float]:
    """Relative error of the adapter bodies on N(0, 1) inputs (what ln_1 outputs look like), all layers."""
    mma = mma_cfg.build(towers)
    with torch.no_grad():
        for k, v in mma.state_dict().items():
            v.copy_(sd[k])
    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        for tower in ("text", "image"):
            x = torch.randn(256, towers[tower]["width"], generator=g)
            num = den = 0.0
            for k in range(mma.n_pairs):
                ref = mma.branch(tower, k, x)
                num += float((ring.branch(tower, k, x) - ref).pow(2).sum())
                den += float(ref.pow(2).sum())
            out[tower] = (num / max(den, 1e-300)) ** 0.5
    return out
