"""Planned tensor contraction: every einsum in trkit goes through here.

An equation plus operand shapes is planned once with opt_einsum (path chosen by a cost model:
FLOPs, with the size of the largest intermediate as a cap), compiled into a
``ContractExpression`` and kept in an LRU cache keyed by ``(equation, shapes, optimize)``.
Later calls with the same key skip planning entirely.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import opt_einsum
import torch

__all__ = ["contract", "contract_path", "explain", "set_cache_size", "cache_info", "clear_cache"]

_DEFAULT_OPTIMIZE = "auto-hq"
_cache: "OrderedDict[tuple, object]" = OrderedDict()
_cache_size = 512
_hits = 0
_misses = 0


def set_cache_size(size: int) -> None:
    """Set how many compiled contraction plans are kept (least recently used are dropped)."""
    global _cache_size
    if size < 0:
        raise ValueError(f"cache size must be >= 0, got {size}")
    _cache_size = size
    while len(_cache) > _cache_size:
        _cache.popitem(last=False)


def cache_info() -> dict:
    """Hits, misses and current size of the plan cache."""
    return {"hits": _hits, "misses": _misses, "size": len(_cache), "max_size": _cache_size}


def clear_cache() -> None:
    global _hits, _misses
    _cache.clear()
    _hits = _misses = 0


def _expression(equation: str, shapes: tuple, optimize, memory_limit):
    global _hits, _misses
    key = (equation, shapes, str(optimize), memory_limit)
    expr = _cache.get(key)
    if expr is not None:
        _hits += 1
        _cache.move_to_end(key)
        return expr
    _misses += 1
    expr = opt_einsum.contract_expression(equation, *shapes, optimize=optimize, memory_limit=memory_limit)
    if _cache_size > 0:
        _cache[key] = expr
        if len(_cache) > _cache_size:
            _cache.popitem(last=False)
    return expr


def contract(equation: str, *operands: torch.Tensor, optimize=_DEFAULT_OPTIMIZE, memory_limit=None) -> torch.Tensor:
    """Evaluate an einsum ``equation`` along a cached, cost-planned path.

    Same semantics as ``torch.einsum``; differentiable; any device and dtype.
    """
    shapes = tuple(tuple(op.shape) for op in operands)
    expr = _expression(equation, shapes, optimize, memory_limit)
    return expr(*operands, backend="torch")


def contract_path(equation: str, *shapes_or_tensors, optimize=_DEFAULT_OPTIMIZE):
    """Return opt_einsum's ``(path, PathInfo)`` for the equation and shapes (no tensors needed)."""
    shapes = [tuple(s.shape) if hasattr(s, "shape") else tuple(s) for s in shapes_or_tensors]
    return opt_einsum.contract_path(equation, *shapes, shapes=True, optimize=optimize)


def naive_flops(equation: str, *shapes_or_tensors) -> int:
    """FLOPs of contracting the operands strictly left to right (the order a hand-written loop uses)."""
    shapes = [tuple(s.shape) if hasattr(s, "shape") else tuple(s) for s in shapes_or_tensors]
    n = len(shapes)
    path = [(0, 1)] * (n - 1) if n > 1 else [(0,)]
    _, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize=path)
    return int(info.opt_cost)


def explain(equation: str, *shapes_or_tensors, optimize=_DEFAULT_OPTIMIZE, file=None) -> dict:
    """Print and return the planned path, its FLOPs, the largest intermediate, and the naive FLOPs."""
    path, info = contract_path(equation, *shapes_or_tensors, optimize=optimize)
    naive = naive_flops(equation, *shapes_or_tensors)
    report = {
        "equation": equation,
        "path": [tuple(p) for p in path],
        "flops": int(info.opt_cost),
        "largest_intermediate": int(info.largest_intermediate),
        "naive_flops": naive,
        "speedup_vs_naive": naive / max(int(info.opt_cost), 1),
    }
    lines = [
        f"equation:             {equation}",
        f"path:                 {report['path']}",
        f"planned FLOPs:        {report['flops']:.4g}",
        f"largest intermediate: {report['largest_intermediate']:.4g} elements",
        f"naive (left-to-right) FLOPs: {naive:.4g}  ({report['speedup_vs_naive']:.3g}x the planned)",
    ]
    print("\n".join(lines), file=file)
    return report
