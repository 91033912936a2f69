"""TR-SVD: tolerance guarantee, exact recovery at the true ranks, fixed ranks, bad input."""

import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.decomposition import tensor_ring

import trkit
from trkit import TensorRing, tr_svd


def _rel(x, ring):
    return float(torch.linalg.vector_norm(x - ring.to_dense()) / torch.linalg.vector_norm(x))


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(2, 6), min_size=2, max_size=5),
    log_tol=st.floats(-5, -0.3),
    smooth=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_tolerance_guarantee(shape, log_tol, smooth, seed):
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape))
    if smooth:  # a compressible tensor, so truncations actually happen
        x = x.cumsum(0).cumsum(-1)
    tol = 10.0**log_tol
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


@pytest.mark.parametrize(
    "bad,kw,match",
    [
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), {"tol": 0.1}, "NaN"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), {"tol": 0.1}, "Inf"),
        (torch.ones(3, 3), {"tol": float("nan")}, "tol"),
        (torch.ones(3, 3), {"tol": -1.0}, "tol"),
        (torch.ones(3, 3), {"rank": 0}, "rank"),
        (torch.ones(3, 3), {}, "rank"),
        (torch.ones(3), {"tol": 0.1}, "2 modes"),
    ],
)
def test_bad_input(bad, kw, match):
    with pytest.raises(ValueError, match=match):
        tr_svd(bad, **kw)


def test_exported_and_deterministic():
    assert trkit.tr_svd is tr_svd
    x = torch.randn(8, 8, 8, generator=torch.Generator().manual_seed(3)).cumsum(0)
    a, b = tr_svd(x, tol=0.05), tr_svd(x, tol=0.05)
    assert all(torch.equal(p, q) for p, q in zip(a.cores, b.cores))


def _stacked_low_rank(d_in, d_out, L, ranks, ring_seed):
    """A stack of L low-TR-rank (d_in, d_out) matrices as tr_svd sees it, stored in float32
    (what compress_mma feeds it)."""
    x = TensorRing.random((d_in, d_out, L), list(ranks), seed=ring_seed).to_dense()
    return x.float().double()


@pytest.mark.parametrize(
    "shape,ranks,ring_seed,seed",
    [((24, 6, 3), (1, 2, 2), 2, 0), ((16, 8, 4), (2, 1, 2), 3, 1), ((32, 8, 4), (1, 2, 2), 0, 1)],
)
def test_block_split_whole_space_block_regression(shape, ranks, ring_seed, seed):
    # these recursed until RecursionError: a complex pair whose invariant block spanned the
    # whole operator space was "split" again into itself
    x = _stacked_low_rank(*shape, ranks, ring_seed)
    for tol in (0.1, 1e-4):
        ring = tr_svd(x, tol=tol, seed=seed)
        assert _rel(x, ring) <= tol


@settings(max_examples=30, deadline=None)
@given(
    d_in=st.integers(4, 40),
    d_out=st.integers(2, 10),
    L=st.integers(2, 5),
    ranks=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    ring_seed=st.integers(0, 10_000),
    seed=st.integers(0, 5),
    tol=st.sampled_from([0.3, 0.1, 1e-4]),
)
def test_stacked_low_rank_never_raises_and_meets_tol(d_in, d_out, L, ranks, ring_seed, seed, tol):
    x = _stacked_low_rank(d_in, d_out, L, ranks, ring_seed)
    ring = tr_svd(x, tol=tol, seed=seed)
    assert _rel(x, ring) <= tol * (1 + 1e-9)


def test_kron_split_gives_up_cleanly_on_non_ring_operators():
    from trkit.decompose._split import _block_split, kron_split

    rng = np.random.default_rng(0)
    # one 2x2 rotation-like operator family: its only invariant block is the whole space
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])
    assert _block_split([rot, 2 * rot], 1, rng) is None
    assert _block_split([np.eye(4)], 3, rng) is None  # 4 cannot be cut into blocks of 3
    y = rng.standard_normal((6, 40))  # random data: no Kronecker structure
    k = kron_split(y, 2, 3, 4, seed=0)
    assert k is None or np.linalg.cond(k) < 1e10


@settings(max_examples=25, deadline=None)
@given(
    p=st.integers(1, 40), q=st.integers(1, 300), rank=st.integers(1, 12), seed=st.integers(0, 1000), f32=st.booleans()
)
def test_row_basis_matches_svd(p, q, rank, seed, f32):
    from trkit.decompose._lowrank import row_basis

    g = torch.Generator().manual_seed(seed)
    m = torch.randn(p, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, q, generator=g, dtype=torch.float64)
    m = m + 1e-6 * torch.randn(p, q, generator=g, dtype=torch.float64)
    m = m.float() if f32 else m
    u, s, b = row_basis(m)
    eps = 1e-5 if f32 else 1e-12
    scale = float(torch.linalg.matrix_norm(m.double(), 2))
    assert torch.allclose((u @ b).double(), m.double(), atol=eps * scale)
    assert torch.allclose((u.T @ u).double(), torch.eye(u.shape[1], dtype=torch.float64), atol=10 * eps)
    ref = torch.linalg.svdvals(m.double())
    # truncating after r rows costs exactly ||s[r:]|| and never less than the optimal SVD tail
    for r in range(len(s)):
        exact = float(torch.linalg.matrix_norm(m.double() - (u[:, :r] @ b[:r]).double()))
        assert abs(exact - float(torch.linalg.vector_norm(s[r:].double()))) <= 10 * eps * scale
        assert exact >= float(torch.linalg.vector_norm(ref[r:])) - 10 * eps * scale


@settings(max_examples=25, deadline=None)
@given(
    p=st.integers(20, 120),
    q=st.integers(200, 600),
    rank=st.integers(1, 30),
    need=st.integers(1, 20),
    rel=st.floats(1e-8, 0.5),
    seed=st.integers(0, 1000),
)
def test_sketch_rank_never_exceeds_truncation_rank(p, q, rank, need, rel, seed):
    from trkit.decompose.svd import _rank_for, _rank_lower_bound

    g = torch.Generator().manual_seed(seed)
    decay = 0.7 ** torch.arange(rank, dtype=torch.float64)
    m = (torch.randn(p, rank, generator=g, dtype=torch.float64) * decay) @ torch.randn(
        rank, q, generator=g, dtype=torch.float64
    ) + 1e-4 * torch.randn(p, q, generator=g, dtype=torch.float64)
    delta = rel * float(torch.linalg.matrix_norm(m))
    lb = _rank_lower_bound(m, delta, None, need)
    assert lb <= _rank_for(torch.linalg.svdvals(m), delta, None, None)


@pytest.mark.parametrize("noise", [0.0, 1e-4])
def test_sketch_pruning_does_not_change_the_result(monkeypatch, noise):
    import trkit.decompose.svd as svd_mod

    tr = TensorRing.random((16, 14, 16, 12), 3, seed=4)
    x = tr.to_dense() + noise * torch.randn(
        16, 14, 16, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    fired = []
    real = svd_mod._rank_lower_bound

    def spy(mat, delta, cap, need):
        out = real(mat, delta, cap, need)
        fired.append(out >= need)
        return out

    runs = {}
    for name, fn in (("sketch", spy), ("off", lambda *a: 0)):
        monkeypatch.setattr(svd_mod, "_rank_lower_bound", fn)
        runs[name] = [tr_svd(x, tol=tol, start=s0) for tol in (1e-2, 1e-6) for s0 in ("auto", 0, 2)]
    assert any(fired)  # the sketch did prune something
    for a, b in zip(runs["sketch"], runs["off"]):
        assert a.ranks == b.ranks and all(torch.equal(p, q) for p, q in zip(a.cores, b.cores))
