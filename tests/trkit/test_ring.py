"""TensorRing format: dense form, entries, slicing, reordering, validation (vs tensorly / loops)."""

import itertools

import numpy as np
import pytest
import tensorly as tl
import torch
from _strategies import SETTINGS, rings
from hypothesis import given
from hypothesis import strategies as st

import trkit
from trkit import TensorRing


def tensorly_dense(tr):
    tl.set_backend("numpy")
    return torch.from_numpy(np.asarray(tl.tr_to_tensor([c.detach().numpy() for c in tr.cores])))


def loop_dense(tr):
    """The trace formula entry by entry, in plain Python."""
    out = torch.zeros(tr.shape, dtype=tr.dtype)
    for idx in itertools.product(*map(range, tr.shape)):
        m = torch.eye(tr.ranks[0], dtype=tr.dtype)
        for k, i in enumerate(idx):
            m = m @ tr.cores[k][:, i, :]
        out[idx] = torch.trace(m)
    return out


@SETTINGS
@given(rings())
def test_to_dense_matches_tensorly_and_trace_loop(tr):
    dense = tr.to_dense()
    assert dense.shape == tr.shape
    assert torch.allclose(dense, tensorly_dense(tr), rtol=1e-10, atol=1e-12)
    if tr.numel <= 600:
        assert torch.allclose(dense, loop_dense(tr), rtol=1e-10, atol=1e-12)


def test_properties_and_conversions():
    cores = [np.random.default_rng(0).standard_normal(s) for s in [(2, 3, 4), (4, 5, 1), (1, 6, 2)]]
    tr = TensorRing(cores)  # numpy accepted
    assert tr.shape == (3, 5, 6) and tr.ranks == (2, 4, 1) and tr.ndim == 3 and len(tr) == 3
    assert tr.n_params == 2 * 3 * 4 + 4 * 5 * 1 + 1 * 6 * 2
    assert tr.dtype == torch.float64 and tr.device == torch.device("cpu")
    assert not tr.is_tensor_train and tr.shift(2).is_tensor_train
    f32 = tr.to(torch.float32)
    assert f32.dtype == torch.float32 and torch.allclose(f32.to_dense().double(), tr.to_dense(), atol=1e-5)
    tr.requires_grad_()
    assert all(c.requires_grad for c in tr.cores)
    assert not any(c.requires_grad for c in tr.detach().cores)
    assert "TensorRing(shape=(3, 5, 6)" in repr(tr)


@SETTINGS
@given(rings(), st.data())
def test_entries_match_dense_indexing(tr, data):
    m = data.draw(st.integers(0, 40))
    idx = torch.stack([torch.randint(0, n, (m,)) for n in tr.shape], 1)
    chunk = data.draw(st.sampled_from([None, 1, 7]))
    got = tr.entries(idx.numpy() if m % 2 else idx, chunk_size=chunk)
    assert got.shape == (m,)
    assert torch.allclose(got, tensorly_dense(tr)[tuple(idx.T)], rtol=1e-10, atol=1e-12)


@st.composite
def index_keys(draw, shape):
    key = []
    for n in shape:
        kind = draw(st.sampled_from(["int", "slice", "all"]))
        if kind == "int":
            key.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            a = draw(st.integers(0, n - 1))
            key.append(slice(a, draw(st.integers(a + 1, n)), draw(st.integers(1, 2))))
        else:
            key.append(slice(None))
    return tuple(key)


@SETTINGS
@given(rings(), st.data())
def test_getitem_and_select_match_dense(tr, data):
    dense = tensorly_dense(tr)
    key = data.draw(index_keys(tr.shape))
    got = tr[key]
    want = dense[key]
    got = got.to_dense() if isinstance(got, TensorRing) else got
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    mode = data.draw(st.integers(0, tr.ndim - 1))
    i = data.draw(st.integers(0, tr.shape[mode] - 1))
    sel = tr.select(mode, i)
    assert sel.ndim == tr.ndim - 1
    assert torch.allclose(sel.to_dense(), dense.select(mode, i), rtol=1e-10, atol=1e-12)


def test_getitem_ellipsis_and_scalar():
    tr = TensorRing.random((3, 4, 5), (2, 3, 2), seed=1)
    dense = tr.to_dense()
    assert torch.allclose(tr[..., 2].to_dense(), dense[..., 2])
    assert torch.allclose(tr[1, ..., 1:3].to_dense(), dense[1, ..., 1:3])
    assert torch.allclose(tr[2, 3, 4], dense[2, 3, 4])
    one = TensorRing.random((4,), 3, seed=2)
    assert torch.allclose(one.select(0, 1), torch.trace(one.cores[0][:, 1, :]))


@SETTINGS
@given(rings(), st.integers(-7, 7))
def test_shift_rotates_modes_and_reverse_flips(tr, k):
    d, dense = tr.ndim, tensorly_dense(tr)
    perm = [(j + k) % d for j in range(d)]
    assert torch.allclose(tr.shift(k).to_dense(), dense.permute(perm), rtol=1e-10, atol=1e-12)
    assert torch.allclose(tr.reverse().to_dense(), dense.permute(list(range(d))[::-1]), rtol=1e-10, atol=1e-12)


@SETTINGS
@given(rings(max_d=5), st.data())
def test_merge_and_split_modes(tr, data):
    d, dense = tr.ndim, tensorly_dense(tr)
    start = data.draw(st.integers(0, d - 1))
    stop = data.draw(st.integers(start + 1, d))
    merged = tr.merge_modes(start, stop)
    assert torch.allclose(
        merged.to_dense(), dense.reshape(*tr.shape[:start], -1, *tr.shape[stop:]), rtol=1e-10, atol=1e-12
    )
    back = merged.split_mode(start, tr.shape[start:stop])
    assert back.shape == tr.shape
    assert torch.allclose(back.to_dense(), dense, rtol=1e-9, atol=1e-10)


def test_split_mode_truncates_with_max_rank():
    x = torch.outer(torch.randn(4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)).reshape(1, 24, 1)
    y = torch.randn(1, 24, 1, dtype=torch.float64)
    assert TensorRing([y]).split_mode(0, [4, 6], max_rank=3).ranks == (1, 3)
    tr = TensorRing([x]).split_mode(0, [4, 6], tol=1e-12)
    assert tr.ranks == (1, 1)  # the 4 x 6 unfolding has rank 1
    assert torch.allclose(tr.to_dense(), x.reshape(4, 6))


def test_tensor_train():
    rng = np.random.default_rng(2)
    tt = TensorRing.from_tensor_train(
        [rng.standard_normal((3, 2)), rng.standard_normal((2, 4, 3)), rng.standard_normal((3, 5))]
    )
    assert tt.is_tensor_train and tt.ranks == (1, 2, 3) and tt.shape == (3, 4, 5)
    ref = np.einsum("ia,ajb,bk->ijk", tt.cores[0][0].numpy(), tt.cores[1].numpy(), tt.cores[2][..., 0].numpy())
    assert np.allclose(tt.to_numpy(), ref)
    with pytest.raises(ValueError, match="boundary ranks must be 1: first core has left rank 2"):
        TensorRing.from_tensor_train([torch.randn(2, 3, 2), torch.randn(2, 3, 1)])
    with pytest.raises(ValueError, match="at least one core"):
        TensorRing.from_tensor_train([])


def test_gradcheck_to_dense_and_entries():
    tr = TensorRing.random((2, 3, 2), (2, 1, 3), seed=3).requires_grad_()
    idx = torch.tensor([[0, 1, 1], [1, 2, 0], [1, 0, 1]])
    assert torch.autograd.gradcheck(lambda *c: TensorRing(c, validate=False).to_dense(), tuple(tr.cores))
    assert torch.autograd.gradcheck(lambda *c: TensorRing(c, validate=False).entries(idx), tuple(tr.cores))
    assert torch.autograd.gradcheck(lambda *c: TensorRing(c, validate=False)[1, :, 0].to_dense(), tuple(tr.cores))


def test_large_ring_entries_without_dense():
    d, n, r = 12, 10, 8
    tr = TensorRing.random([n] * d, r, seed=4)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, n, (2000, d), generator=g)
    got = tr.entries(idx, chunk_size=512)
    # independent references: the trace formula for a few rows, and one-hot vector contraction
    for row in range(3):
        m = torch.eye(r, dtype=tr.dtype)
        for k in range(d):
            m = m @ tr.cores[k][:, idx[row, k], :]
        assert torch.allclose(got[row], torch.trace(m), rtol=1e-10)
    onehots = [torch.nn.functional.one_hot(idx[5, k], n).double() for k in range(d)]
    assert torch.allclose(got[5], trkit.contract_vectors(tr, onehots), rtol=1e-10)


def test_validation_messages():
    with pytest.raises(ValueError, match="at least one core"):
        TensorRing([])
    with pytest.raises(ValueError, match=r"core 1 must be 3-way \(r_k, n_k, r_k\+1\), got shape \(2, 3\)"):
        TensorRing([torch.randn(2, 3, 2), torch.randn(2, 3)])
    with pytest.raises(ValueError, match="core 0 has dtype torch.int64; cores must be floating point"):
        TensorRing([torch.ones(1, 2, 1, dtype=torch.int64)])
    with pytest.raises(ValueError, match="core 1 has dtype torch.float32 but core 0 has torch.float64"):
        TensorRing([torch.randn(2, 3, 2, dtype=torch.float64), torch.randn(2, 3, 2)])
    with pytest.raises(ValueError, match="core 1 is on meta but core 0 is on cpu"):
        TensorRing([torch.randn(2, 3, 2), torch.empty(2, 3, 2, device="meta")])
    with pytest.raises(ValueError, match=r"core 0 has shape \(2, 0, 2\): ranks and mode sizes must be >= 1"):
        TensorRing([torch.randn(2, 0, 2)])
    with pytest.raises(
        ValueError, match="ranks disagree between core 1 and core 2: core 1 has right rank 4, core 2 has left rank 3"
    ):
        TensorRing([torch.randn(2, 3, 3), torch.randn(3, 3, 4), torch.randn(3, 3, 2)])
    with pytest.raises(ValueError, match="ranks disagree between core 1 and core 0"):
        TensorRing([torch.randn(2, 3, 3), torch.randn(3, 3, 5)])
    with pytest.raises(ValueError, match="core 1 contains NaN or Inf"):
        TensorRing([torch.randn(1, 3, 1), torch.full((1, 3, 1), float("nan"))])
    with pytest.raises(TypeError, match="object array"):
        TensorRing([np.array([None, 1], dtype=object)])
    with pytest.raises(ValueError, match="got 2 ranks for 3 modes"):
        TensorRing.random((2, 2, 2), (1, 2))


def test_index_errors():
    tr = TensorRing.random((3, 4, 5), 2, seed=0)
    with pytest.raises(ValueError, match=r"index must be an integer array of shape \(m, 3\), got torch.int64 \(4, 2\)"):
        tr.entries(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="index must be an integer array"):
        tr.entries(torch.zeros(4, 3))
    with pytest.raises(IndexError, match=r"index for mode 1 must be in \[0, 4\), got values in \[4, 4\]"):
        tr.entries([[0, 4, 0]])
    with pytest.raises(IndexError, match=r"mode must be an int in \[-3, 3\), got 3"):
        tr.select(3, 0)
    with pytest.raises(IndexError, match="index 5 is out of range for mode 2 of size 5"):
        tr.select(2, 5)
    with pytest.raises(IndexError, match="too many indices: 4 for a ring of order 3"):
        tr[0, 0, 0, 0]
    with pytest.raises(IndexError, match="single ellipsis"):
        tr[..., 0, ...]
    with pytest.raises(TypeError, match="indices must be ints, slices or '...', got list for mode 0"):
        tr[[0, 1]]
    with pytest.raises(IndexError, match="selects nothing from mode 0"):
        tr[3:]
    with pytest.raises(ValueError, match="merge_modes needs 0 <= start < stop <= 3, got start=2, stop=2"):
        tr.merge_modes(2, 2)
    with pytest.raises(ValueError, match=r"sizes \[2, 3\] must be >= 1 and multiply to mode 1's size 4"):
        tr.split_mode(1, [2, 3])
