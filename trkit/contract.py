"""Planned tensor contraction: every einsum in trkit goes through here.

An equation plus operand shapes is planned once with opt_einsum, compiled into a
``ContractExpression`` and kept in an LRU cache keyed by ``(equation, shapes, optimize,
memory_limit)``; later calls with the same key skip planning entirely.

Cost model (``optimize="best"``, the default): paths from several opt_einsum optimizers
(``optimal``/``dp`` via ``auto-hq``, ``greedy``, and ``random-greedy`` for many operands) are
compared by FLOPs; among paths within 5% of the fewest FLOPs the one with the smallest largest
intermediate wins, and ``memory_limit`` (elements) caps every intermediate.

Ring-specific plans live here too: :func:`ring_dense_plan` picks where to cut a ring so that
``TensorRing.to_dense`` is two chains of matmuls and one GEMM, and :func:`explain` accepts the
operation names ``"to_dense"``, ``"norm"``, ``"inner"`` and ``"entries"``.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import opt_einsum
import torch

from trkit.errors import InputError

__all__ = [
    "contract",
    "contract_path",
    "naive_flops",
    "explain",
    "ring_dense_plan",
    "RingPlan",
    "set_cache_size",
    "cache_info",
    "clear_cache",
]

_DEFAULT_OPTIMIZE = "best"
_cache: OrderedDict[tuple, object] = OrderedDict()
_cache_size = 512
_hits = 0
_misses = 0


def set_cache_size(size: int) -> None:
    """Set how many compiled contraction plans are kept (least recently used are dropped)."""
    global _cache_size
    if size < 0:
        raise InputError(f"cache size must be >= 0, got {size}")
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


def _plan(equation: str, shapes: Sequence[tuple], optimize, memory_limit=None):
    if isinstance(optimize, str) and optimize == "best":
        return _best_path(equation, shapes, memory_limit)
    return opt_einsum.contract_path(equation, *shapes, shapes=True, optimize=optimize, memory_limit=memory_limit)


def _expression(equation: str, shapes: tuple, optimize, memory_limit):
    global _hits, _misses
    key = (equation, shapes, str(optimize), memory_limit)
    expr = _cache.get(key)
    if expr is not None:
        _hits += 1
        _cache.move_to_end(key)
        return expr
    _misses += 1
    path, _ = _plan(equation, shapes, optimize, memory_limit)
    expr = opt_einsum.contract_expression(equation, *shapes, optimize=path)
    if _cache_size > 0:
        _cache[key] = expr
        if len(_cache) > _cache_size:
            _cache.popitem(last=False)
    return expr


def contract(equation: str, *operands: torch.Tensor, optimize=_DEFAULT_OPTIMIZE, memory_limit=None) -> torch.Tensor:
    """Evaluate an einsum ``equation`` along a cached, cost-planned path.

    Same semantics as ``torch.einsum``; differentiable; any device and dtype.

    Args:
        equation: einsum equation, e.g. ``"aib,bjc->aijc"``.
        operands: tensors whose shapes match the equation.
        optimize: ``"best"`` (see the module cost model) or any opt_einsum ``optimize`` value.
        memory_limit: cap on intermediate size in elements (``None``: no cap).
    """
    shapes = tuple(tuple(op.shape) for op in operands)
    expr = _expression(equation, shapes, optimize, memory_limit)
    return expr(*operands, backend="torch")


def contract_path(equation: str, *shapes_or_tensors, optimize=_DEFAULT_OPTIMIZE):
    """Return opt_einsum's ``(path, PathInfo)`` for the equation and shapes (no tensors needed)."""
    return _plan(equation, _shapes(shapes_or_tensors), optimize)


def _shapes(shapes_or_tensors) -> list[tuple]:
    return [tuple(s.shape) if hasattr(s, "shape") else tuple(s) for s in shapes_or_tensors]


def naive_flops(equation: str, *shapes_or_tensors) -> int:
    """FLOPs of contracting the operands strictly left to right (the order a hand-written loop uses)."""
    shapes = _shapes(shapes_or_tensors)
    n = len(shapes)
    path = [(0, 1)] * (n - 1) if n > 1 else [(0,)]
    _, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize=path)
    return int(info.opt_cost)


@dataclass(frozen=True)
class RingPlan:
    """How ``to_dense`` contracts a ring: cut at bonds ``cut = (p, q)``, merge the arcs of cores
    ``p..q-1`` and ``q..p-1`` (cyclically) in the orders given by ``tree``, then one GEMM of cost
    ``2 N r_p r_q``. Every merge is a plain matmul of two adjacent blocks.

    ``tree`` is ``(left, right)``; each side is a core number or a pair of adjacent sub-trees.
    ``path`` is the same plan as an opt_einsum path over ``dense_equation(d)``, so ``flops`` and
    ``largest_intermediate`` use opt_einsum's accounting and compare directly with its optimizers.
    """

    cut: tuple[int, int]
    tree: tuple
    path: tuple
    flops: int
    largest_intermediate: int


@functools.lru_cache(maxsize=1024)
def ring_dense_plan(shape: tuple, ranks: tuple) -> RingPlan:
    """Fewest-FLOP plan for densifying a ring (cached per shape/ranks).

    Interval dynamic programming (matrix-chain order) over every cyclic arc, ``O(d^3)``, then
    the best pair of complementary arcs. Cuts with ``p != 0`` pay one extra pass over the output
    (a permutation), counted as ``N`` in the choice (not in the reported FLOPs).
    """
    shape, ranks = tuple(int(n) for n in shape), tuple(int(r) for r in ranks)
    d = len(shape)
    if d < 2:
        raise InputError(f"ring_dense_plan needs at least 2 cores, got {d}")
    total = 1
    for n in shape:
        total *= n
    size = {}  # (i, L) -> product of the mode sizes of cores i..i+L-1
    best = {}  # (i, L) -> (flops, largest, tree)
    for i in range(d):
        size[i, 1] = shape[i]
        best[i, 1] = (0, 0, i)
    for length in range(2, d):
        for i in range(d):
            size[i, length] = size[i, length - 1] * shape[(i + length - 1) % d]
            out = ranks[i] * size[i, length] * ranks[(i + length) % d]
            cands = []
            for s in range(1, length):
                (fa, la, ta), (fb, lb, tb) = best[i, s], best[(i + s) % d, length - s]
                cands.append((fa + fb + 2 * out * ranks[(i + s) % d], max(la, lb, out), (ta, tb)))
            best[i, length] = min(cands, key=lambda c: (c[0], c[1]))
    choice = None
    for p in range(d):
        for length in range(1, d):
            q = (p + length) % d
            (fa, la, ta), (fb, lb, tb) = best[p, length], best[q, d - length]
            flops = fa + fb + 2 * total * ranks[p] * ranks[q]
            score = flops + (total if p else 0)
            if choice is None or score < choice[0]:
                choice = (score, flops, (p, q), (ta, tb), max(la, lb, total))
    _, flops, cut, tree, largest = choice
    return RingPlan(cut=cut, tree=tree, path=_tree_path(d, tree), flops=flops, largest_intermediate=largest)


def _tree_path(d: int, tree) -> tuple:
    """The plan as an opt_einsum path (positions in a list that shrinks and appends results)."""
    ops, path = list(range(d)), []

    def walk(node):
        if isinstance(node, int):
            return node
        x, y = walk(node[0]), walk(node[1])
        i, j = ops.index(x), ops.index(y)
        path.append((min(i, j), max(i, j)))
        ops.remove(x), ops.remove(y)
        new = d + len(path)
        ops.append(new)
        return new

    walk(tree)
    return tuple(path)


def _inner_equation(d: int) -> str:
    """Einsum for <a, b> with operands a_1..a_d, b_1..b_d (the order one would write by hand)."""
    from trkit._kernels import einsum_letters

    letters = einsum_letters(3 * d)
    ab, bb, m = letters[:d], letters[d : 2 * d], letters[2 * d : 3 * d]
    ta = [ab[k] + m[k] + ab[(k + 1) % d] for k in range(d)]
    tb = [bb[k] + m[k] + bb[(k + 1) % d] for k in range(d)]
    return ",".join(ta + tb) + "->"


def _ring_report(op: str, args) -> dict:
    from trkit.ring import TensorRing, dense_equation

    rings = [a if isinstance(a, TensorRing) else TensorRing(a) for a in args[: 2 if op == "inner" else 1]]
    a = rings[0]
    d, shape = a.ndim, a.shape
    if op == "to_dense":
        plan = ring_dense_plan(shape, a.ranks)
        return {
            "equation": dense_equation(d),
            "path": [tuple(p) for p in plan.path],
            "strategy": f"cut at bonds {plan.cut}, arcs merged as {plan.tree}, then one GEMM",
            "flops": plan.flops,
            "largest_intermediate": plan.largest_intermediate,
            "naive_flops": naive_flops(dense_equation(d), *a.cores),
        }
    if op in ("norm", "inner"):
        b = rings[1] if op == "inner" else a
        ra, rb = a.ranks, b.ranks
        start = min(range(d), key=lambda k: ra[k] * rb[k])
        flops, largest, m = 0, 0, (ra[start], rb[start])
        for j in range(d):
            k = (start + j) % d
            ga, gb = (ra[k], shape[k], ra[(k + 1) % d]), (rb[k], shape[k], rb[(k + 1) % d])
            eq, shp = ("xic,yie->xyce", [ga, gb]) if j == 0 else ("xyab,aic,bie->xyce", [m + (ra[k], rb[k]), ga, gb])
            _, info = contract_path(eq, *shp)
            flops += int(info.opt_cost)
            largest = max(largest, int(info.largest_intermediate))
        naive = naive_flops(_inner_equation(d), *a.cores, *b.cores) if 3 * d <= 52 else None
        return {
            "equation": _inner_equation(d) if 3 * d <= 52 else None,
            "path": None,
            "strategy": f"transfer-matrix sweep from core {start} (state r_a*r_b*r_a*r_b)",
            "flops": flops,
            "largest_intermediate": largest,
            "naive_flops": naive,
        }
    index = args[1] if len(args) > 1 else None
    m_rows = index if isinstance(index, int) else (len(index) if index is not None else 1)
    s = min(range(d), key=lambda k: a.ranks[k])
    per = sum(2 * a.ranks[s] * a.ranks[k] * a.ranks[(k + 1) % d] for k in range(d) if k != s)
    return {
        "equation": None,
        "path": None,
        "strategy": f"batched products of core slices from core {s}, {m_rows} entries",
        "flops": m_rows * per,
        "largest_intermediate": m_rows * a.ranks[s] * max(a.ranks),
        "naive_flops": naive_flops(dense_equation(d), *a.cores),
    }


_RING_OPS = ("to_dense", "norm", "inner", "entries")


def explain(equation: str, *shapes_or_tensors, optimize=_DEFAULT_OPTIMIZE, file=None) -> dict:
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
    if equation in _RING_OPS:
        report = {"operation": equation, **_ring_report(equation, shapes_or_tensors)}
    else:
        path, info = contract_path(equation, *shapes_or_tensors, optimize=optimize)
        report = {
            "operation": "einsum",
            "equation": equation,
            "path": [tuple(p) for p in path],
            "strategy": f"opt_einsum path ({optimize})",
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
