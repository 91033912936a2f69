"""The ``"compiled"`` backend of :func:`trkit.contract.contract`: an einsum run as a precompiled
chain of views and ``torch.mm``/``torch.bmm`` calls, along a path chosen for *time*, not only FLOPs.

Why not ``torch.einsum`` per pairwise step: its dispatch (equation parsing, generic permutes,
``sumproduct_pair``) measured 10-20 us per step on one CPU core, several times the cost of the
small GEMMs a tensor-ring layer runs at batch 1..64 (a 1x768 @ 768x32 ``mm`` is ~3.5 us). Here
each step is planned once per (equation, shapes) and then costs one ``mm``/``bmm`` plus views;
an operand is copied only when its indices cannot be grouped as ``(batch, free, contracted)``
or ``(batch, contracted, free)`` by a view (a transposed operand is passed to BLAS as is).

Path and layouts come from :mod:`trkit.contract.time_model` (a time model; dynamic programming
over operand subsets for up to ``DP_MAX`` operands, the FLOP planner's order beyond). The compiled
steps are generated as straight-line Python (no per-op interpretation at call time) and cached per
(equation, shapes, contiguity). Equations with repeated indices or an index summed inside one
operand run their steps on ``torch.einsum``.

Layers that call one contraction many times (``trkit.nn``) keep the plan from :func:`get_plan`
and call :func:`execute` (no cache lookup per call); everything else goes through
``trkit.contract.contract``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from trkit.contract._planned import PlanCache, contract_path
from trkit.contract.time_model import COST, DP_MAX, ExecCost, Prep, dp_path, pair_layout, prod, same_layout

__all__ = ["run", "execute", "get_plan", "describe", "plan_cost", "is_native", "COST", "ExecCost", "DP_MAX"]


cache = PlanCache()  # generated plans keyed by (equation, index shapes, runtime shapes, contiguity)


class _Step(NamedTuple):
    a: int  # slot of the left operand
    b: int  # slot of the right operand (-1: unary einsum step)
    out: int  # slot the result goes to
    kind: str  # "mm", "bmm" or "einsum"
    ops_a: tuple  # (code, arg) view/reshape/permute/transpose ops turning operand a into the GEMM's left matrix
    ops_b: tuple
    eq: str  # the step as an einsum equation
    n_cols: int  # N of the GEMM
    rows: str  # indices forming the GEMM rows
    copies: int  # elements copied by non-view permutes in this step


class _Plan(NamedTuple):
    steps: tuple
    final_ops: tuple  # ops turning the last GEMM result into the output's index shape and order
    fuse_bias: bool  # the final GEMM adds the bias (addmm)
    out_shape: tuple  # the output's index sizes
    flops: int
    copies: int
    cost: float
    fn: object  # the generated function running the steps: fn(operands, bias, out_shape)


_VIEW, _RESHAPE, _PERMUTE, _T = 0, 1, 2, 3


@functools.lru_cache(maxsize=512)
def _path(terms: tuple, out: str, sizes: tuple) -> list:
    # the order depends on index sizes only: the cost query and the run (other input grouping
    # or contiguity) share one search (~0.3 s for a 6-core ring)
    return dp_path(list(terms), out, dict(sizes))


def _ops(phys: tuple, logical: tuple, prep: Prep, strided: bool) -> tuple:
    """Ops turning a tensor of shape ``phys`` (a grouping of index sizes ``logical``) into the
    matrix ``prep`` describes. Intermediates (contiguous GEMM results) and contiguous inputs
    regroup by ``view``; strided inputs by ``reshape``."""
    regroup = _RESHAPE if strided else _VIEW
    ops = []
    if prep.perm is not None:
        if phys != logical:
            ops.append((regroup, logical))
        ops.append((_PERMUTE, prep.perm))
        ops.append((_RESHAPE, prep.shape))  # copies: the permuted layout is not a grouping
    else:
        target = prep.shape if prep.shape is not None else logical
        if phys != target:
            ops.append((regroup, target))
    if prep.transpose:
        ops.append((_T, None))
    return tuple(ops)


@torch.compiler.disable  # planning is Python-only; dynamo need not trace it
def _plan(equation: str, shapes: tuple, phys_shapes: tuple, contiguous: tuple) -> _Plan:
    ins, out = equation.split("->")
    terms = ins.split(",")
    sizes: dict = {}
    for t, s in zip(terms, shapes):
        sizes.update(zip(t, s))
    simple = is_native(equation)
    if simple and len(terms) <= DP_MAX:
        path = _path(tuple(terms), out, tuple(sizes.items()))
    else:
        path = [tuple(p) for p in contract_path(equation, *shapes)[0]]
    n_in = len(terms)
    slots = list(range(n_in))
    phys = {k: tuple(phys_shapes[k]) for k in range(n_in)}  # runtime shape of each slot
    n_slots = n_in
    steps, flops, copies, cost = [], 0, 0, 0.0
    for pair in path:
        rest_idx = [k for k in range(len(terms)) if k not in pair]
        rest = [terms[k] for k in rest_idx]
        needed = set("".join(rest)) | set(out)
        final = not rest
        ops_t = [terms[p] for p in pair]
        if not simple or len(pair) == 1:
            keep = out if final else "".join(c for c in dict.fromkeys("".join(ops_t)) if c in needed)
            in_ops = []
            for p_, t in zip(pair, ops_t):  # einsum needs each operand in its index shape
                logical = tuple(sizes[c] for c in t)
                strided = slots[p_] < n_in and not contiguous[slots[p_]]
                in_ops.append((((_RESHAPE if strided else _VIEW), logical),) if phys[slots[p_]] != logical else ())
            steps.append(
                _Step(
                    slots[pair[0]],
                    slots[pair[1]] if len(pair) == 2 else -1,
                    n_slots,
                    "einsum",
                    in_ops[0],
                    in_ops[1] if len(in_ops) > 1 else (),
                    ",".join(ops_t) + "->" + keep,
                    0,
                    "",
                    0,
                )
            )
            cost += COST.einsum_overhead + prod(sizes, set("".join(ops_t)))
            phys[n_slots] = tuple(sizes[c] for c in keep)
        else:
            i, j = pair
            p = pair_layout(terms[i], terms[j], needed, out, sizes, final)
            keep = p.res
            si, sj = (slots[i], slots[j]) if p.a == terms[i] else (slots[j], slots[i])
            ops_a = _ops(phys[si], tuple(sizes[c] for c in p.a), p.pa, si < n_in and not contiguous[si])
            ops_b = _ops(phys[sj], tuple(sizes[c] for c in p.b), p.pb, sj < n_in and not contiguous[sj])
            n_cols = prod(sizes, p.cols)
            mat = ((prod(sizes, p.batch),) if p.batch else ()) + (prod(sizes, p.rows), n_cols)
            steps.append(
                _Step(
                    si,
                    sj,
                    n_slots,
                    "bmm" if p.batch else "mm",
                    ops_a,
                    ops_b,
                    f"{p.a},{p.b}->{keep}",
                    n_cols,
                    p.rows,
                    p.copies,
                )
            )
            phys[n_slots] = mat
            flops, copies, cost = flops + p.flops, copies + p.copies, cost + p.cost
        terms = rest + [keep]
        slots = [slots[k] for k in rest_idx] + [n_slots]
        n_slots += 1
    if len(terms) != 1:
        raise RuntimeError(f"contraction of {equation!r} left {len(terms)} operands")  # planner bug guard
    res = terms[0]
    logical = tuple(sizes[c] for c in res)
    final_ops: list = []
    if not same_layout(res, out, sizes):
        if phys[slots[0]] != logical:
            final_ops.append((_VIEW, logical))
        final_ops.append((_PERMUTE, tuple(res.index(c) for c in out)))
    last = steps[-1] if steps else None
    # A final 2-D mm adds the bias itself (addmm) when its rows are the leading output index alone
    # (bias as is), or when that index has size 1 (bias viewed as the whole (rows, cols) matrix).
    fuse: bool | tuple = False
    if out and last and last.kind == "mm" and not final_ops:
        n_rows = prod(sizes, out) // last.n_cols
        if same_layout(last.rows, out[:1], sizes) and n_rows == sizes[out[0]]:
            fuse = True
        elif sizes[out[0]] == 1:
            fuse = (n_rows, last.n_cols)
    fn = _codegen(tuple(steps), n_in, tuple(final_ops), fuse)
    return _Plan(tuple(steps), tuple(final_ops), bool(fuse), tuple(sizes[c] for c in out), flops, copies, cost, fn)


def is_native(equation: str) -> bool:
    """Whether every step of ``equation`` can run as an ``mm``/``bmm`` (no index repeated inside
    one operand, none summed inside a single operand, at least two operands)."""
    ins, out = equation.replace(" ", "").split("->")
    terms = ins.split(",")
    letters = set(ins.replace(",", ""))
    counts = {c: sum(c in t for t in terms) + (c in out) for c in letters}
    return len(terms) > 1 and all(len(set(t)) == len(t) for t in terms) and all(v >= 2 for v in counts.values())


def get_plan(equation: str, shapes: tuple, phys: tuple, contiguous: tuple) -> _Plan:
    """The compiled plan (LRU-cached) for operands of index ``shapes`` passed with runtime
    shapes ``phys`` and contiguity flags ``contiguous``."""
    key = (equation, shapes, phys, contiguous)
    plan = cache.entries.get(key)
    if plan is not None:
        cache.hits += 1
        return plan
    cache.misses += 1
    plan = _plan(equation, shapes, phys, contiguous)
    if cache.size > 0:
        cache.entries[key] = plan
        cache.trim()
    return plan


def run(
    equation: str,
    *operands: torch.Tensor,
    bias: torch.Tensor | None = None,
    shapes: tuple | None = None,
    out_shape: tuple | None = None,
) -> torch.Tensor:
    """``torch.einsum(equation, *operands)`` along the compiled plan (cached by shapes).

    ``shapes``: the operands' index shapes when some operand is passed grouped (e.g. the input
    as ``(tokens, in_features)`` for ``t i1 i2``): saves a reshape. ``out_shape``: view the
    result as this shape (default: the output's index sizes). ``bias`` (1-D, size = product of
    the output sizes after the first) is added over all output indices but the first, fused
    into the last GEMM (``addmm``) when its rows are exactly the leading output index. The result
    may be a non-contiguous view when the output order needs a transpose.
    """
    phys = tuple(o.shape for o in operands)
    plan = get_plan(equation, phys if shapes is None else shapes, phys, tuple(o.is_contiguous() for o in operands))
    return execute(plan, operands, bias, out_shape)


def execute(plan: _Plan, operands, bias: torch.Tensor | None = None, out_shape: tuple | None = None) -> torch.Tensor:
    """Run a plan from :func:`get_plan` (what :func:`run` does after the cache lookup)."""
    return plan.fn(operands, bias, plan.out_shape if out_shape is None else out_shape)


def _expr(name: str, ops: tuple) -> str:
    for code, arg in ops:
        name += {
            _VIEW: f".view({arg!r})",
            _RESHAPE: f".reshape({arg!r})",
            _PERMUTE: f".permute({arg!r})",
            _T: ".transpose(-1, -2)",
        }[code]
    return name


def _codegen(steps: tuple, n_in: int, final_ops: tuple, fuse: bool | tuple):
    """Straight-line Python for the steps: no per-op interpretation at call time (the loop
    version measured ~0.5 us of Python per op, a sizeable share of a 1-token forward)."""
    lines = ["def _run(ops, bias, out_shape):", "    " + "".join(f"s{k}, " for k in range(n_in)) + "= ops"]
    for k, s in enumerate(steps):
        a = _expr(f"s{s.a}", s.ops_a)
        b = _expr(f"s{s.b}", s.ops_b) if s.b >= 0 else ""
        if s.kind == "mm" and fuse and k == len(steps) - 1:
            c = "bias" if fuse is True else f"bias.view({fuse!r})"
            call = f"torch.mm({a}, {b}) if bias is None else torch.addmm({c}, {a}, {b})"
        elif s.kind in ("mm", "bmm"):
            call = f"torch.{s.kind}({a}, {b})"
        else:
            call = f"torch.einsum({s.eq!r}, {a}{', ' + b if b else ''})"
        lines.append(f"    s{s.out} = {call}")
        # drop intermediates once used (peak memory at large batches)
        dead = [f"s{i}" for i in (s.a, s.b) if i >= n_in]
        if dead:
            lines.append(f"    del {', '.join(dead)}")
    lines.append(f"    y = {_expr(f's{steps[-1].out}', final_ops)}")
    if not fuse:
        # In place only without autograd: y is a view of the GEMM result, and an in-place op on a
        # view makes backward clone the whole gradient (CopySlices; measured 3x the fwd+bwd time
        # of a 32->768 layer bank). A unary einsum step may return a view of an input: never in place.
        lines += ["    if bias is not None:", "        y = y.reshape(-1, bias.numel())"]
        if steps[-1].b >= 0:
            lines.append("        y = y.add_(bias) if not torch.is_grad_enabled() else y + bias")
        else:
            lines.append("        y = y + bias")
    lines.append("    return y if y.shape == out_shape else y.reshape(out_shape)")
    namespace = {"torch": torch}
    namespace["__source__"] = "\n".join(lines)
    exec(compile("\n".join(lines) + "\n", "<trkit.contract.compiled plan>", "exec"), namespace)
    return namespace["_run"]


def plan_cost(equation: str, *shapes) -> _Plan:
    """The compiled plan for operands of ``shapes`` (``.cost``, ``.flops``, ``.copies``, ``.steps``)."""
    key = tuple(tuple(s) for s in shapes)
    return get_plan(equation, key, key, (True,) * len(key))


def describe(equation: str, *shapes) -> list[dict]:
    """The compiled steps for operands of ``shapes``: kind, equation and elements copied."""
    plan = plan_cost(equation, *shapes)
    steps = [{"kind": s.kind, "eq": s.eq, "copies": s.copies} for s in plan.steps]
    return steps + ([{"kind": "permute", "eq": "to output order", "copies": 0}] if plan.final_ops else [])
