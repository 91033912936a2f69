"""What quimb's matrix-product-state tests check on periodic (cyclic) states, asked of trkit
(written anew from the checks of quimb's tests/test_tensor/test_tn1d/test_core.py and
tests/test_tensor/test_fitting.py; their tolerances kept: ``assert_allclose`` rtol 1e-7,
``pytest.approx`` rel 1e-6).

A periodic MPS is a tensor ring with physical modes of size 2. Every check runs on states built
here (random normalised rings); the ``*_quimb`` variants repeat it on quimb's own states and are
skipped when quimb is not installed. Deliberate differences: docs/api/decompose.md.
"""

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

import trkit
from trkit import TensorRing


def random_state(n_sites: int, bond: int, seed: int, dtype=torch.float64, phys: int = 2) -> TensorRing:
    """A random periodic MPS normalised to 1 (quimb's ``MPS_rand_state(cyclic=True)``)."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    cores = [torch.randn(bond, phys, bond, generator=g, dtype=wide).to(dtype) for _ in range(n_sites)]
    ring = TensorRing(cores)
    return ring / float(ring.norm())


def from_quimb(mps) -> TensorRing:
    """quimb's cyclic MPS arrays ``(left, right, phys)`` as ring cores ``(left, phys, right)``."""
    return TensorRing([torch.from_numpy(np.asarray(t.data)).permute(0, 2, 1).contiguous() for t in mps])


def fidelity(a: np.ndarray, b: np.ndarray) -> float:
    return float(abs(np.vdot(a, b)) ** 2 / (np.vdot(a, a).real * np.vdot(b, b).real))


# ---- from_dense ----------------------------------------------------------------------------------
def test_from_dense_random_complex_state():
    n = 8
    g = np.random.default_rng(0)
    psi = g.standard_normal(2**n) + 1j * g.standard_normal(2**n)
    psi /= np.linalg.norm(psi)
    x = psi.reshape((2,) * n)
    # quimb's open MPS has bond sizes [2, 4, 8, 16, 8, 4, 2]: the same ring with the closing bond 1
    ring = trkit.tr_svd(x, [1, 2, 4, 8, 16, 8, 4, 2])
    assert ring.ranks == (1, 2, 4, 8, 16, 8, 4, 2) and ring.dtype == torch.complex128
    assert fidelity(ring.to_numpy().reshape(-1), psi) == pytest.approx(1)
    exact = trkit.tr_svd(x, tol=1e-12)  # the tolerance mode finds the same size or smaller
    assert exact.n_params <= ring.n_params
    assert fidelity(exact.to_numpy().reshape(-1), psi) == pytest.approx(1)


def test_from_dense_low_rank_ghz_state():
    n = 6
    psi = np.zeros(2**n)
    psi[0] = psi[-1] = 2**-0.5
    ring = trkit.tr_svd(psi.reshape((2,) * n), tol=1e-12)
    assert max(ring.ranks) == 2  # quimb: every bond of size 2
    assert fidelity(ring.to_numpy().reshape(-1), psi) == pytest.approx(1)


def test_product_state_has_unit_bonds():
    g = np.random.default_rng(1)
    vecs = [g.standard_normal(2) for _ in range(5)]
    dense = vecs[0]
    for v in vecs[1:]:
        dense = np.kron(dense, v)
    ring = trkit.tr_svd(dense.reshape((2,) * 5), tol=1e-12)
    assert all(r == 1 for r in ring.ranks)
    assert_allclose(ring.to_numpy().reshape(-1), dense, rtol=1e-7, atol=1e-15)


# ---- algebra on periodic states --------------------------------------------------------------------
def _check_adding(p: TensorRing, bond: int):
    p2 = p + p
    assert max(p2.ranks) == 2 * bond
    assert_allclose(float(trkit.inner(p2, p)), 2, rtol=1e-7)


def _check_compress(p: TensorRing, bond: int):
    p2 = trkit.tr_round(p + p, tol=1e-6)  # quimb: cutoff 1e-6 brings the bonds back
    assert max(p2.ranks) == bond
    assert_allclose(float(trkit.inner(p2, p)), 2, rtol=1e-7)


def test_adding_and_compressing_periodic_states():
    p = random_state(10, 7, seed=0)
    _check_adding(p, 7)
    _check_compress(p, 7)


@pytest.mark.parametrize("n_sites", [12, pytest.param(20, marks=pytest.mark.slow)])  # quimb: 20
def test_compress_to_a_maximum_bond(n_sites):
    p0 = random_state(n_sites, 20, seed=1)
    p = trkit.tr_round(p0, tol=0)  # only exact reductions: none here
    assert max(p.ranks) == 20
    small = trkit.tr_round(p0, max_rank=13)
    assert max(small.ranks) == 13
    # quimb rescales the truncated state to the original norm (renorm=True); differs: trkit keeps
    # the best approximation, whose norm rescales the same way
    assert_allclose(float(trkit.scale(small, float(p0.norm() / small.norm())).norm()), float(p0.norm()), rtol=1e-7)


def test_subtract_is_linear_in_inner_products():
    a, b, c = (random_state(10, 7, seed=s) for s in (2, 3, 4))
    assert_allclose(float(trkit.inner(a, b)) - float(trkit.inner(a, c)), float(trkit.inner(a, b - c)), rtol=1e-7)


def test_amplitude_matches_dense():
    p = random_state(10, 7, seed=5)
    dense = p.to_numpy().reshape(-1)
    idx = int(np.random.default_rng(0).integers(0, 2**10))
    bits = torch.tensor([[int(b) for b in f"{idx:010b}"]])
    assert float(p.entries(bits)[0]) == pytest.approx(dense[idx])


# ---- periodic operators (MPO) ------------------------------------------------------------------------
def _trace(op: TensorRing) -> float:
    """Trace of an MPO stored as a ring with modes ``(up, down)`` merged into one of size 4."""
    eye = torch.eye(2, dtype=op.dtype).reshape(-1)
    return float(trkit.contract_vectors(op, [eye] * op.ndim))


def test_compress_padded_periodic_operator():
    op = random_state(12, 5, seed=6, phys=4)
    padded = TensorRing([torch.nn.functional.pad(c, (0, 5, 0, 0, 0, 5)) for c in op.cores])  # bonds 10
    assert all(r == 10 for r in padded.ranks)
    out = trkit.tr_round(padded, tol=1e-12)
    assert all(r in (4, 5) for r in out.ranks)


def test_subtract_periodic_operators_keeps_traces():
    a, b = random_state(13, 7, seed=7, phys=4), random_state(13, 7, seed=8, phys=4)
    assert_allclose(_trace(a) - _trace(b), _trace(a - b), rtol=1e-7)


# ---- fitting (test_fitting.py) -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_fit_one_state_to_another(dtype):
    k1, k2 = random_state(5, 3, seed=666, dtype=dtype), random_state(5, 3, seed=667, dtype=dtype)
    target = k2.to_dense()

    def distance(ring):
        return float(torch.linalg.vector_norm(ring.to_dense() - target) / torch.linalg.vector_norm(target))

    assert distance(k1) > 1e-3
    fit = trkit.tr_als(target, k1.ranks, init=k1, max_iter=300)  # quimb fits until its own test stops
    assert fit.dtype == dtype and distance(fit) < 1e-3


# ---- the same checks on quimb's own states ---------------------------------------------------------------
def test_adding_compressing_and_fitting_quimb_states():
    qtn = pytest.importorskip("quimb.tensor")
    mps = qtn.MPS_rand_state(10, 7, cyclic=True, seed=0)
    p = from_quimb(mps)
    assert_allclose(p.to_numpy().reshape(-1), np.asarray(mps.to_dense()).reshape(-1), rtol=1e-7, atol=1e-14)
    _check_adding(p, 7)
    _check_compress(p, 7)
    out = trkit.tr_round(p + p, max_rank=7, refine=100)
    assert_allclose(float(trkit.inner(out, p)), 2, rtol=1e-7)
    k1 = from_quimb(qtn.MPS_rand_state(5, 3, cyclic=True, seed=666))
    k2 = from_quimb(qtn.MPS_rand_state(5, 3, cyclic=True, seed=667))
    target = k2.to_dense()
    fit = trkit.tr_als(target, k1.ranks, init=k1, max_iter=300)
    assert float(torch.linalg.vector_norm(fit.to_dense() - target) / torch.linalg.vector_norm(target)) < 1e-3


def test_quimb_operator_traces():
    qtn = pytest.importorskip("quimb.tensor")

    def as_ring(mpo) -> TensorRing:  # arrays (left, right, up, down) -> (left, up*down, right)
        cores = [torch.from_numpy(np.asarray(t.data)) for t in mpo]
        return TensorRing([c.permute(0, 2, 3, 1).reshape(c.shape[0], -1, c.shape[1]).contiguous() for c in cores])

    a = qtn.MPO_rand(13, 7, cyclic=True, seed=1)
    b = qtn.MPO_rand(13, 7, cyclic=True, seed=2)
    ra, rb = as_ring(a), as_ring(b)
    assert_allclose(_trace(ra), a.trace(), rtol=1e-7)
    assert_allclose(_trace(ra) - _trace(rb), _trace(ra - rb), rtol=1e-7)
