"""Rounding: meets tol, never under-reports the (dense) error, refine improves, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trkit
from trkit import TensorRing
from trkit.rounding import ring_error


def _dense_rel(a, b):
    da, db = a.to_dense(), b.to_dense()
    return float(torch.linalg.vector_norm(da - db) / torch.linalg.vector_norm(da))


@settings(max_examples=20, deadline=None)
@given(
    shape=st.lists(st.integers(2, 5), min_size=3, max_size=5),
    ra=st.integers(1, 3),
    rb=st.integers(1, 3),
    weight=st.floats(1e-4, 1.0),
    log_tol=st.floats(-5, -0.5),
    seed=st.integers(0, 1000),
)
def test_round_meets_tol_and_never_under_reports(shape, ra, rb, weight, log_tol, seed):
    a = TensorRing.random(shape, ra, seed=seed)
    b = TensorRing.random(shape, rb, seed=seed + 1)
    s = trkit.add(a, trkit.scale(b, weight))  # ranks ra + rb, compressible when weight is small
    tol = 10.0**log_tol
    out, info = trkit.tr_round(s, tol=tol, return_info=True)
    err = info.rel_error
    true = _dense_rel(s, out)
    assert err >= true  # the reported error is an upper bound
    assert err <= tol or out.ranks == s.ranks  # met, or nothing could be removed
    assert true <= tol * (1 + 1e-9)
    assert err - true < 1e-6


def test_round_reduces_padded_ring_exactly():
    a = TensorRing.random((6, 7, 8, 5), 3, seed=1)
    # a ring with ranks 5 whose extra bond directions carry nothing
    pad = [torch.zeros(5, c.shape[1], 5, dtype=c.dtype) for c in a.cores]
    for p, c in zip(pad, a.cores):
        p[:3, :, :3] = c
    big = TensorRing(pad)
    out, info = trkit.tr_round(big, tol=1e-6, return_info=True)
    err = info.rel_error
    assert out.ranks == (3, 3, 3, 3)
    assert _dense_rel(big, out) < 1e-12 and err < 1e-6


def test_max_rank_and_refine():
    a = TensorRing.random((6, 7, 8, 5), 3, seed=1)
    b = TensorRing.random((6, 7, 8, 5), 2, seed=2)
    s = trkit.add(a, trkit.scale(b, 0.05))
    out, info = trkit.tr_round(s, max_rank=3, return_info=True)
    err = info.rel_error
    assert max(out.ranks) <= 3
    assert math.isclose(err, _dense_rel(s, out), rel_tol=1e-6, abs_tol=1e-7)
    refined, info_r = trkit.tr_round(s, max_rank=3, refine=4, return_info=True)
    err_r = info_r.rel_error
    assert refined.ranks == out.ranks
    assert _dense_rel(s, refined) <= _dense_rel(s, out) + 1e-12
    assert err_r >= _dense_rel(s, refined)


def test_ring_error_and_float32():
    a = TensorRing.random((4, 5, 6), 2, seed=3)
    assert ring_error(a, a) < 1e-6
    out, info = trkit.tr_round(a.to(torch.float32), tol=1e-2, return_info=True)
    err = info.rel_error
    assert out.dtype == torch.float32 and err < 1e-2


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"tol": float("inf")}, "tol"),
        ({"tol": -1}, "tol"),
        ({}, "tol"),
        ({"max_rank": 0}, "max_rank"),
        ({"tol": 0.1, "refine": -1}, "refine"),
    ],
)
def test_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        trkit.tr_round(TensorRing.random((3, 4, 5), 2, seed=0), **kw)
    with pytest.raises(TypeError):
        trkit.tr_round(torch.ones(3, 3), tol=0.1)


@pytest.mark.parametrize(
    "call",
    [
        lambda x, r: trkit.tr_svd(x, tol=0.1, max_rank=0),
        lambda x, r: trkit.tr_als_adaptive(x, tol=0.1, max_rank=0),
        lambda x, r: trkit.tr_round(r, max_rank=0),
    ],
)
def test_max_rank_below_one_is_refused_everywhere(call):
    ring = trkit.TensorRing.random((3, 4, 5), (2, 2, 2), seed=0)
    with pytest.raises(ValueError, match="max_rank must be >= 1, got 0"):
        call(ring.to_dense(), ring)
