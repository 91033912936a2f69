"""TR-SVD: tolerance guarantee, exact recovery at the true ranks, fixed ranks, bad input."""

import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given, settings, strategies as st
from tensorly.decomposition import tensor_ring

import trkit
from trkit import TensorRing, tr_svd


def _rel(x, ring):
    return float(torch.linalg.vector_norm(x - ring.to_dense()) / torch.linalg.vector_norm(x))


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(2, 6), min_size=2, max_size=5),
       log_tol=st.floats(-5, -0.3), smooth=st.booleans(), seed=st.integers(0, 1000))
def test_tolerance_guarantee(shape, log_tol, smooth, seed):
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape))
    if smooth:  # a compressible tensor, so truncations actually happen
        x = x.cumsum(0).cumsum(-1)
    tol = 10.0 ** log_tol
    ring, info = tr_svd(x, tol=tol, return_info=True)
    true = _rel(x, ring)  # independent dense reference
    assert true <= tol * (1 + 1e-9)
    assert abs(info.rel_error - true) < 1e-12
    assert true <= info.error_bound * (1 + 1e-9) + 1e-13


@pytest.mark.parametrize("shape,rank", [((32, 32, 32, 32), 4), ((12, 10, 11, 9, 8), 3)])
def test_exact_ring_recovered_at_true_ranks(shape, rank):
    tr = TensorRing.random(shape, rank, seed=1)
    x = tr.to_dense()
    ring, info = tr_svd(x, tol=1e-10, return_info=True)
    assert _rel(x, ring) < 1e-11
    assert all(r <= rank for r in ring.ranks)
    assert ring.n_params <= tr.n_params
    fixed = tr_svd(x, rank=rank)
    assert fixed.ranks == (rank,) * len(shape)
    assert _rel(x, fixed) < 1e-11


def test_beats_tensorly_split_on_exact_ring():
    tr = TensorRing.random((16, 16, 16, 16), 3, seed=2)
    x = tr.to_dense()
    tl.set_backend("numpy")
    tly = tl.tr_to_tensor(tensor_ring(x.numpy(), rank=[3, 3, 3, 3, 3]))
    err_tly = np.linalg.norm(x.numpy() - tly) / np.linalg.norm(x.numpy())
    assert err_tly > 1e-3  # tensorly's arbitrary (r1, r2) split loses the ring
    assert _rel(x, tr_svd(x, rank=3)) < 1e-11


def test_fixed_ranks_list_and_float32():
    x = torch.randn(6, 7, 8, 9, generator=torch.Generator().manual_seed(0)).cumsum(1)
    ring = tr_svd(x.float(), rank=[2, 3, 4, 2])
    assert ring.ranks == (2, 3, 4, 2) and ring.dtype == torch.float32
    # truncation can only lose accuracy relative to larger ranks (same split)
    big = tr_svd(x, rank=[2, 3, 8, 6])
    assert _rel(x, big) <= _rel(x, tr_svd(x, rank=[2, 3, 4, 2])) + 1e-12


def test_unreachable_rank_is_clamped_with_warning():
    x = torch.randn(4, 4, 4, 4, 4, 4, 4, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match="clamped"):
        ring = tr_svd(x, rank=8)  # tensorly raises here (r1 r2 > n1)
    assert ring.ranks[0] * ring.ranks[1] <= 4


@pytest.mark.parametrize("bad,kw,match", [
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), {"tol": 0.1}, "NaN"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), {"tol": 0.1}, "Inf"),
    (torch.ones(3, 3), {"tol": 0.0}, "tol"),
    (torch.ones(3, 3), {"tol": -1.0}, "tol"),
    (torch.ones(3, 3), {"rank": 0}, "rank"),
    (torch.ones(3, 3), {}, "rank"),
    (torch.ones(3), {"tol": 0.1}, "2 modes"),
])
def test_bad_input(bad, kw, match):
    with pytest.raises(ValueError, match=match):
        tr_svd(bad, **kw)


def test_exported_and_deterministic():
    assert trkit.tr_svd is tr_svd
    x = torch.randn(8, 8, 8, generator=torch.Generator().manual_seed(3)).cumsum(0)
    a, b = tr_svd(x, tol=0.05), tr_svd(x, tol=0.05)
    assert all(torch.equal(p, q) for p, q in zip(a.cores, b.cores))
