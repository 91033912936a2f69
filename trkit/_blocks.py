"""Cutting a C-ordered dense tensor into consecutive blocks of bounded size.

Used wherever a ring's dense form (or its difference to a dense tensor) would be too large to hold
whole: writing it to a file, measuring an error.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

__all__ = ["block_indices"]


def block_indices(shape: tuple[int, ...], itemsize: int, max_bytes: int) -> Iterator[tuple[int | slice, ...]]:
    """Indices that cut a C-ordered tensor into consecutive blocks of at most ``max_bytes``.

    Yields ``(i_0, ..., i_{k-1}, slice(a, b))``: fixed leading indices and a range of mode ``k``,
    each block covering all later modes, in file order. ``k`` is the first mode whose trailing
    sub-tensor fits (at worst the last mode, one entry per block).
    """
    d = len(shape)
    k = next((j for j in range(d) if math.prod(shape[j + 1 :]) * itemsize <= max_bytes), d - 1)
    step = max(1, max_bytes // (math.prod(shape[k + 1 :]) * itemsize))
    for lead in itertools.product(*(range(n) for n in shape[:k])):
        for a in range(0, shape[k], step):
            yield (*lead, slice(a, min(a + step, shape[k])))
