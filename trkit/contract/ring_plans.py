"""Ring-specific contraction plans: where to cut a ring so ``TensorRing.to_dense`` is two chains of
matmuls and one GEMM (:func:`ring_dense_plan`), and the cost reports :func:`trkit.contract.explain`
gives for the ring operations ``to_dense``, ``norm``, ``inner`` and ``entries``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from trkit._kernels import einsum_letters, ring_equation
from trkit.contract._planned import contract_path, naive_flops
from trkit.errors import InputError

__all__ = ["RingPlan", "ring_dense_plan", "ring_report", "RING_OPS"]

RING_OPS = ("to_dense", "norm", "inner", "entries")


@dataclass(frozen=True)
class RingPlan:
    """How ``to_dense`` contracts a ring: cut at bonds ``cut = (p, q)``, merge the arcs of cores
    ``p..q-1`` and ``q..p-1`` (cyclically) in the orders given by ``tree``, then one GEMM of cost
    ``2 N r_p r_q``. Every merge is a plain matmul of two adjacent blocks.

    ``tree`` is ``(left, right)``; each side is a core number or a pair of adjacent sub-trees.
    ``path`` is the same plan as an opt_einsum path over ``trkit.ring.dense_equation(d)``, so ``flops`` and
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
    letters = einsum_letters(3 * d)
    ab, bb, m = letters[:d], letters[d : 2 * d], letters[2 * d : 3 * d]
    ta = [ab[k] + m[k] + ab[(k + 1) % d] for k in range(d)]
    tb = [bb[k] + m[k] + bb[(k + 1) % d] for k in range(d)]
    return ",".join(ta + tb) + "->"


def ring_report(op: str, args) -> dict:
    """The ``explain`` report of a ring operation (see :func:`trkit.contract.explain`)."""
    from trkit.ring import TensorRing

    rings = [a if isinstance(a, TensorRing) else TensorRing(a) for a in args[: 2 if op == "inner" else 1]]
    a = rings[0]
    d, shape = a.ndim, a.shape
    if op == "to_dense":
        plan = ring_dense_plan(shape, a.ranks)
        return {
            "equation": ring_equation(d),
            "path": [tuple(p) for p in plan.path],
            "strategy": f"cut at bonds {plan.cut}, arcs merged as {plan.tree}, then one GEMM",
            "flops": plan.flops,
            "largest_intermediate": plan.largest_intermediate,
            "naive_flops": naive_flops(ring_equation(d), *a.cores),
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
        "naive_flops": naive_flops(ring_equation(d), *a.cores),
    }
