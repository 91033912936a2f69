"""Regressions of issue 13 (a tensorly/quimb user's port): one test per defect, named after it.

Each compares with an independent reference: the dense tensor, or the same algorithm on a
rotated tensor.
"""

import math
import warnings

import numpy as np
import pytest
import tensorly as tl
import torch

import trkit
from trkit import TensorRing


def _rel(x, ring) -> float:
    x = torch.as_tensor(np.asarray(x))
    return float(torch.linalg.vector_norm(x - ring.to_dense()) / torch.linalg.vector_norm(x))


def _tensorly_ring(shape, rank, seed):
    tl.set_backend("numpy")
    return tl.random.random_tr(shape, rank, full=True, random_state=seed, dtype=tl.float64)


def test_1_start_mode_clamps_ranks_in_its_own_frame():
    x = _tensorly_ring((6, 2, 3, 2, 6), (12, 2, 1, 3, 6, 12), 1234)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ranks fit when the ring is cut at mode 1: no clamping
        ring = trkit.tr_svd(x, (12, 2, 1, 3, 6), start=1)
    assert ring.ranks == (12, 2, 1, 3, 6)
    assert _rel(x, ring) < 1e-12  # main: clamped to [3, 2, 1, 3, 6], error 1.5e-2


@pytest.mark.parametrize("start", [1, 2, 3])
def test_2_nonzero_start_equals_the_rotated_tensor_at_start_0(start):
    x = torch.from_numpy(np.random.default_rng(0).random((4, 2, 4, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rank 2 is clamped next to the size-2 mode
        ring = trkit.tr_svd(x, rank=2, start=start)  # main: RuntimeError from a matmul in svd.py
        rotated = trkit.tr_svd(x.permute([(start + j) % 4 for j in range(4)]), rank=ring.shift(start).ranks)
    assert torch.allclose(ring.shift(start).to_dense(), rotated.to_dense(), atol=1e-12)


@pytest.mark.parametrize("seed", [1, 1234])
def test_3_als_reports_accurate_errors_and_reaches_working_precision(seed):
    shape, rank = (6, 2, 3, 2, 6), (3, 2, 4, 12, 18, 3)
    x = torch.from_numpy(_tensorly_ring(shape, rank, seed))
    seen = []
    ring, info = trkit.tr_als(
        x, rank, init="random", seed=seed, return_info=True, callback=lambda r, i: seen.append((r, i.rel_error))
    )
    # what the callback and the history say is the dense error of the iterate the callback saw
    assert [e for _, e in seen] == info.history
    for r, e in seen:
        dense = _rel(x, r)
        assert abs(e - dense) <= 1e-3 * dense + 1e-15
    assert _rel(x, ring) < 1e-13  # main: 100 sweeps ending between 1e-9 and 1e-12
    assert info.converged and info.n_iter <= 5


def test_3_noisy_history_is_monotone_within_rounding():
    x = TensorRing.random((8, 9, 10, 7), 3, seed=0).to_dense()
    x = x + 1e-6 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    _, info = trkit.tr_als(x, 3, init="random", seed=2, max_iter=60, stop_tol=0, return_info=True)
    h = np.array(info.history)
    assert np.all(np.diff(h) <= 1e-9 * h[1:])  # ALS never increases the error


@pytest.mark.parametrize("source", ["numpy", "torch", "callable"])
def test_4_sampled_keeps_float32(source):
    x = TensorRing.random((6, 7, 5), 2, seed=1).to_numpy().astype(np.float32)
    data = {"numpy": x, "torch": torch.from_numpy(x), "callable": lambda idx: x[tuple(idx.T)]}[source]
    ring = trkit.tr_als_sampled(data, 2, shape=x.shape, n_samples=200, max_iter=5)
    assert ring.dtype == torch.float32  # main: float64


def test_5_rounding_a_sum_finds_the_exact_low_rank_ring():
    a = TensorRing.random((6, 7, 8, 5), 3, seed=1)
    two_a = (2 * a).to_dense()
    out, info = trkit.tr_round(a + a, max_rank=3, refine=50, return_info=True)
    assert out.ranks == (3, 3, 3, 3) and _rel(two_a, out) < 1e-12  # main: 0.31
    assert info.rel_error >= _rel(two_a, out) and info.rel_error < 1e-12
    out = trkit.tr_round(a + a, tol=1e-12)  # tolerance mode finds it too
    assert out.ranks == (3, 3, 3, 3) and _rel(two_a, out) < 1e-12


def test_5_rounding_a_doubled_periodic_state():
    """quimb's compress test on a periodic MPS: p + p back to bond dimension 7 (p built by hand:
    a random normalised cyclic MPS of 10 qubits)."""
    p = TensorRing.random((2,) * 10, 7, seed=3)
    p = p / float(p.norm())
    out = trkit.tr_round(p + p, max_rank=7, refine=100)  # main: stays at 0.16
    assert max(out.ranks) == 7
    assert abs(float(trkit.inner(out, p)) - 2) < 1e-12 and _rel((2 * p).to_dense(), out) < 1e-12


def test_6_star_import_leaves_builtin_round_alone():
    namespace: dict = {}
    exec("from trkit import *\nvalue = round(2.5)", namespace)
    assert namespace["value"] == 2  # main: TypeError from trkit.round
    assert "round" not in trkit.__all__ and "tr_round" in trkit.__all__
    ring = TensorRing.random((3, 4, 5), 2, seed=0)
    with pytest.warns(DeprecationWarning, match="tr_round"):
        out, err = trkit.round(ring, max_rank=1)  # the old name and tuple form keep working
    assert out.ranks == (1, 1, 1) and math.isclose(err, _rel(ring.to_dense(), out), rel_tol=1e-6)


def test_7_numpy_array_protocol_densifies_once(monkeypatch):
    ring = TensorRing.random((10, 10, 10, 10, 10), 3, seed=0)
    want = ring.to_numpy()

    def no_entrywise(*a, **k):
        raise AssertionError("np.asarray went through __getitem__")

    monkeypatch.setattr(TensorRing, "__getitem__", no_entrywise)
    got = np.asarray(ring)
    assert got.shape == ring.shape and np.array_equal(got, want)
    assert np.asarray(ring, dtype=np.float32).dtype == np.float32
    assert isinstance(np.float64(2.0) * ring, TensorRing)  # numpy scalars scale, never densify


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_8_complex_decompositions_match_dense(dtype):
    g = torch.Generator().manual_seed(0)
    cores = [torch.randn(r0, n, r1, generator=g, dtype=dtype) for r0, n, r1 in ((2, 7, 3), (3, 6, 2), (2, 4, 2))]
    ring = TensorRing(cores)
    x = ring.to_dense()
    small = 1e-4 if dtype == torch.complex64 else 1e-11
    svd = trkit.tr_svd(x, tol=1e-6 if dtype == torch.complex64 else 1e-12)
    assert svd.dtype == dtype and _rel(x, svd) < 10 * small
    noisy = x + 0.01 * torch.randn(x.shape, generator=g, dtype=dtype)
    als, info = trkit.tr_als(noisy, ring.ranks, return_info=True)
    assert als.dtype == dtype and abs(info.rel_error - _rel(noisy, als)) < small
    assert info.rel_error <= _rel(noisy, trkit.tr_svd(noisy, rank=ring.ranks)) + small  # ALS improves on TR-SVD
    # norm and inner conjugate the first argument, as numpy's vdot does
    other = TensorRing([torch.randn(c.shape, generator=g, dtype=dtype) for c in cores])
    want = np.vdot(x.numpy(), other.to_numpy())
    assert abs(complex(trkit.inner(ring, other)) - want) < small * abs(want) * 10
    assert abs(float(trkit.norm(ring)) - np.linalg.norm(x.numpy())) < small * np.linalg.norm(x.numpy())
    rounded, rinfo = trkit.tr_round(ring + ring, tol=1e-6, return_info=True)
    assert rounded.ranks == ring.ranks and _rel(2 * x, rounded) < 10 * small and rinfo.rel_error >= 0


def _positive_ring(seed, n=8, r=2, d=4):
    rng = np.random.default_rng(seed)
    return TensorRing([torch.from_numpy(rng.random((r, n, r))) for _ in range(d)]).to_dense()


def test_9_sampled_default_start_handles_positive_cores():
    passed = 0
    for seed in range(10):
        x = _positive_ring(seed)
        ring = trkit.tr_als_sampled(x, 2, n_samples=400, max_iter=30, seed=seed)
        passed += _rel(x, ring) < 1e-6
    assert passed == 10  # main: 1 of 10 from the Gaussian start


def test_10_tol_zero_and_stop_tol_zero_are_accepted():
    x = TensorRing.random((5, 6, 7), 2, seed=2).to_dense()
    noisy = x + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    _, info = trkit.tr_als(noisy, 2, tol=0, stop_tol=0, max_iter=6, return_info=True)
    assert info.n_iter == 6 and info.tol == 0 and info.tol_met is False  # ran every sweep
    _, info = trkit.tr_als_sampled(noisy, 2, tol=0, stop_tol=0, max_iter=4, n_samples=100, return_info=True)
    assert info.n_iter == 4
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    _, info = trkit.tr_complete(noisy, 2, mask=mask, tol=0, stop_tol=0, max_iter=5, return_info=True)
    assert info.n_iter == 5
    exact = trkit.tr_svd(x, tol=0)  # exact: every nonzero singular value kept
    assert _rel(x, exact) < 1e-13
