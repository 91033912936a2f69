"""Paired statistics for benchmark runs: the difference of two methods over the same seeds.

Two methods are compared on runs that share everything but the method (same few-shot draws, same test
images, same seed), so the difference is taken seed by seed and its mean gets a Student-t confidence
interval (``mean ± t_{n-1, 1-alpha/2} · sd / sqrt(n)``). The pairing removes the seed-to-seed variation
the two methods share, which is most of it on these tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from trkit.errors import InputError


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` over paired entries, with its t confidence interval.

    Args:
        a, b: one value per seed, in the same seed order (``a[i]`` and ``b[i]`` come from the same seed).
        confidence: the interval's coverage (0.95 gives the 95% CI).

    Returns:
        ``{"mean", "sd", "n", "ci_low", "ci_high", "half_width", "p"}``: ``sd`` is the sample standard
        deviation of the differences, ``p`` the two-sided p-value of a zero mean difference. With one pair
        the interval is undefined (NaN).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise InputError(f"paired_difference needs two equal-length non-empty lists, got {a.shape} and {b.shape}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    d = a - b
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        nan = float("nan")
        return {"mean": mean, "sd": nan, "n": n, "ci_low": nan, "ci_high": nan, "half_width": nan, "p": nan}
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)) if sd > 0 else (0.0 if mean else 1.0)
    return {"mean": mean, "sd": sd, "n": n, "ci_low": mean - half, "ci_high": mean + half, "half_width": half, "p": p}


def per_seed_mean(values: dict[tuple[str, int], float]) -> dict[int, float]:
    """``{(task, seed): v}`` -> ``{seed: mean over tasks}``: the unit of an overall paired comparison.

    Every seed must have a value for the same tasks (a missing one would make the averages incomparable).
    """
    tasks = sorted({t for t, _ in values})
    seeds = sorted({s for _, s in values})
    missing = [(t, s) for t in tasks for s in seeds if (t, s) not in values]
    if missing:
        raise InputError(f"per_seed_mean needs every (task, seed); missing {missing[:3]}")
    return {s: float(np.mean([values[(t, s)] for t in tasks])) for s in seeds}
