"""tr_cross: cross approximation of tensors given as functions of their indices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trkit
from trkit.decompose import _tt_cross
from trkit.decompose._blackbox import BlackBox
from trkit.decompose._maxvol import maxvol, maxvol_rect
from trkit.errors import InputError, InputTypeError


def ring_function(ring: trkit.TensorRing):
    """The entries of ``ring`` as a batched function (the independent reference)."""

    def f(idx):
        return ring.entries(torch.as_tensor(idx)).numpy()

    return f


def held_out_error(f, ring: trkit.TensorRing, shape, n: int = 2000, seed: int = 123) -> float:
    """Relative error of ``ring`` against ``f`` on fresh random entries (not the cross's own)."""
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(0, k, n) for k in shape], 1)
    ref = np.asarray(f(idx), dtype=np.float64)
    got = ring.entries(torch.from_numpy(idx)).double().numpy()
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


class Counting:
    """A function that records every index it is asked for."""

    def __init__(self, f):
        self.f, self.seen, self.calls = f, [], 0

    def __call__(self, idx):
        self.calls += 1
        self.seen.extend(map(tuple, np.asarray(idx).tolist()))
        return self.f(idx)


def smooth(idx):
    """``1 / (1 + x_1 + ... + x_d)`` on a uniform grid of [0, 1] with 8 points per mode."""
    return 1.0 / (1.0 + np.asarray(idx).sum(1) / 7.0)


def test_exact_ring_recovered_from_few_entries():
    shape = (8,) * 6
    true = trkit.TensorRing.random(shape, 2, seed=0)
    f = Counting(ring_function(true))
    ring, info = trkit.tr_cross(f, shape=shape, rank=8, return_info=True)
    assert held_out_error(ring_function(true), ring, shape) < 1e-10
    dense_err = torch.linalg.vector_norm(ring.to_dense() - true.to_dense()) / torch.linalg.vector_norm(true.to_dense())
    assert dense_err < 1e-10
    assert info.n_evals == len(f.seen) < 0.03 * math.prod(shape)
    # the train the cross built has ranks r_0 r_k = 4; closing it recovers the ring's own ranks
    assert max(info.tt_ranks) == 4
    assert info.closed and ring.ranks == (2,) * 6
    assert ring.n_params < sum(a * 8 * b for a, b in zip(info.tt_ranks, info.tt_ranks[1:] + (1,)))


def test_cache_never_asks_twice():
    shape = (8,) * 5
    f = Counting(smooth)
    _, info = trkit.tr_cross(f, shape=shape, rank=6, max_iter=6, stop_tol=0, return_info=True)
    assert len(f.seen) == len(set(f.seen)) == info.n_evals
    assert info.n_iter == 6 and info.n_cache_hits > info.n_evals  # later passes revisit pivots


@given(
    shape=st.lists(st.integers(1, 2**40), min_size=2, max_size=4),
    n_rows=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_cache_keys_exact_for_any_shape(shape, n_rows, seed):
    """Keys are exact even when the tensor has more than 2**62 entries (multi-word keys)."""
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(0, n, n_rows) for n in shape], 1)
    idx = np.vstack([idx, idx[: n_rows // 2]])  # duplicates inside one batch
    f = Counting(lambda i: (np.asarray(i) % 1000).sum(1).astype(float))
    box = BlackBox(f, shape)
    vals, _ = box(idx)
    vals2, new = box(idx[::-1])
    unique = {tuple(r) for r in idx.tolist()}
    assert len(f.seen) == len(set(f.seen)) == len(unique) == box.n_evals
    assert new.size == 0
    np.testing.assert_array_equal(vals * box.scale, (idx % 1000).sum(1))  # a power of two: exact
    np.testing.assert_array_equal(vals2, vals[::-1])


def test_tol_mode_meets_tol_on_heldout_entries():
    shape = (8,) * 6
    ring, info = trkit.tr_cross(smooth, shape=shape, tol=1e-8, return_info=True)
    assert info.stop_reason == "tol" and info.converged
    assert info.heldout_error <= 1e-8
    assert held_out_error(smooth, ring, shape) <= 2e-8  # a fresh sample agrees within sampling noise
    assert info.n_evals < 0.1 * math.prod(shape)


def test_periodic_chain_closes_into_a_smaller_ring():
    """``prod_k (1 + cos(t_k - t_{k+1}) / 2)`` around the cycle: ring ranks 3, train ranks 9."""
    d, n = 6, 12
    theta = 2 * np.pi * np.arange(n) / n

    def chain(idx):
        t = theta[np.asarray(idx)]
        return np.prod(1 + 0.5 * np.cos(t - np.roll(t, -1, axis=1)), axis=1)

    ring, info = trkit.tr_cross(chain, shape=(n,) * d, rank=12, return_info=True)
    assert held_out_error(chain, ring, (n,) * d) < 1e-10
    assert max(info.tt_ranks) == 9 and info.closed
    assert ring.ranks == (3,) * d
    train, _ = trkit.tr_cross(chain, shape=(n,) * d, rank=12, ring=False, return_info=True)
    assert train.ranks[0] == 1 and ring.n_params < train.n_params / 4


def test_smooth_function_stays_a_train():
    ring, info = trkit.tr_cross(smooth, shape=(8,) * 6, rank=6, return_info=True)
    assert ring.ranks[0] == 1 and not info.closed
    assert held_out_error(smooth, ring, (8,) * 6) < 1e-6


def test_float32_torch_indices_and_torch_values():
    shape = (6,) * 5

    def f(idx):
        assert isinstance(idx, torch.Tensor) and idx.dtype == torch.int64
        return torch.cos(idx.sum(1).double() / 3)  # rank 2

    ring, info = trkit.tr_cross(f, shape=shape, rank=4, index_type="torch", dtype=torch.float32, return_info=True)
    assert ring.dtype == torch.float32 and all(c.dtype == torch.float32 for c in ring.cores)
    ref = lambda i: np.cos(np.asarray(i).sum(1) / 3)  # noqa: E731
    assert held_out_error(ref, ring.to(torch.float64), shape) < 1e-5
    assert max(info.tt_ranks) == 2 + 0 * max(ring.ranks)


def test_dtype_follows_the_values_unless_given():
    shape = (6,) * 4
    cos = lambda i: np.cos(np.asarray(i).sum(1) / 3)  # noqa: E731  (rank 2)
    assert trkit.tr_cross(lambda i: cos(i).astype(np.float32), shape=shape, rank=3).dtype == torch.float32
    assert trkit.tr_cross(lambda i: torch.from_numpy(cos(i)).half(), shape=shape, rank=3).dtype == torch.float16
    assert trkit.tr_cross(lambda i: np.asarray(i).sum(1), shape=shape, rank=3).dtype == torch.float64  # integers
    assert trkit.tr_cross(cos, shape=shape, rank=3, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(InputError, match="complex values but dtype"):
        trkit.tr_cross(lambda i: cos(i) * 1j, shape=shape, rank=3, dtype=torch.float64)


def test_complex_ring_recovered():
    shape = (6,) * 5
    real, imag = (trkit.TensorRing.random(shape, 2, seed=s) for s in (6, 7))
    true = trkit.TensorRing([a + 0.5j * b for a, b in zip(real.cores, imag.cores)])
    f = lambda i: true.entries(torch.as_tensor(i))  # noqa: E731
    ring, info = trkit.tr_cross(f, shape=shape, rank=4, return_info=True)
    assert ring.dtype == torch.complex128 and not info.closed  # closing is for real trains
    dense = true.to_dense()
    assert float(torch.linalg.vector_norm(ring.to_dense() - dense) / torch.linalg.vector_norm(dense)) < 1e-10
    assert info.n_evals < math.prod(shape) / 2


@pytest.mark.parametrize("factor", [2.0**530, 2.0**-990])  # ~1e160, ~1e-298: exact, so the same run
def test_magnitude_changes_nothing_but_the_scale(factor):
    shape = (8,) * 6
    base, info = trkit.tr_cross(smooth, shape=shape, tol=1e-8, return_info=True)
    scaled, sinfo = trkit.tr_cross(lambda i: smooth(i) * factor, shape=shape, tol=1e-8, return_info=True)
    assert scaled.ranks == base.ranks and sinfo.n_evals == info.n_evals
    assert sinfo.rel_error == info.rel_error
    idx = torch.from_numpy(np.random.default_rng(0).integers(0, 8, (500, 6)))
    np.testing.assert_allclose(scaled.entries(idx).numpy() / factor, base.entries(idx).numpy(), rtol=1e-10)


def test_start_from_a_given_ring():
    shape = (7,) * 5
    true = trkit.TensorRing.random(shape, 2, seed=4)
    f = ring_function(true)
    guess = trkit.TensorRing.random(shape, 2, seed=5)
    ring, info = trkit.tr_cross(f, shape=shape, init=guess, return_info=True)
    assert held_out_error(f, ring, shape) < 1e-10
    assert max(info.tt_ranks) <= 4  # caps come from the ring: r_k r_0


def test_budget_and_callback_stop_early():
    shape = (8,) * 6
    _, full = trkit.tr_cross(smooth, shape=shape, rank=6, return_info=True)
    _, info = trkit.tr_cross(smooth, shape=shape, rank=6, max_evals=full.n_evals - 100, return_info=True)
    assert info.n_evals <= full.n_evals - 100 and info.stop_reason == "max_evals" and info.n_iter < full.n_iter
    calls = []
    _, info = trkit.tr_cross(smooth, shape=shape, rank=4, callback=lambda *a: calls.append(a) or True, return_info=True)
    assert info.stop_reason == "callback" and info.n_iter == 1 and len(calls) == 1
    assert isinstance(calls[0][0], trkit.TensorRing) and calls[0][1].n_iter == 1
    with pytest.raises(InputError, match="max_evals"):
        trkit.tr_cross(smooth, shape=shape, rank=6, max_evals=50)


def test_many_modes():
    d = 40
    f = lambda idx: np.sin(np.asarray(idx).sum(1) / 5.0)  # noqa: E731  (rank 2 in any d)
    ring, info = trkit.tr_cross(f, shape=(8,) * d, rank=3, return_info=True)
    assert held_out_error(f, ring, (8,) * d) < 1e-10
    assert info.n_evals < 20_000


def raising(idx):
    raise RuntimeError("boom")


@pytest.mark.parametrize(
    "f, exc, match",
    [
        (raising, InputError, r"f \(raising\) raised RuntimeError: boom .*\(\d+, 4\) int64 numpy index batch"),
        (lambda i: np.ones(3), InputError, r"returned shape \(3,\) .* expected \(\d+,\)"),
        (lambda i: np.full(len(i), np.nan), InputError, "returned nan at index"),
        (lambda i: np.where(np.asarray(i)[:, 0] == 2, np.inf, 1.0), InputError, "returned inf at index"),
        (lambda i: ["a"] * len(i), InputTypeError, "expected .* numbers"),
    ],
)
def test_bad_functions_are_named_in_the_error(f, exc, match):
    with pytest.raises(exc, match=match):
        trkit.tr_cross(f, shape=(5,) * 4, rank=2)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"shape": (5,)}, InputError, "2 modes"),
        ({"shape": 5}, InputTypeError, "sequence of ints"),
        ({"shape": (5, 0, 3)}, InputError, "size >= 1"),
        ({"rank": None}, InputError, "give rank"),
        ({"rank": 0}, InputError, "ranks must be >= 1"),
        ({"rank": [2, 2]}, InputError, "3 ints"),
        ({"rank": 2.5}, InputTypeError, "rank must be"),
        ({"tol": -1.0}, InputError, "tol must be"),
        ({"index_type": "jax"}, InputError, "index_type"),
        ({"dtype": torch.int64}, InputTypeError, "dtype"),
        ({"init": trkit.TensorRing.random((3, 3, 3, 3), 2)}, InputError, "init has shape"),
        ({"max_iter": 0}, InputError, "max_iter"),
        ({"device": "nonsense"}, InputError, "device"),
        ({"oversample": -1}, InputError, "oversample must be an int >= 0"),
        ({"oversample": 1.5}, InputError, "oversample must be an int >= 0"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = {"shape": (5,) * 4, "rank": 2} | kwargs
    with pytest.raises(exc, match=match):
        trkit.tr_cross(smooth, **args)
    with pytest.raises(InputTypeError, match="callable"):
        trkit.tr_cross(np.ones(3), shape=(5,) * 4, rank=2)


def test_maxvol_against_determinants():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((60, 5))
    rows, coef = maxvol(a)
    assert len(set(rows.tolist())) == 5 and np.abs(coef).max() <= 1.05 + 1e-12
    np.testing.assert_allclose(coef @ a[rows], a, atol=1e-12)
    # a local maximum of the volume: no single swap makes |det| larger by more than tol
    vol = abs(np.linalg.det(a[rows]))
    for i in range(60):
        for j in range(5):
            trial = rows.copy()
            trial[j] = i
            assert abs(np.linalg.det(a[trial])) <= 1.05 * vol + 1e-12
    # started from a set that is already good, it keeps it (later passes reuse their pivots)
    again, _ = maxvol(a, start=rows[::-1])
    assert sorted(again.tolist()) == sorted(rows.tolist())


def test_maxvol_rect_greedy_volume_against_brute_force():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((40, 4)))
    rows, coef = maxvol_rect(u, 7)
    assert len(set(rows.tolist())) == 7
    np.testing.assert_array_equal(np.sort(rows[:4]), np.sort(maxvol(u)[0]))
    np.testing.assert_allclose(coef @ u[rows], u, atol=1e-12)
    np.testing.assert_allclose(coef, u @ np.linalg.pinv(u[rows]), atol=1e-12)
    # every added row maximises the volume det(A^T A) of the rows so far plus one other
    for m in range(4, 7):
        others = [i for i in range(40) if i not in rows[:m]]
        vols = [np.linalg.det(u[list(rows[:m]) + [i]].T @ u[list(rows[:m]) + [i]]) for i in others]
        assert np.linalg.det(u[rows[: m + 1]].T @ u[rows[: m + 1]]) >= max(vols) * (1 - 1e-9)
    # a matrix in span(u) is reproduced from its chosen rows (least squares, not only rows)
    mat = u @ rng.standard_normal((4, 9))
    np.testing.assert_allclose(coef @ mat[rows], mat, atol=1e-12)


def test_significant_rank_needs_a_gap():
    rng = np.random.default_rng(2)
    q1, _ = np.linalg.qr(rng.standard_normal((30, 8)))
    q2, _ = np.linalg.qr(rng.standard_normal((8, 8)))

    def tail(s):
        _, t = _tt_cross.singular_tail((q1 * s) @ q2)
        return t

    lowrank = np.array([1, 0.3, 0.05, 5e-3, 4e-4, 2e-5, 1e-17, 1e-18])  # rank 6 and rounding noise
    assert _tt_cross.significant_rank(tail(lowrank), 8) == 6
    decay = 10.0 ** -np.arange(0, 16, 2)  # smooth decay to 1e-14: no gap, nothing dropped
    assert _tt_cross.significant_rank(tail(decay), 8) == 8
    assert _tt_cross.significant_rank(tail(lowrank), 5) == 5  # never above the rank it is given


def gauss_chain(idx):
    """``exp(-2 sum_k (x_k - x_{k+1})^2)`` on 8 points of [0, 1]: TT rank 8, ill-conditioned."""
    x = np.linspace(0, 1, 8)[np.asarray(idx)]
    return np.exp(-2.0 * ((x[:, 1:] - x[:, :-1]) ** 2).sum(1))


def test_rank_below_the_cap_recovered_to_rounding(monkeypatch):
    # the chain's bond singular values fall to ~5e-9 of the largest, then to rounding noise;
    # with a cap of 10 every fibre has two noise directions. Pivots placed by volume in the 8
    # significant directions recover the tensor to rounding; square maxvol (which places
    # pivots by the noise as well, DEFICIENT_TOL = 0) stays at the level of the small ones.
    # Both without the random test columns of later passes (which get square maxvol there too)
    shape = (8,) * 16
    errors = {}
    for tol in (_tt_cross.DEFICIENT_TOL, 0.0):
        monkeypatch.setattr(_tt_cross, "DEFICIENT_TOL", tol)
        errors[tol] = []
        for seed in range(3):
            f = Counting(gauss_chain)
            ring, info = trkit.tr_cross(
                f, shape=shape, rank=10, max_iter=4, stop_tol=0, seed=seed, oversample=0, return_info=True
            )
            errors[tol].append(held_out_error(gauss_chain, ring, shape, n=3000))
            assert info.n_evals == len(set(f.seen)) < 40_000
    assert max(errors[1e-14]) < 1e-12
    assert np.median(errors[0.0]) > 1e-10


def abs_sin(idx):
    """``|sin(2 (x_1 + ... + x_6))| + 0.1`` on 16 points of [0, 1]: needs more rank than 12."""
    return np.abs(np.sin(2 * np.asarray(idx).sum(1) / 15)) + 0.1


def test_random_test_columns_keep_pivots_improving():
    # abs(sin) of a sum needs more rank than 12: at that cap, pivots that only ever see the
    # last pass's pivots settle early; 2 random test columns in every pass keep them moving
    shape = (16,) * 6

    medians = {}
    for extra in (0, 2):
        errors = []
        for seed in range(3):
            ring = trkit.tr_cross(abs_sin, shape=shape, rank=12, max_iter=6, stop_tol=0, seed=seed, oversample=extra)
            errors.append(held_out_error(abs_sin, ring, shape, n=4000))
        medians[extra] = float(np.median(errors))
    assert medians[2] < 0.75 * medians[0]
    # and 2 is the default
    ring = trkit.tr_cross(abs_sin, shape=shape, rank=12, max_iter=6, stop_tol=0, seed=2)
    assert held_out_error(abs_sin, ring, shape, n=4000) == errors[-1]


def test_settled_pivots_cost_no_new_entries():
    # no random test columns (oversample=0): only pivots
    f = Counting(smooth)
    _, info = trkit.tr_cross(f, shape=(8,) * 6, rank=5, max_iter=12, stop_tol=0, oversample=0, return_info=True)
    g = Counting(smooth)
    _, info8 = trkit.tr_cross(g, shape=(8,) * 6, rank=5, max_iter=8, stop_tol=0, oversample=0, return_info=True)
    assert info.n_iter == 12 and info.n_evals == info8.n_evals  # passes 9-12 found every entry cached


def test_oversample_reads_more_entries_a_pass():
    # each pass's fibres get `oversample` more random columns, all new entries (what they buy
    # in accuracy: test_random_test_columns_keep_pivots_improving)
    shape = (16,) * 6

    evals = []
    for extra in (0, 1, 2):
        f = Counting(abs_sin)
        _, info = trkit.tr_cross(f, shape=shape, rank=12, max_iter=3, stop_tol=0, oversample=extra, return_info=True)
        assert info.n_evals == len(set(f.seen))
        evals.append(info.n_evals)
    assert evals[0] < evals[1] < evals[2]


def inv_sum(idx):
    """``1 / (1 + x_1 + ... + x_10)`` on 16 points of [0, 1]: singular values decay smoothly to rounding."""
    return 1.0 / (1.0 + np.linspace(0, 1, 16)[np.asarray(idx)].sum(1))  # as in benchmarks/cross.py


def test_float64_floor_on_every_seed():
    # rank 14 is past inv_sum's numerical rank (about 13 at 1e-15). The second pass's maxvol
    # starts afresh rather than from the random first right sets (from those it settled near
    # 8e-12 on seed 1), and the final rounding is skipped when its own float64 arithmetic (about
    # 1e-14 here) exceeds what it may change (it gave 1.05e-14). Two passes (the first at rank
    # 14 - oversample) reach float64 rounding on most seeds (1.9e-14 on the worst of 9 here);
    # three, where the default stopping rule ends, on every seed
    shape = (16,) * 10
    for passes, worst in ((2, 1e-13), (3, 1e-14)):
        errors = []
        for seed in range(9):
            ring = trkit.tr_cross(inv_sum, shape=shape, rank=14, max_iter=passes, stop_tol=0, seed=seed)
            errors.append(held_out_error(inv_sum, ring, shape, n=4000))
        assert np.median(errors) < 1e-14
        assert max(errors) < worst


def test_first_pass_runs_oversample_below_the_rank():
    # from random pivots the first pass is provisional: it runs at rank - oversample, and the next
    # pass's random test columns bring every inner bond back up to the rank; a single pass runs at it
    shape = (16,) * 10
    for oversample in (0, 2, 3):
        ranks: list[int] = []

        def record(ring, info, ranks=ranks):
            ranks.append(max(ring.ranks))

        trkit.tr_cross(inv_sum, shape=shape, rank=14, max_iter=2, stop_tol=0, ring=False, oversample=oversample,
                       callback=record)  # fmt: skip
        assert ranks == [14 - oversample, 14]
        one = trkit.tr_cross(inv_sum, shape=shape, rank=14, max_iter=1, ring=False, oversample=oversample)
        assert max(one.ranks) == 14


def test_rounding_checked_against_the_train_it_rounds():
    from trkit.decompose._close import round_train, within
    from trkit.decompose._tt_cross import tt_entries

    rng = np.random.default_rng(0)
    # a train of rank 3 written with rank 6: half of every bond is (nearly) redundant
    small = [rng.standard_normal((1 if k == 0 else 3, 7, 1 if k == 7 else 3)) for k in range(8)]
    padded = []
    for k, g in enumerate(small):
        a, n, b = g.shape
        big = np.zeros((1 if k == 0 else 6, n, 1 if k == 7 else 6))
        big[:a, :, :b] = g
        big[a:, :, b:] = 1e-30 * rng.standard_normal((big.shape[0] - a, n, big.shape[2] - b))
        padded.append(big)
    idx = np.stack([rng.integers(0, 7, 500) for _ in range(8)], 1)
    ref = tt_entries(padded, idx)
    rounded = round_train(padded, 1e-8)
    assert [c.shape[2] for c in rounded[:-1]] == [3] * 7
    gap = np.linalg.norm(tt_entries(rounded, idx) - ref) / np.linalg.norm(ref)
    assert 0 < gap <= 1e-8  # the sweep changes the entries, within the tolerance
    assert within(padded, rounded, 1e-8) and not within(padded, rounded, gap / 1e3)
    assert round_train(small, 1e-8) is small  # nothing to drop: the train itself, not a re-rounded copy


def test_fixed_rank_past_a_ring_rank_still_closes():
    # cyclic_cos has ring ranks 3 (train ranks 9): at a cap of 12 the cross keeps noise
    # directions the rounding drops; its float64 noise is kept for the ring (7x fewer numbers)
    theta = 2 * np.pi * np.arange(16) / 16

    def chain(idx):
        t = theta[np.asarray(idx)]
        return np.prod(1 + 0.5 * np.cos(t - np.roll(t, -1, axis=1)), axis=1)

    ring, info = trkit.tr_cross(chain, shape=(16,) * 10, rank=12, max_iter=2, stop_tol=0, return_info=True)
    assert info.closed and max(ring.ranks) == 3
    assert held_out_error(chain, ring, (16,) * 10) < 1e-13
