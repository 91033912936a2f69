"""AdaRingConfig: cross-layer tensor-ring adapters with heterogeneous-rank branches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from trkit.errors import InputError
from trkit_vlm.adapters.config import PairedAdapterConfig, default_layers, resolve_layers
from trkit_vlm.adapters.mma.config import mma_param_count

__all__ = ["AdaRingConfig", "PROJECTIONS", "adaring_param_count", "rank_budget_params"]

PROJECTIONS = ("down_text", "down_image", "shared", "up_text", "up_image")
_BIAS_MODES = {"hidden": ("down_text", "down_image", "shared"), "all": PROJECTIONS, "none": ()}
_INITS = ("zero_up", "kaiming", "pca")
_RANK_SCORES = ("sensitivity", "magnitude")


def _three(r: Any, where: str) -> tuple[int, int, int]:
    if isinstance(r, int) and not isinstance(r, bool):
        r = (r, r, r)
    if not (isinstance(r, (list, tuple)) and len(r) == 3 and all(isinstance(v, int) for v in r)):
        raise InputError(f"{where}: a TR rank is an int or three ints (R1, R2, R3), got {r!r}")
    if min(r) < 1:
        raise InputError(f"{where}: TR ranks must be >= 1, got {r!r}")
    return tuple(int(v) for v in r)


def _jsonable(r: Any) -> Any:
    if isinstance(r, dict):
        return {k: _jsonable(v) for k, v in r.items()}
    return list(r) if isinstance(r, tuple) else r


@dataclass
class AdaRingConfig(PairedAdapterConfig):
    """AdaRing: each of MMA's five projections, stacked over the adapted layers, is a ``CrossLayerTR``
    (two layer-shared cores + one core holding a slice per layer). Several branches with different TR
    ranks run in parallel; their outputs are summed with a learnable per-branch scale.

    Placement, input (``ln_1`` of the block input), output (added after the MLP residual), ``scale`` and
    the gradient-scaling rule are MMA's, so the comparison is fair.

    Args:
        ranks: one entry per branch: an int (all three bonds), ``(R1, R2, R3)``, or a dict mapping each
            projection name (``down_text, down_image, shared, up_text, up_image``) to one of those.
        bias: ``"hidden"`` per-layer biases on down and shared (default), ``"all"`` also on up, ``"none"``.
        init: ``"zero_up"`` (default): the layer core of each up projection is zero, so the adapted model
            starts exactly at the frozen one while that core still receives gradient; ``"kaiming"``: all
            cores drawn so reconstructed weights have MMA's Kaiming (fan_out) scale; ``"pca"``: as
            ``"kaiming"``, but the input core of each down projection holds the leading principal directions
            of the frozen model's ``ln_1`` inputs on the training shots (orthonormal, at the random core's
            expected norm), so the start does not depend on the seed's draw of those directions
            (``trkit_vlm.training.data_start``).
        diversity_weight: weight of the branch-diversity regulariser (mean squared cosine similarity of
            branch outputs); 0 disables it. The default 0.1 was chosen on validation from 0, 0.01, 0.1, 1
            and 10 (``benchmarks/adaring_validation.py --study diversity``; differences there were within
            0.3 HM, see docs/concepts/adaring.md).
        branch_scale_init: initial value of each branch scale.
        learn_branch_scale: train the branch scales (True) or keep them fixed (a buffer, not counted as
            parameters). A scale is redundant with its branch's layer cores, and the preconditioner
            (``optim.precondition``) acts on cores only.
        rank_budget: rank adaptation during training (``trkit.nn.RankAllocator``): ``ranks`` are the
            starting ranks, and bond slices are removed until the adapter's parameters (cores, biases,
            branch scales) fit this budget: a number <= 1 is a fraction of MMA's parameter count at the
            same hidden width and MMA's own placement (the baseline as it runs, whatever layers AdaRing
            adapts: with ``text_layers="all"`` the budget stays 10% of MMA at 0.1), a larger one a
            parameter count. None: fixed ranks.
        rank_warmup, rank_final: fractions of the training steps before the first removal and after
            the budget is reached (AdaLoRA's cubic schedule in between).
        rank_every: optimiser steps between re-allocations.
        rank_score: slice importance, ``"sensitivity"`` (AdaLoRA's smoothed ``|theta * grad|``) or
            ``"magnitude"`` (the slice's norm in the dense tensor).

    After rank adaptation the saved adapter's config lists the ranks each projection kept (one dict per
    branch) and has ``rank_budget=None``: loading it rebuilds the pruned shapes.

    Default on ViT-B-16 (hidden 32, ranks (2, 4), bias "hidden"): 57,378 parameters = 8.51% of MMA's 674,560.
    """

    ranks: list = field(default_factory=lambda: [2, 4])
    bias: str = "hidden"
    init: str = "zero_up"
    diversity_weight: float = 0.1
    branch_scale_init: float = 1.0
    learn_branch_scale: bool = True
    rank_budget: float | None = None
    rank_warmup: float = 0.1
    rank_final: float = 0.3
    rank_every: int = 5
    rank_score: str = "sensitivity"
    method: ClassVar[str] = "adaring"

    def __post_init__(self) -> None:
        if isinstance(self.ranks, (int, dict)):
            self.ranks = [self.ranks]
        if isinstance(self.ranks, (list, tuple)):
            # Stored in JSON form (ints and lists) so a config equals itself after a save/load round trip.
            self.ranks = [_jsonable(r) for r in self.ranks]
        super().__post_init__()
        if not self.ranks:
            raise InputError("ranks must list at least one branch")
        for b in range(len(self.ranks)):
            self.branch_ranks(b)
        if self.bias not in _BIAS_MODES:
            raise InputError(f"bias must be one of {sorted(_BIAS_MODES)}, got {self.bias!r}")
        if self.init not in _INITS:
            raise InputError(f"init must be one of {_INITS}, got {self.init!r}")
        if self.diversity_weight < 0:
            raise InputError(f"diversity_weight must be >= 0, got {self.diversity_weight}")
        if self.rank_budget is not None and not self.rank_budget > 0:
            raise InputError(f"rank_budget must be > 0 (<= 1: a fraction of MMA's parameters), got {self.rank_budget}")
        if self.rank_budget is not None and self.rank_budget > 1 and self.rank_budget != int(self.rank_budget):
            raise InputError(f"rank_budget above 1 is a parameter count and must be whole, got {self.rank_budget}")
        if not (0 <= self.rank_warmup and 0 <= self.rank_final and self.rank_warmup + self.rank_final <= 1):
            raise InputError(
                f"rank_warmup and rank_final must be >= 0 with a sum <= 1, got {self.rank_warmup}, {self.rank_final}"
            )
        if self.rank_every < 1:
            raise InputError(f"rank_every must be >= 1, got {self.rank_every}")
        if self.rank_score not in _RANK_SCORES:
            raise InputError(f"rank_score must be one of {_RANK_SCORES}, got {self.rank_score!r}")

    @property
    def n_branches(self) -> int:
        return len(self.ranks)

    def branch_ranks(self, b: int) -> dict[str, tuple[int, int, int]]:
        """``(R1, R2, R3)`` of every projection in branch ``b``."""
        spec = self.ranks[b]
        if isinstance(spec, dict):
            unknown = set(spec) - set(PROJECTIONS)
            missing = set(PROJECTIONS) - set(spec)
            if unknown or missing:
                raise InputError(
                    f"ranks[{b}]: per-projection ranks need exactly {PROJECTIONS}; "
                    f"unknown {sorted(unknown)}, missing {sorted(missing)}"
                )
            return {p: _three(spec[p], f"ranks[{b}][{p!r}]") for p in PROJECTIONS}
        r = _three(spec, f"ranks[{b}]")
        return {p: r for p in PROJECTIONS}

    def has_bias(self, projection: str) -> bool:
        return projection in _BIAS_MODES[self.bias]


def projection_dims(info: dict, hidden: int) -> dict[str, tuple[int, int]]:
    """``(d_in, d_out)`` of each projection for towers described by ``info``."""
    dt, dv, h = info["text"]["width"], info["image"]["width"], int(hidden)
    return {"down_text": (dt, h), "down_image": (dv, h), "shared": (h, h), "up_text": (h, dt), "up_image": (h, dv)}


def rank_budget_params(config: AdaRingConfig, info: dict) -> int | None:
    """``config.rank_budget`` as a parameter count (a fraction is of MMA's count at the same hidden width and
    MMA's default placement, rounded down); None without rank adaptation."""
    if config.rank_budget is None:
        return None
    if config.rank_budget > 1:
        return int(config.rank_budget)
    # MMA as the baseline runs it: a recipe that adapts more layers than MMA keeps the same budget.
    tl, _ = default_layers(info["text"]["depth"], info["image"]["depth"])
    mma = mma_param_count(info["text"]["width"], info["image"]["width"], config.hidden, len(tl))
    return int(config.rank_budget * mma)


def adaring_param_count(config: AdaRingConfig, info: dict) -> int:
    """Closed form: per branch and projection ``R1 R2 d_in + R2 R3 d_out + R3 R1 L`` (+ ``L d_out`` bias),
    plus one scale per branch when they are learned."""
    tl, _ = resolve_layers(config.text_layers, config.image_layers, info["text"]["depth"], info["image"]["depth"])
    n_layers = len(tl)
    dims = projection_dims(info, config.hidden)
    n = config.n_branches if config.learn_branch_scale else 0
    for b in range(config.n_branches):
        for p, (r1, r2, r3) in config.branch_ranks(b).items():
            d_in, d_out = dims[p]
            n += r1 * r2 * d_in + r2 * r3 * d_out + r3 * r1 * n_layers
            n += n_layers * d_out if config.has_bias(p) else 0
    return n
