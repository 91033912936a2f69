"""Algebra on rings vs the dense tensor (independent reference: tensorly.tr_to_tensor / torch)."""

import numpy as np
import pytest
import tensorly as tl
import torch
from _strategies import SETTINGS, ring_specs
from hypothesis import given
from hypothesis import strategies as st

import trkit


def dense_ref(tr: trkit.TensorRing) -> torch.Tensor:
    """tensorly's reconstruction: independent of trkit's contraction code."""
    tl.set_backend("numpy")
    return torch.from_numpy(np.asarray(tl.tr_to_tensor([c.detach().numpy() for c in tr.cores])))


@SETTINGS
@given(ring_specs(), st.data())
def test_inner_and_norm_match_dense(spec, data):
    shape, ranks, seed = spec
    ranks_b = data.draw(st.lists(st.integers(1, 4), min_size=len(shape), max_size=len(shape)))
    a = trkit.TensorRing.random(shape, ranks, seed=seed)
    b = trkit.TensorRing.random(shape, ranks_b, seed=seed + 1)
    da, db = dense_ref(a), dense_ref(b)
    assert torch.allclose(trkit.inner(a, b), (da * db).sum(), rtol=1e-10, atol=1e-10)
    assert torch.allclose(a.norm(), torch.linalg.norm(da.reshape(-1)), rtol=1e-10, atol=1e-12)


def pair(spec, data, same_ranks=False):
    shape, ranks, seed = spec
    ranks_b = ranks if same_ranks else data.draw(st.lists(st.integers(1, 4), min_size=len(shape), max_size=len(shape)))
    return trkit.TensorRing.random(shape, ranks, seed=seed), trkit.TensorRing.random(shape, ranks_b, seed=seed + 7)


@SETTINGS
@given(ring_specs(), st.data())
def test_add_sub_scale_match_dense_and_ranks_add(spec, data):
    a, b = pair(spec, data)
    da, db = dense_ref(a), dense_ref(b)
    s, diff = a + b, a - b
    if not (a.is_tensor_train and b.is_tensor_train):
        assert s.ranks == tuple(x + y for x, y in zip(a.ranks, b.ranks))
    assert torch.allclose(s.to_dense(), da + db, rtol=1e-10, atol=1e-12)
    assert torch.allclose(diff.to_dense(), da - db, rtol=1e-10, atol=1e-12)
    alpha = data.draw(st.floats(-3, 3, allow_nan=False).filter(lambda x: abs(x) > 1e-3))
    for got, want in [(alpha * a, alpha * da), (a * alpha, alpha * da), (-a, -da), (a / alpha, da / alpha)]:
        assert got.ranks == a.ranks
        assert torch.allclose(got.to_dense(), want, rtol=1e-10, atol=1e-12)


def test_tensor_trains_stay_tensor_trains_under_addition():
    a = trkit.TensorRing.random((3, 4, 5), (1, 2, 3), seed=0)
    b = trkit.TensorRing.random((3, 4, 5), (1, 3, 2), seed=1)
    s = a + b
    assert s.ranks == (1, 5, 5) and s.is_tensor_train
    assert torch.allclose(s.to_dense(), a.to_dense() + b.to_dense())


@SETTINGS
@given(ring_specs(max_r=3), st.data())
def test_hadamard_matches_dense_and_ranks_multiply(spec, data):
    a, b = pair(spec, data)
    h = trkit.hadamard(a, b)
    assert h.ranks == tuple(x * y for x, y in zip(a.ranks, b.ranks))
    assert torch.allclose(h.to_dense(), dense_ref(a) * dense_ref(b), rtol=1e-10, atol=1e-12)


@SETTINGS
@given(ring_specs(), st.data())
def test_mode_product_matches_tensordot(spec, data):
    shape, ranks, seed = spec
    a = trkit.TensorRing.random(shape, ranks, seed=seed)
    mode = data.draw(st.integers(0, len(shape) - 1))
    j = data.draw(st.integers(1, 5))
    m = np.random.default_rng(seed).standard_normal((j, shape[mode]))
    got = trkit.mode_product(a, m, mode)  # numpy matrix accepted
    want = torch.movedim(torch.tensordot(dense_ref(a), torch.from_numpy(m), dims=([mode], [1])), -1, mode)
    assert got.ranks == a.ranks and torch.allclose(got.to_dense(), want, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(ring_specs())
def test_contract_vectors_matches_einsum(spec):
    shape, ranks, seed = spec
    a = trkit.TensorRing.random(shape, ranks, seed=seed)
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(n, generator=g, dtype=torch.float64) for n in shape]
    want = dense_ref(a)
    for v in vs:
        want = torch.tensordot(want, v, dims=([0], [0]))
    assert torch.allclose(trkit.contract_vectors(a, vs), want, rtol=1e-10, atol=1e-12)


def test_tensorize():
    x = torch.arange(32 * 12.0).reshape(32, 12)
    assert torch.equal(trkit.tensorize(x, [4, 8, 3, 4]), x.reshape(4, 8, 3, 4))
    y = trkit.tensorize(x.numpy(), ([4, 8], [3, 4]))
    assert torch.equal(y, x.reshape(4, 8, 3, 4))
    z = trkit.tensorize(x, ([4, 8], [3, 4]), interleave=True)
    assert z.shape == (4, 3, 8, 4)
    assert z[1, 2, 5, 3] == x[1 * 8 + 5, 2 * 4 + 3]
    with pytest.raises(ValueError, match=r"modes \[4, 8, 3\] multiply to 96, but x has 384 entries"):
        trkit.tensorize(x, [4, 8, 3])
    with pytest.raises(ValueError, match=r"modes \[4, 4\] multiply to 16, but axis 0 has size 32"):
        trkit.tensorize(x, ([4, 4], [3, 4]))
    with pytest.raises(ValueError, match="got 1 mode lists for a tensor with 2 axes"):
        trkit.tensorize(x, ([4, 8],))
    with pytest.raises(ValueError, match="interleave needs the same number of modes per axis"):
        trkit.tensorize(x, ([32], [3, 4]), interleave=True)


def test_gradcheck_inner_norm_and_scale():
    a = trkit.TensorRing.random((2, 3, 2), (2, 1, 3), seed=5).requires_grad_()
    b = trkit.TensorRing.random((2, 3, 2), (1, 2, 2), seed=6).requires_grad_()
    na = len(a.cores)
    ring = lambda cs: trkit.TensorRing(cs, validate=False)  # noqa: E731
    assert torch.autograd.gradcheck(lambda *c: trkit.inner(ring(c[:na]), ring(c[na:])), tuple(a.cores + b.cores))
    assert torch.autograd.gradcheck(lambda *c: ring(c).norm(), tuple(a.cores))
    alpha = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: trkit.scale(a.detach(), s).to_dense(), (alpha,))
    assert torch.autograd.gradcheck(
        lambda *c: trkit.hadamard(ring(c[:na]), ring(c[na:])).norm(), tuple(a.cores + b.cores)
    )


def test_float32_matches_float64():
    a = trkit.TensorRing.random((4, 5, 6, 3), (2, 3, 2, 4), seed=8)
    b = trkit.TensorRing.random((4, 5, 6, 3), 3, seed=9)
    a32, b32 = a.to(torch.float32), b.to(torch.float32)
    assert trkit.inner(a32, b32).dtype == torch.float32
    assert torch.allclose(trkit.inner(a32, b32).double(), trkit.inner(a, b), rtol=1e-4)
    assert torch.allclose(a32.norm().double(), a.norm(), rtol=1e-5)
    assert trkit.inner(a32, b).dtype == torch.float64  # mixed precision promotes


def test_large_ring_norm_inner_closed_form():
    d, n, r = 12, 10, 8  # dense would have 1e12 entries
    g = torch.Generator().manual_seed(0)
    # G_k[:, i, :] = c_k[i] * I_r  =>  X[i] = r * prod_k c_k[i_k]  =>  ||X|| = r * prod_k ||c_k||
    cs = [torch.randn(n, generator=g, dtype=torch.float64) for _ in range(d)]
    eye = torch.eye(r, dtype=torch.float64)
    known = trkit.TensorRing([torch.einsum("i,ab->aib", c, eye) for c in cs])
    closed = r * torch.stack([c.norm() for c in cs]).prod()
    assert torch.allclose(known.norm(), closed, rtol=1e-10)
    # rank-1 ring: the norm is the product of the core norms
    ones = trkit.TensorRing([c.reshape(1, n, 1) for c in cs])
    assert torch.allclose(ones.norm(), closed / r, rtol=1e-10)
    rand = trkit.TensorRing.random([n] * d, r, seed=1)
    nrm, ip = rand.norm(), trkit.inner(rand, rand)
    assert torch.isfinite(nrm) and torch.allclose(nrm, ip.sqrt(), rtol=1e-10)
    # <known, rand> = sum_i r prod c_k[i_k] X[i] = r * contract_vectors(rand, cs)
    assert torch.allclose(trkit.inner(known, rand), r * trkit.contract_vectors(rand, cs), rtol=1e-8)
    # float32: renormalised sweep stays finite although <rand, rand> ~ 1e12
    assert torch.allclose(rand.to(torch.float32).norm().double(), nrm, rtol=1e-4)
    # ||1e14 * rand||^2 ~ 1e40 overflows float32, its norm (~1e20) must not
    huge = trkit.scale(rand, 1e14).to(torch.float32).norm()
    assert torch.isfinite(huge) and torch.allclose(huge.double(), 1e14 * nrm, rtol=1e-4)


def test_algebra_errors():
    a = trkit.TensorRing.random((2, 3), 2, seed=0)
    b = trkit.TensorRing.random((2, 4), 2, seed=0)
    with pytest.raises(ValueError, match=r"inner: shapes differ, \(2, 3\) vs \(2, 4\)"):
        trkit.inner(a, b)
    with pytest.raises(ValueError, match="add: shapes differ"):
        a + b
    with pytest.raises(ValueError, match="hadamard: shapes differ"):
        trkit.hadamard(a, b)
    with pytest.raises(TypeError, match="a must be a TensorRing or a sequence of cores, got Tensor"):
        trkit.inner(torch.zeros(2, 3), a)
    with pytest.raises(TypeError, match="unsupported operand"):
        a + 1.0
    with pytest.raises(ValueError, match=r"alpha must be a scalar, got a tensor of shape \(2,\)"):
        trkit.scale(a, torch.ones(2))
    with pytest.raises(TypeError, match="alpha must be a number or a 0-d tensor, got str"):
        trkit.scale(a, "2")
    with pytest.raises(ValueError, match=r"matrix must have shape \(J, 3\) for mode 1, got \(4, 2\)"):
        trkit.mode_product(a, torch.zeros(4, 2), 1)
    with pytest.raises(IndexError, match="mode must be an int"):
        trkit.mode_product(a, torch.zeros(4, 3), 2)
    with pytest.raises(ValueError, match=r"need 2 vectors \(one per mode\), got 1"):
        trkit.contract_vectors(a, [torch.ones(2)])
    with pytest.raises(ValueError, match=r"vector 1 must have shape \(3,\), got \(2,\)"):
        trkit.contract_vectors(a, [torch.ones(2), torch.ones(2)])
