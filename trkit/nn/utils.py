"""Helpers shared by the tensor-ring layers: mode factorisation, argument checks, einsum
equations for rings, the execution-cost model used to choose between contracting the cores and
densifying the weight, and parameter counting.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import cache

from torch import nn

from trkit.contract import compiled as _exec
from trkit.contract.compiled import COST
from trkit.errors import InputError, InputTypeError

__all__ = [
    "balanced_factors",
    "resolve_modes",
    "resolve_ranks",
    "count_params",
    "compression_ratio",
    "PathCost",
    "path_cost",
    "gemm_cost",
]


# ---- mode factorisation ------------------------------------------------------------------
def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


@cache
def balanced_factors(n: int, k: int) -> tuple[int, ...]:
    """Split ``n`` into ``k`` integer factors (descending) as equal as possible.

    Minimises the ratio largest/smallest factor; returns fewer than ``k`` factors only when
    ``n`` has fewer than ``k`` prime factors (e.g. a prime ``n`` gives ``(n,)``).
    """
    if n < 1 or k < 1:
        raise InputError(f"need n >= 1 and k >= 1, got n={n}, k={k}")
    primes = _prime_factors(n)
    k = max(1, min(k, len(primes))) if n > 1 else 1
    best: tuple[float, tuple[int, ...]] | None = None

    def rec(remaining: int, parts: int, lo: int, acc: list[int]):
        nonlocal best
        if parts == 1:
            if remaining >= lo:
                cand = tuple(sorted(acc + [remaining], reverse=True))
                score = cand[0] / cand[-1]
                if best is None or score < best[0]:
                    best = (score, cand)
            return
        d = lo
        while d**parts <= remaining:
            if remaining % d == 0:
                rec(remaining // d, parts - 1, d, acc + [d])
            d += 1

    rec(n, k, 2 if n > 1 else 1, [])
    if best is None:  # cannot happen for k <= number of prime factors; keep a safe fallback
        return (n,)
    return best[1]


def resolve_modes(n: int, modes, name: str, target: int = 16) -> tuple[int, ...]:
    """Mode factorisation of a dimension ``n``.

    ``modes`` may be ``None`` (automatic: about ``log_target(n)`` balanced factors, so factors are
    near ``target``), an int (that many balanced factors), or an explicit sequence whose product
    must be ``n``.
    """
    if modes is None:
        k = max(1, round(math.log(n) / math.log(target))) if n > 1 else 1
        return balanced_factors(n, k)
    if isinstance(modes, int):
        if modes < 1:
            raise InputError(f"{name}: number of modes must be >= 1, got {modes}")
        return balanced_factors(n, modes)
    modes = tuple(int(m) for m in modes)
    if len(modes) == 0 or min(modes) < 1:
        raise InputError(f"{name} must be non-empty positive integers, got {modes}")
    if math.prod(modes) != n:
        raise InputError(f"{name}={modes} multiply to {math.prod(modes)}, not to the dimension {n}")
    return modes


def positive_int(name: str, v) -> int:
    """``v`` as an int >= 1 (Python or numpy integer; bools and floats are refused)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise InputError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def resolve_ranks(ranks, n_cores: int, name: str = "ranks") -> tuple[int, ...]:
    """An int (all bonds equal) or a sequence of ``n_cores`` bond ranks, each >= 1."""
    if isinstance(ranks, bool):
        raise InputTypeError(f"{name} must be an int or a sequence of ints, got {ranks!r}")
    if isinstance(ranks, int):
        ranks = (ranks,) * n_cores
    try:
        ranks = tuple(int(r) for r in ranks)
    except TypeError:
        raise InputTypeError(f"{name} must be an int or a sequence of ints, got {ranks!r}") from None
    if len(ranks) != n_cores:
        raise InputError(f"{name} needs {n_cores} entries (one per core/bond), got {len(ranks)}: {ranks}")
    if min(ranks) < 1:
        raise InputError(f"{name} must all be >= 1, got {ranks}")
    return ranks


# ---- parameter counting -------------------------------------------------------------------
def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (shared parameters counted once)."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def compression_ratio(module_or_params, dense_params: int | None = None) -> float:
    """``dense_params / params``: how many times smaller than the dense equivalent.

    ``module_or_params`` is a module or a parameter count. For a module with a
    ``dense_params`` attribute (TRLinear, CrossLayerTR) the dense count is taken from it;
    otherwise pass ``dense_params``.
    """
    if isinstance(module_or_params, nn.Module):
        n = count_params(module_or_params)
        if dense_params is None:
            dense_params = getattr(module_or_params, "dense_params", None)
    else:
        n = int(module_or_params)
    if dense_params is None:
        raise InputError("dense_params is required for modules without a dense_params attribute")
    if n <= 0:
        raise InputError(f"parameter count must be positive, got {n}")
    return float(dense_params) / n


# ---- execution-cost model -------------------------------------------------------------------
@dataclass(frozen=True)
class PathCost:
    """Modelled cost of one way to run a contraction (FLOP-equivalents, see
    :class:`trkit.contract.compiled.ExecCost`): ``flops``, ``copies`` (elements moved by non-view
    permutes), ``steps`` (GEMM/einsum calls) and the total ``cost``."""

    flops: int
    copies: int
    steps: int
    cost: float

    def __add__(self, other: PathCost) -> PathCost:
        return PathCost(
            self.flops + other.flops, self.copies + other.copies, self.steps + other.steps, self.cost + other.cost
        )


def path_cost(equation: str, shapes: tuple) -> PathCost:
    """Cost of ``equation`` on operands of ``shapes`` as :mod:`trkit.nn._exec` compiles it (the
    same plan the layer then runs, so the path choice and the execution agree)."""
    plan = _exec.plan_cost(equation, *shapes)
    return PathCost(plan.flops, plan.copies, len(plan.steps), plan.cost)


def gemm_cost(batch: int, m: int, n: int) -> PathCost:
    """Cost of one ``(batch, m) @ (m, n)`` matrix product under the same model."""
    f = 2 * batch * m * n
    return PathCost(f, 0, 1, f + COST.mm_overhead + COST.mem_elem * (batch * m + m * n + batch * n))
