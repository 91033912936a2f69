"""Blocked steps of TR-SVD (the Gram matrix of row_basis, relative_error) against the whole-tensor
computations they stand for: same numbers within rounding, whatever the block size."""

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trkit
from trkit import TensorRing
from trkit.decompose._common import relative_error
from trkit.decompose._lowrank import row_basis

DTYPES = {"float32": torch.float32, "float64": torch.float64, "complex64": torch.complex64}


def _low_rank(p, q, rank, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    m = torch.randn(p, rank, generator=g, dtype=wide) @ torch.randn(rank, q, generator=g, dtype=wide)
    return (m + 1e-3 * torch.randn(p, q, generator=g, dtype=wide)).to(dtype)


@settings(max_examples=20, deadline=None)
@given(
    p=st.integers(2, 24),
    q=st.integers(24, 400),
    rank=st.integers(1, 6),
    seed=st.integers(0, 1000),
    dtype=st.sampled_from(list(DTYPES)),
    block_bytes=st.sampled_from([1, 200, 1000, 5000]),  # 1: a column per block
)
def test_blocked_gram_gives_the_whole_matrix_basis(p, q, rank, seed, dtype, block_bytes):
    m = _low_rank(p, q, rank, seed, DTYPES[dtype])
    u, s, b = row_basis(m, block_bytes=block_bytes)
    ref_u, ref_s, ref_b = row_basis(m, block_bytes=1 << 40)  # one block: the whole widened matrix
    eps = 1e-12 if dtype == "float64" else 1e-5
    scale = float(torch.linalg.vector_norm(ref_s))
    assert torch.allclose(s.double(), ref_s.double(), atol=10 * eps * scale)
    assert torch.allclose((u @ b).to(torch.complex128), m.to(torch.complex128), atol=10 * eps * scale)
    # the leading subspace (gauge-free: eigenvector signs or phases may differ) is the same
    r = min(rank, p)
    tail = float(ref_s[r:].max()) if r < len(ref_s) else 0.0
    if float(ref_s[r - 1]) > 100 * tail:
        proj, ref_proj = (v[:, :r] @ v[:, :r].mH for v in (u, ref_u))
        assert torch.allclose(proj.to(torch.complex128), ref_proj.to(torch.complex128), atol=100 * eps)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("block_bytes", [40, 300, 5000, 8 << 20])
def test_blocked_relative_error_equals_the_dense_one(dtype, block_bytes):
    shape = (6, 5, 7, 4)
    dt = DTYPES[dtype]
    ring = TensorRing.random(shape, 2, seed=1, dtype=dt)
    x = (ring.to_dense() + 0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=dt)).to(dt)
    dense = float(torch.linalg.vector_norm((x - ring.to_dense()).to(torch.complex128)))
    xn = float(torch.linalg.vector_norm(x.to(torch.complex128)))
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert relative_error(x, ring, block_bytes=block_bytes) == pytest.approx(dense / xn, rel=tol)
    assert relative_error(x, ring, 1.0, block_bytes=block_bytes) == pytest.approx(dense, rel=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kw", [{"rank": 3}, {"tol": 1e-3}])
def test_tr_svd_with_small_blocks_equals_tr_svd_with_one_block(monkeypatch, dtype, kw):
    import trkit.decompose.svd as svd_mod

    dt = DTYPES[dtype]
    ring = TensorRing.random((12, 10, 14, 9), 3, seed=3, dtype=torch.float64)
    x = (ring.to_dense() + 1e-4 * torch.randn(12, 10, 14, 9, generator=torch.Generator().manual_seed(4))).to(dt)
    runs = []
    for block_bytes in (4096, 1 << 40):  # 4096: ~15 blocks of x, 1 to 12 Gram column blocks
        monkeypatch.setattr(svd_mod, "row_basis", functools.partial(row_basis, block_bytes=block_bytes))
        monkeypatch.setattr(svd_mod, "relative_error", functools.partial(relative_error, block_bytes=block_bytes))
        runs.append(trkit.tr_svd(x, return_info=True, **kw))
    (small, small_info), (whole, whole_info) = runs
    tol = 1e-10 if dtype == "float64" else 1e-4
    assert small.ranks == whole.ranks
    norm = float(torch.linalg.vector_norm(x.double()))
    assert float(torch.linalg.vector_norm(small.to_dense().double() - whole.to_dense().double())) <= tol * norm
    assert small_info.rel_error == pytest.approx(whole_info.rel_error, rel=1e-3, abs=tol)


@settings(max_examples=50, deadline=None)
@given(order=st.integers(1, 12).flatmap(lambda n: st.permutations(list(range(n)))))
def test_permute_rows_in_place_equals_indexing(order):
    from trkit.decompose._lowrank import _permute_rows_

    a = torch.randn(len(order), 5, generator=torch.Generator().manual_seed(len(order)))
    expected = a[torch.tensor(order)]
    _permute_rows_(a, order)
    assert torch.equal(a, expected)
