"""Spending a parameter budget over several projections' candidate fits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from trkit.errors import InputError

__all__ = ["allocate"]


class _Fit(Protocol):
    n_params: int
    output_error: float


def allocate(ladders: dict[str, Sequence[_Fit]], budget: int, fixed: int = 0) -> dict[str, int]:
    """Greedy multiple-choice knapsack: one fit per projection, least total error within ``budget``.

    Args:
        ladders: per projection, its fits ordered by parameters with falling ``output_error``.
        budget: parameters allowed in all (fits plus ``fixed``).
        fixed: parameters outside the fits (branch scales).
    Returns:
        the index of the chosen fit per projection. Starting from the cheapest fit everywhere, the
        upgrade that lowers the summed error most per added parameter is taken until none fits.
    Raises:
        InputError: when even the cheapest fits exceed the budget.
    """
    pick = {p: 0 for p in ladders}
    used = fixed + sum(fits[0].n_params for fits in ladders.values())
    if used > budget:
        raise InputError(
            f"budget of {budget:,} parameters is below the smallest AdaRing fit "
            f"({used:,} parameters with MMA's biases); raise --budget"
        )
    while True:
        best, choice = 0.0, None
        for p, fits in ladders.items():
            i = pick[p]
            for j in range(i + 1, len(fits)):
                extra = fits[j].n_params - fits[i].n_params
                if extra <= 0 or used + extra > budget:
                    continue
                gain = (fits[i].output_error - fits[j].output_error) / extra
                if gain > best:
                    best, choice = gain, (p, j, extra)
        if choice is None:
            return pick
        p, j, extra = choice
        pick[p], used = j, used + extra
