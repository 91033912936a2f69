"""Path and layout search for :mod:`trkit.contract.compiled`: which pairwise order, and how each
operand is viewed as a (batched) matrix, under a model of eager CPU execution time.

Cost of one pairwise step, in FLOP-equivalents (:data:`COST`): its FLOPs, plus one GEMM dispatch,
plus a dispatch per view op, plus elements (and a fixed cost) per operand copied because its
indices cannot be grouped as ``(batch, free, contracted)`` or the transpose by a view, plus the
GEMM's memory traffic. Per step both operand orders, free indices as they are or sorted into
output order, and the contracted indices in either operand's order are tried; the cheapest wins,
ties going to output order and to the operand with the leading output index on the left. For up
to ``DP_MAX`` operands a dynamic programme over operand subsets picks the pairwise order with the
least total cost.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["ExecCost", "COST", "DP_MAX", "Prep", "PairLayout", "pair_layout", "dp_path", "prod", "same_layout"]


@dataclass(frozen=True)
class ExecCost:
    """Modelled time of the compiled steps, in FLOP-equivalents (1 us ~ 5e4 at ~50 GFLOP/s on
    one core). Constants measured with torch 2.x fp32 on one CPU core."""

    mm_overhead: float = 1.2e5  # one mm/bmm dispatch (~2.5 us)
    view_overhead: float = 4.0e4  # one permute/reshape/transpose/view dispatch (~0.8 us)
    copy_elem: float = 20.0  # per element copied by a permute that is not a view
    copy_overhead: float = 1.0e5  # allocation and dispatch of one such copy (~2 us)
    mem_elem: float = 2.0  # per element a GEMM reads or writes
    einsum_overhead: float = 6.0e5  # a torch.einsum fallback step (~12 us)


COST = ExecCost()
DP_MAX = 8  # subsets DP is 3^n pair checks: 6561 at 8 operands


class Prep(NamedTuple):
    """How to view one operand as a (batched) matrix: ``permute`` (None: none), ``reshape``
    target (None: already that shape), then transpose the last two dims."""

    perm: tuple | None
    shape: tuple | None
    transpose: bool
    copies: int  # elements copied by permute + reshape (0 for a pure view)

    @property
    def dispatches(self) -> int:
        return (self.perm is not None) + (self.shape is not None) + self.transpose


class PairLayout(NamedTuple):
    cost: float
    flops: int
    copies: int
    a: str
    b: str
    pa: Prep
    pb: Prep
    res: str
    rows: str
    cols: str
    batch: str
    view: bool  # the GEMM result needs a .view to its index sizes


def prod(sizes: dict, idx) -> int:
    return math.prod(sizes[c] for c in idx)


def _prep(order: str, groups: tuple[str, str, str], sizes: dict) -> Prep:
    """Layout for an operand with index ``order`` to become the matrix ``groups`` =
    (batch, rows, cols); reading (batch, cols, rows) transposed is also a view. Size-1 indices
    may sit anywhere in a view (a batch of one token needs no transpose copy)."""
    bt, r, c = groups
    shp = tuple(sizes[i] for i in order)
    lead = (prod(sizes, bt),) if bt else ()
    big = "".join(i for i in order if sizes[i] != 1)

    def same(*parts: str) -> bool:
        return big == "".join(i for i in "".join(parts) if sizes[i] != 1)

    if same(bt, r, c):
        mat = lead + (prod(sizes, r), prod(sizes, c))
        return Prep(None, None if shp == mat else mat, False, 0)
    if same(bt, c, r):
        mat = lead + (prod(sizes, c), prod(sizes, r))
        return Prep(None, None if shp == mat else mat, True, 0)
    mat = lead + (prod(sizes, r), prod(sizes, c))
    return Prep(tuple(order.index(i) for i in bt + r + c), mat, False, math.prod(shp))


def same_layout(a: str, b: str, sizes: dict) -> bool:
    """Index orders ``a`` and ``b`` lay out memory identically (size-1 indices ignored)."""
    return [i for i in a if sizes[i] != 1] == [i for i in b if sizes[i] != 1]


def pair_layout(a: str, b: str, needed: set, out: str, sizes: dict, final: bool) -> PairLayout:
    """Cheapest GEMM layout for contracting terms ``a`` and ``b`` (either may be the left one)."""
    rank = {c: k for k, c in enumerate(out)}
    lead = out[:1]
    if lead and lead in b and lead not in a:
        a, b = b, a  # ties go to the operand with the leading output index on the left

    def out_sorted(f: list, term: str) -> str:
        return "".join(sorted(f, key=lambda c: (0, rank[c]) if c in rank else (1, term.index(c))))

    flops = prod(sizes, set(a) | set(b)) * (2 if any(c in b and c not in needed for c in a) else 1)
    best = None
    for swap, (a, b) in enumerate(((a, b), (b, a))):  # noqa: B020 (the pair is built before the loop)
        batch = "".join(c for c in a if c in b and c in needed)
        contr = [c for c in a if c in b and c not in needed]
        fa = [c for c in a if c not in b]
        fb = [c for c in b if c not in a]
        for fa_s, fb_s, k_src in itertools.product(
            dict.fromkeys(("".join(fa), out_sorted(fa, a))), dict.fromkeys(("".join(fb), out_sorted(fb, b))), (a, b)
        ):
            k = "".join(c for c in k_src if c in contr)
            pa = _prep(a, (batch, fa_s, k), sizes)
            pb = _prep(b, (batch, k, fb_s), sizes)
            res = batch + fa_s + fb_s
            n_res = prod(sizes, res)
            permute_out = final and not same_layout(res, out, sizes)
            copies = pa.copies + pb.copies + (n_res if permute_out else 0)
            mat = ((prod(sizes, batch),) if batch else ()) + (prod(sizes, fa_s), prod(sizes, fb_s))
            view = tuple(sizes[c] for c in res) != mat
            cost = (
                flops
                + COST.mm_overhead
                + COST.mem_elem * (prod(sizes, a) + prod(sizes, b) + n_res)
                + COST.copy_elem * copies
                + COST.copy_overhead * ((pa.copies > 0) + (pb.copies > 0) + permute_out)
                + COST.view_overhead * (pa.dispatches + pb.dispatches + view + permute_out)
            )
            # ties: output order (later steps and the result then need no transpose copy), then lead left
            key = (cost, res != out_sorted(list(res), res), swap)
            if best is None or key < best[0]:
                best = (key, PairLayout(cost, flops, copies, a, b, pa, pb, res, fa_s, fb_s, batch, view))
    return best[1]


def dp_path(terms: list[str], out: str, sizes: dict) -> list[tuple[int, int]]:
    """Cheapest pairwise order by :func:`pair_layout` costs, as a tree over operand subsets; returned
    as opt_einsum-style positions into the shrinking operand list."""
    n = len(terms)
    full = (1 << n) - 1
    letters_of = [set(t) for t in terms]
    best: dict[int, tuple[float, str, tuple | None]] = {1 << i: (0.0, terms[i], None) for i in range(n)}

    def needed_outside(mask: int) -> set:
        s = set(out)
        for i in range(n):
            if not mask >> i & 1:
                s |= letters_of[i]
        return s

    for mask in sorted(range(1, full + 1), key=lambda m: bin(m).count("1")):
        if mask in best:
            continue
        low = mask & -mask
        needed = needed_outside(mask)
        cand = None
        sub = (mask - 1) & mask
        while sub:
            if sub & low and sub != mask:  # each split once: the part holding the lowest operand
                other = mask ^ sub
                ca, ta, _ = best[sub]
                cb, tb, _ = best[other]
                p = pair_layout(ta, tb, needed, out, sizes, mask == full)
                c = ca + cb + p.cost
                if cand is None or c < cand[0]:
                    cand = (c, p.res, (sub, other))
            sub = (sub - 1) & mask
        best[mask] = cand
    # replay the tree bottom-up as positions into the shrinking operand list
    order: list[tuple[int, int]] = []

    def walk(mask):
        split = best[mask][2]
        if split is None:
            return
        walk(split[0])
        walk(split[1])
        order.append(split)

    walk(full)
    current = [1 << i for i in range(n)]
    path = []
    for s1, s2 in order:
        i, j = current.index(s1), current.index(s2)
        path.append((i, j))
        current = [m for k, m in enumerate(current) if k not in (i, j)] + [s1 | s2]
    return path
