"""TR-ALS, adaptive ALS and sampled ALS against dense references and exact rings."""

import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.decomposition import tensor_ring_als

import trkit
from trkit import TensorRing, tr_als, tr_als_adaptive, tr_als_sampled


def _rel(x, ring):
    return float(torch.linalg.vector_norm(x - ring.to_dense()) / torch.linalg.vector_norm(x))


def test_exact_ring_recovered_from_random_init():
    tr = TensorRing.random((10, 11, 12, 9), (2, 3, 4, 3), seed=4)
    x = tr.to_dense()
    ring, info = tr_als(x, [2, 3, 4, 3], init="random", max_iter=300, seed=1, return_info=True)
    assert info.rel_error < 1e-8
    assert abs(info.rel_error - _rel(x, ring)) < 1e-12
    assert ring.ranks == (2, 3, 4, 3)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), rank=st.integers(1, 4))
def test_best_error_never_increases(seed, rank):
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((5, 6, 4, 5)))
    seen = []
    ring, info = tr_als(
        x,
        rank,
        init="random",
        max_iter=15,
        stop_tol=1e-12,
        seed=seed,
        return_info=True,
        callback=lambda r, info: seen.append(info.rel_error),
    )
    best = np.minimum.accumulate(info.history)
    assert np.all(np.diff(best) <= 0)
    assert seen == info.history
    # the returned ring is the best iterate (history estimate vs dense check)
    assert _rel(x, ring) <= min(info.history) + 1e-7


def test_matches_or_beats_tensorly_als():
    g = torch.Generator().manual_seed(0)
    x = TensorRing.random((10, 11, 12, 9), 3, seed=9).to_dense()
    x = x + 1e-2 * x.std() * torch.randn(x.shape, generator=g, dtype=torch.float64)
    tl.set_backend("numpy")
    tly = tensor_ring_als(x.numpy(), rank=[3, 3, 3, 3, 3], n_iter_max=30, random_state=0)
    err_tly = np.linalg.norm(x.numpy() - tl.tr_to_tensor(tly)) / np.linalg.norm(x.numpy())
    ring, info = tr_als(x, 3, max_iter=30, return_info=True)
    assert info.rel_error <= err_tly * 1.02


@pytest.mark.parametrize("seed", [1, 3])
def test_same_start_same_fixed_point_as_tensorly(seed):
    # On a noise tensor ALS has many local minima; which one is reached depends on the start only.
    # From tensorly's own random start, our sweeps (normal equations, QR gauge) must land on the
    # same fixed point as tensorly's lstsq ALS: any gap between the two is the start, not the solver.
    x = np.random.default_rng(seed).standard_normal((6, 5, 7, 6))
    tl.set_backend("numpy")
    tly = tensor_ring_als(x, rank=[3] * 5, n_iter_max=200, random_state=seed)
    err_tly = np.linalg.norm(x - tl.tr_to_tensor(tly)) / np.linalg.norm(x)
    start = tl.random.random_tr(x.shape, [3] * 5, random_state=tl.check_random_state(seed))
    init = TensorRing([torch.from_numpy(np.asarray(c)) for c in start])
    _, info = tr_als(torch.from_numpy(x), 3, init=init, max_iter=200, stop_tol=1e-12, return_info=True)
    assert abs(info.rel_error - err_tly) <= 1e-4 * err_tly


def test_callback_stop_seed_determinism_and_float32():
    x = torch.randn(5, 6, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ring, info = tr_als(
        x, 2, init="random", max_iter=50, seed=3, return_info=True, callback=lambda r, info: info.n_iter >= 3
    )
    assert info.n_iter == 3
    a = tr_als(x, 2, init="random", max_iter=5, seed=7)
    b = tr_als(x, 2, init="random", max_iter=5, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.cores, b.cores))
    r32 = tr_als(x.float(), 2, max_iter=5)
    assert r32.dtype == torch.float32
    init = tr_als(x, 2, max_iter=2)
    assert tr_als(x, 2, init=init, max_iter=3).ranks == init.ranks


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2, "tol": -1}, "tol"),
        ({"rank": 2, "stop_tol": -1}, "stop_tol"),
        ({"rank": 2, "init": "bogus"}, "init"),
        ({"rank": 2, "max_iter": 0}, "max_iter"),
    ],
)
def test_als_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        tr_als(torch.ones(3, 4, 5), **kw)
    with pytest.raises(ValueError, match="NaN"):
        tr_als(torch.full((3, 3), float("nan")), 2)


def test_adaptive_finds_true_ranks_and_meets_tol():
    tr = TensorRing.random((10, 11, 12, 13), (2, 3, 4, 5), seed=1)
    x = tr.to_dense()
    ring, info = tr_als_adaptive(x, tol=1e-8, return_info=True)
    assert info.tol_met
    assert _rel(x, ring) <= 1e-8
    assert ring.n_params <= tr.n_params
    smooth = torch.randn(8, 8, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    smooth = smooth.cumsum(0).cumsum(1).cumsum(2).cumsum(3)
    ring, info = tr_als_adaptive(smooth, tol=0.05, return_info=True)
    assert info.converged and _rel(smooth, ring) <= 0.05
    assert ring.n_params < smooth.numel()


def test_sampled_dense_memmap_and_callable(tmp_path):
    tr = TensorRing.random((12, 12, 12, 12), 2, seed=5)
    x = tr.to_dense()
    ring, info = tr_als_sampled(x, 2, n_samples=300, max_iter=40, return_info=True)
    assert _rel(x, ring) < 1e-6 and info.rel_error < 1e-6
    # at most: the held-out set, the sketch start, the trial sweeps of the starts, 40 sweeps
    from trkit.decompose.sampled import SKETCH_ENTRIES, TRIAL_SWEEPS

    sweep = 4 * 300 * 12
    bound = 10_000 + SKETCH_ENTRIES + sweep * (1 + 3 * TRIAL_SWEEPS + 40)
    assert info.entries_read <= bound < x.numel() * 40 * 4
    path = tmp_path / "x.npy"
    np.save(path, x.numpy())
    mm = np.load(path, mmap_mode="r")
    ring_mm = tr_als_sampled(mm, 2, n_samples=300, max_iter=40, sampling="uniform")
    assert ring_mm.dtype == torch.float64
    assert _rel(x, ring_mm) < 1e-6
    ring_fn, info_fn = tr_als_sampled(
        lambda idx: x.numpy()[tuple(idx.T)], 2, shape=x.shape, n_samples=300, max_iter=40, return_info=True
    )
    assert _rel(x, ring_fn) < 1e-6
    with pytest.raises(ValueError, match="shape"):
        tr_als_sampled(lambda idx: idx[:, 0], 2)
    with pytest.raises(ValueError, match="sampling"):
        tr_als_sampled(x, 2, sampling="magic")


def test_exports():
    for name in ["tr_als", "tr_als_adaptive", "tr_als_sampled", "tr_complete", "tr_round", "DecompositionInfo"]:
        assert hasattr(trkit, name) and name in trkit.__all__


def test_exact_svd_start_skips_sweeps_and_matches_dense():
    """An exact ring is recovered by TR-SVD; ALS must return it without sweeping (dense check)."""
    ring = TensorRing.random((6, 5, 7, 4), [2, 3, 2, 2], seed=4, dtype=torch.float64)
    x = ring.to_dense()
    calls = []
    out, info = tr_als(x, [2, 3, 2, 2], return_info=True, callback=lambda r, i: calls.append(i))
    dense_err = float(torch.linalg.vector_norm(out.to_dense() - x) / torch.linalg.vector_norm(x))
    assert info.n_iter == 0 and calls == [] and info.converged
    assert dense_err < 1e-12 and abs(info.rel_error - dense_err) < 1e-13
    # a noisy ring is not exact: sweeps run and improve on the start
    noisy = x + 1e-3 * x.std() * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    _, info2 = tr_als(noisy, [2, 3, 2, 2], return_info=True, max_iter=5)
    assert info2.n_iter >= 1


@pytest.mark.parametrize("method", ["als", "adaptive", "sampled", "complete"])
def test_init_ring_of_wrong_shape_is_named(method):
    """Every method that takes a starting ring checks its shape against the tensor's."""
    x = TensorRing.random((4, 5, 6), 2, seed=0, dtype=torch.float64).to_dense()
    bad = TensorRing.random((4, 5, 7), 2, seed=1, dtype=torch.float64)
    calls = {
        "als": lambda: tr_als(x, 2, init=bad),
        "adaptive": lambda: tr_als_adaptive(x, tol=1e-3, init=bad),
        "sampled": lambda: tr_als_sampled(x, 2, init=bad),
        "complete": lambda: trkit.tr_complete(x, 2, mask=torch.ones_like(x, dtype=torch.bool), init=bad),
    }
    with pytest.raises(ValueError, match=r"init ring has shape \(4, 5, 7\), the tensor has \(4, 5, 6\)"):
        calls[method]()
