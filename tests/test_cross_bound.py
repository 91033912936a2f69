"""benchmarks/cross_bound.py: the unfolding singular values it gets through states equal a dense SVD."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # last: its names shadow nothing
cross_bound = pytest.importorskip("cross_bound")


def _dense_tails(x: np.ndarray, k: int, ranks: list[int]) -> list[float]:
    s = np.linalg.svd(x.reshape(int(np.prod(x.shape[:k])), -1), compute_uv=False)
    return [float(np.sqrt((s[r:] ** 2).sum() / (s**2).sum())) for r in ranks]


def test_tails_of_a_function_of_two_sums_match_dense_svd():
    xa, d, ranks = np.linspace(-32.768, 32.768, 33), 3, [2, 4, 6]
    values = [xa**2, np.cos(2 * np.pi * xa)]

    def ackley(s):
        return -20 * np.exp(-0.2 * np.sqrt(s[..., 0] / d)) - np.exp(s[..., 1] / d) + 20 + np.e

    tails = cross_bound.bond_tails(values, d, ackley, ranks)
    grid = np.meshgrid(*[np.arange(33)] * d, indexing="ij")
    dense = ackley(np.stack([sum(v[g] for g in grid) for v in values], -1))
    for k in range(1, d):
        np.testing.assert_allclose([tails[r][k - 1] for r in ranks], _dense_tails(dense, k, ranks), rtol=1e-8)


def test_tails_of_a_function_of_one_sum_match_dense_svd():
    x, d, ranks = np.linspace(0, 1, 16), 4, [3, 5, 8]

    def abs_sin(s):
        return np.abs(np.sin(2 * s[..., 0])) + 0.1

    tails = cross_bound.bond_tails([x], d, abs_sin, ranks)
    grid = np.meshgrid(*[np.arange(16)] * d, indexing="ij")
    dense = np.abs(np.sin(2 * sum(x[g] for g in grid))) + 0.1
    for k in range(1, d):
        np.testing.assert_allclose([tails[r][k - 1] for r in ranks], _dense_tails(dense, k, ranks), rtol=1e-8)


def test_gauss_chain_singular_values_match_dense_svd():
    x, d = np.linspace(0, 1, 8), 6
    grid = np.meshgrid(*[np.arange(8)] * d, indexing="ij")
    dense = np.exp(-2.0 * sum((x[grid[k + 1]] - x[grid[k]]) ** 2 for k in range(d - 1)))
    s = np.linalg.svd(dense.reshape(8 ** (d // 2), -1), compute_uv=False)
    np.testing.assert_allclose(cross_bound.gauss_chain_sigmas(d=d), (s / s[0])[:8], rtol=1e-6)
