"""The ``"opt_einsum"`` backend of :func:`trkit.contract.contract`: FLOP-planned paths, compiled
into opt_einsum ``ContractExpression`` objects and kept in an LRU cache.

Cost model (``optimize="best"``): paths from several opt_einsum optimizers (``optimal``/``dp`` via
``auto-hq``, ``greedy``, and ``random-greedy`` for many operands) are compared by FLOPs; among the
paths within 5% of the fewest FLOPs the one with the smallest largest intermediate wins, and
``memory_limit`` (elements) caps every intermediate.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import opt_einsum
import torch

__all__ = [
    "DEFAULT_OPTIMIZE",
    "PlanCache",
    "plan",
    "expression",
    "run",
    "contract_path",
    "naive_flops",
    "shapes_of",
    "cache",
]

DEFAULT_OPTIMIZE = "best"


class PlanCache:
    """Plans kept per key (oldest dropped first beyond ``size``), with hit and miss counts.

    Each backend keeps one: here compiled expressions keyed by ``(equation, shapes, optimize,
    memory_limit)``; :mod:`trkit.contract.compiled` its generated plans.
    """

    def __init__(self, size: int = 512):
        self.entries: OrderedDict[tuple, object] = OrderedDict()
        self.size, self.hits, self.misses = size, 0, 0

    def trim(self) -> None:
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()
        self.hits = self.misses = 0


cache = PlanCache()


def _best_path(equation: str, shapes: Sequence[tuple], memory_limit=None):
    """Fewest FLOPs over several optimizers; near-ties (5%) go to the smaller largest intermediate."""
    candidates = ["auto-hq", "greedy"] + (["random-greedy"] if len(shapes) > 16 else [])
    found = []
    for opt in candidates:
        path, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize=opt, memory_limit=memory_limit)
        found.append((int(info.opt_cost), int(info.largest_intermediate), path, info))
    fewest = min(f[0] for f in found)
    near = [f for f in found if f[0] <= 1.05 * fewest]
    best = min(near, key=lambda f: (f[1], f[0]))
    return best[2], best[3]


def plan(equation: str, shapes: Sequence[tuple], optimize=DEFAULT_OPTIMIZE, memory_limit=None):
    """opt_einsum's ``(path, PathInfo)`` for operands of ``shapes`` (no caching)."""
    if isinstance(optimize, str) and optimize == "best":
        return _best_path(equation, shapes, memory_limit)
    return opt_einsum.contract_path(equation, *shapes, shapes=True, optimize=optimize, memory_limit=memory_limit)


def expression(equation: str, shapes: tuple, optimize=DEFAULT_OPTIMIZE, memory_limit=None):
    """The cached ``ContractExpression`` (planned on the first call for this key)."""
    key = (equation, shapes, str(optimize), memory_limit)
    expr = cache.entries.get(key)
    if expr is not None:
        cache.hits += 1
        cache.entries.move_to_end(key)
        return expr
    cache.misses += 1
    path, _ = plan(equation, shapes, optimize, memory_limit)
    expr = opt_einsum.contract_expression(equation, *shapes, optimize=path)
    if cache.size > 0:
        cache.entries[key] = expr
        cache.trim()
    return expr


def run(equation: str, operands: Sequence[torch.Tensor], optimize=DEFAULT_OPTIMIZE, memory_limit=None):
    shapes = tuple(tuple(op.shape) for op in operands)
    return expression(equation, shapes, optimize, memory_limit)(*operands, backend="torch")


def shapes_of(shapes_or_tensors) -> list[tuple]:
    return [tuple(s.shape) if hasattr(s, "shape") else tuple(s) for s in shapes_or_tensors]


def contract_path(equation: str, *shapes_or_tensors, optimize=DEFAULT_OPTIMIZE):
    """Return opt_einsum's ``(path, PathInfo)`` for the equation and shapes (no tensors needed)."""
    return plan(equation, shapes_of(shapes_or_tensors), optimize)


def naive_flops(equation: str, *shapes_or_tensors) -> int:
    """FLOPs of contracting the operands strictly left to right (the order a hand-written loop uses)."""
    shapes = shapes_of(shapes_or_tensors)
    n = len(shapes)
    path = [(0, 1)] * (n - 1) if n > 1 else [(0,)]
    _, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize=path)
    return int(info.opt_cost)
