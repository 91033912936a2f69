"""Planned tensor contraction: every einsum in trkit goes through :func:`contract`.

One entry point, two backends:

- ``"compiled"`` (:mod:`trkit.contract.compiled`): the path and every operand's layout are chosen
  by a model of eager CPU time (FLOPs plus per-call dispatch and copies), and the steps run as
  generated straight-line code of views and ``mm``/``bmm`` calls. It wins wherever dispatch
  matters, which for tensor rings (many small cores) is almost everywhere.
- ``"opt_einsum"``: a FLOP-optimal path (``optimize="best"``: the fewest FLOPs over several
  opt_einsum optimizers, near-ties to the smaller largest intermediate), compiled into an
  opt_einsum ``ContractExpression``. It honours ``memory_limit`` and any opt_einsum ``optimize``
  value.

``backend="auto"`` (the default) takes the compiled backend when every step is a plain matrix
product (no index repeated inside an operand or summed inside one; see
:func:`trkit.contract.compiled.is_native`), the operands are at most
``trkit.contract.compiled.DP_MAX`` (its path search is exhaustive) and neither ``memory_limit`` nor
a non-default ``optimize`` asks for the FLOP planner; otherwise opt_einsum. Both backends cache
their plans per (equation, shapes) in LRU caches (:func:`cache_info`, :func:`set_cache_size`,
:func:`clear_cache` cover both), so a repeated call skips planning.

Ring-specific plans live in :mod:`trkit.contract.ring_plans`: :func:`ring_dense_plan` picks where to
cut a ring so ``TensorRing.to_dense`` is two chains of matmuls and one GEMM, and :func:`explain`
accepts the operation names ``"to_dense"``, ``"norm"``, ``"inner"`` and ``"entries"``.
"""

from __future__ import annotations

import torch

from trkit.contract import compiled
from trkit.contract._planned import DEFAULT_OPTIMIZE, contract_path, naive_flops
from trkit.contract._planned import cache as _planned_cache
from trkit.contract._planned import run as _run_planned
from trkit.contract.ring_plans import RING_OPS, RingPlan, ring_dense_plan, ring_report
from trkit.errors import InputError

__all__ = [
    "contract",
    "contract_path",
    "naive_flops",
    "explain",
    "ring_dense_plan",
    "RingPlan",
    "BACKENDS",
    "choose_backend",
    "set_cache_size",
    "cache_info",
    "clear_cache",
]

BACKENDS = ("auto", "compiled", "opt_einsum")


def set_cache_size(size: int) -> None:
    """Set how many plans each backend keeps (least recently planned are dropped first)."""
    if size < 0:
        raise InputError(f"cache size must be >= 0, got {size}")
    for cache in (_planned_cache, compiled.cache):
        cache.size = int(size)
        cache.trim()


def cache_info() -> dict:
    """Hits, misses and current size of the plan caches (both backends together)."""
    caches = (_planned_cache, compiled.cache)
    return {
        "hits": sum(c.hits for c in caches),
        "misses": sum(c.misses for c in caches),
        "size": sum(len(c.entries) for c in caches),
        "max_size": _planned_cache.size,
    }


def clear_cache() -> None:
    """Drop every cached plan of both backends and reset the counters."""
    _planned_cache.clear()
    compiled.cache.clear()


def choose_backend(equation: str, n_operands: int, optimize=DEFAULT_OPTIMIZE, memory_limit=None) -> str:
    """The backend ``contract(..., backend="auto")`` uses (see the module notes)."""
    if memory_limit is not None or not (isinstance(optimize, str) and optimize == DEFAULT_OPTIMIZE):
        return "opt_einsum"
    if n_operands <= compiled.DP_MAX and compiled.is_native(equation):
        return "compiled"
    return "opt_einsum"


def contract(
    equation: str, *operands: torch.Tensor, optimize=DEFAULT_OPTIMIZE, memory_limit=None, backend: str = "auto"
) -> torch.Tensor:
    """Evaluate an einsum ``equation`` along a cached, cost-planned path.

    Same semantics as ``torch.einsum``; differentiable; any device and dtype.

    Args:
        equation: einsum equation, e.g. ``"aib,bjc->aijc"`` (explicit ``->`` output).
        operands: tensors whose shapes match the equation.
        optimize: ``"best"`` (see the module notes) or any opt_einsum ``optimize`` value (then the
            opt_einsum backend runs it).
        memory_limit: cap on intermediate size in elements (``None``: no cap; opt_einsum backend).
        backend: ``"auto"``, ``"compiled"`` or ``"opt_einsum"`` (see the module notes).
    """
    if backend == "auto":
        backend = choose_backend(equation, len(operands), optimize, memory_limit)
    if backend == "compiled":
        return compiled.run(equation, *operands)
    if backend == "opt_einsum":
        return _run_planned(equation, operands, optimize, memory_limit)
    raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")


def explain(equation: str, *shapes_or_tensors, optimize=DEFAULT_OPTIMIZE, file=None) -> dict:
    """Print and return the planned path, its FLOPs, the largest intermediate, and the naive FLOPs.

    Args:
        equation: an einsum equation (then pass operand shapes or tensors), or one of
            ``"to_dense"``/``"norm"`` (pass a TensorRing), ``"inner"`` (two rings),
            ``"entries"`` (a ring and an ``(m, d)`` index or an int ``m``).
    Returns:
        dict with ``path``, ``flops``, ``largest_intermediate``, ``naive_flops`` and
        ``speedup_vs_naive``. "Naive" means the operands contracted strictly left to right
        (for ``entries``: densify left to right, then index).
    """
    if equation in RING_OPS:
        report = {"operation": equation, **ring_report(equation, shapes_or_tensors)}
    else:
        path, info = contract_path(equation, *shapes_or_tensors, optimize=optimize)
        backend = choose_backend(equation, len(shapes_or_tensors), optimize, None)
        report = {
            "operation": "einsum",
            "equation": equation,
            "path": [tuple(p) for p in path],
            "strategy": f"opt_einsum path ({optimize}); contract() runs it on the {backend!r} backend",
            "flops": int(info.opt_cost),
            "largest_intermediate": int(info.largest_intermediate),
            "naive_flops": naive_flops(equation, *shapes_or_tensors),
        }
    naive = report["naive_flops"]
    report["speedup_vs_naive"] = naive / max(report["flops"], 1) if naive is not None else None
    lines = [
        f"operation:            {report['operation']}",
        f"equation:             {report['equation']}",
        f"strategy:             {report['strategy']}",
        f"path:                 {report['path']}",
        f"planned FLOPs:        {report['flops']:.4g}",
        f"largest intermediate: {report['largest_intermediate']:.4g} elements",
        (
            f"naive (left-to-right) FLOPs: {naive:.4g}  ({report['speedup_vs_naive']:.3g}x the planned)"
            if naive is not None
            else "naive (left-to-right) FLOPs: n/a (too many indices)"
        ),
    ]
    print("\n".join(lines), file=file)
    return report
