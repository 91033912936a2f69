"""Rank adaptation of AdaRing during training: every projection of every branch starts at the configured
ranks and loses its least important bond slices until the whole adapter fits ``rank_budget``.

One ``trkit.nn.RankAllocator`` over all the set's rings with one budget, so the budget moves between
branches and projections: whichever slices matter least anywhere go first, and different projections
end with different ranks. At the end the rings are pruned to their kept slices and the set's config
lists the ranks each projection kept, so a saved adapter reloads at its pruned shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trkit.nn import RankAllocator
from trkit.nn.bonds import kept_ranks
from trkit_vlm.adapters.adaring.config import PROJECTIONS, rank_budget_params

__all__ = ["AdaRingRankAdaptation"]


class AdaRingRankAdaptation:
    """The ``rank_allocator`` of an AdaRing set (protocol in ``AdapterSet.rank_allocator``).

    Args:
        aset: the ``AdaRingAdapterSet`` (its config has ``rank_budget`` set).
        total_steps: optimiser steps of the run; ``rank_warmup`` / ``rank_final`` are fractions of it.
    """

    def __init__(self, aset, total_steps: int):
        cfg = aset.config
        self.aset = aset
        self.budget = rank_budget_params(cfg, aset.info)
        self.init_ranks = self.ranks()
        rings = sum(sum(p.numel() for p in md.parameters()) for md in aset.branches)
        # The allocator finds every ring of the set by name ("branches.<b>.<projection>") and replaces
        # them there when pruning; the branch scales count against the budget as extra parameters.
        self.allocator = RankAllocator(
            aset,
            budget=self.budget,
            total_steps=total_steps,
            warmup_steps=round(cfg.rank_warmup * total_steps),
            final_steps=round(cfg.rank_final * total_steps),
            update_every=cfg.rank_every,
            score=cfg.rank_score,
            extra_params=sum(p.numel() for p in aset.parameters()) - rings,
        )

    def ranks(self) -> dict[str, list[int]]:
        """Kept ranks ``[R1, R2, R3]`` per ring, keyed ``branches.<b>.<projection>``."""
        return {
            f"branches.{b}.{p}": list(kept_ranks(md[p])) for b, md in enumerate(self.aset.branches) for p in PROJECTIONS
        }

    def n_params(self) -> int:
        """Parameters of the set once pruned to the slices kept now."""
        return self.allocator.n_params()

    def accumulate(self) -> None:
        self.allocator.accumulate()

    def update(self, step: int) -> bool:
        return self.allocator.update(step)

    def finish(self) -> dict[str, Any]:
        """Prune to the budget, rewrite the set's config with the kept ranks, and summarise."""
        self.allocator.prune()
        aset = self.aset
        kept = [{p: list(md[p].ranks) for p in PROJECTIONS} for md in aset.branches]
        aset.config = dataclasses.replace(aset.config, ranks=kept, rank_budget=None)
        return {
            "budget": self.budget,
            "n_params": sum(p.numel() for p in aset.parameters()),
            "init_ranks": self.init_ranks,
            "ranks": self.ranks(),
        }

    def state_dict(self) -> dict:
        return self.allocator.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.allocator.load_state_dict(state)
