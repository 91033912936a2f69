"""Scale, precision and input messages of every decomposition (issue 19 items 6, 7 and 11).

The result must be scale-equivariant: data times 1e19 or 1e-25 (float32), 1e-300 or 1e160
(float64) gives the ranks and relative error of the unscaled data, and a ring that reconstructs
the scaled data; nothing overflows on the way.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from _decompositions import IDS, METHODS, reference_ring
from _decompositions import call as _call
from hypothesis import given, settings
from hypothesis import strategies as st

import trkit
from trkit import TensorRing

SCALES = [(torch.float32, 1e19), (torch.float32, 1e-25), (torch.float64, 1e-300), (torch.float64, 1e160)]


def _scaled_call(m, ring: TensorRing, factor: float, **extra):
    """Call ``m`` on its usual data multiplied by ``factor`` (a ring: its first core)."""
    data = m.data(ring)
    if isinstance(data, TensorRing):
        data = TensorRing([data.cores[0] * factor] + list(data.cores[1:]))
    else:
        data = data * factor
    kwargs = {k: (v(ring) if callable(v) else v) for k, v in m.kwargs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return m.fn(data, **{**kwargs, **extra, "return_info": True})


@pytest.mark.parametrize("dtype,factor", SCALES, ids=[f"{d}-x{f:g}" for d, f in SCALES])
@pytest.mark.parametrize("m", METHODS, ids=IDS)
def test_scale_equivariance(m, dtype, factor):
    ring = reference_ring(dtype)
    base, info = _call(m, ring, return_info=True)
    out, scaled = _scaled_call(m, ring, factor)
    assert out.dtype == dtype and out.ranks == base.ranks
    assert all(bool(torch.isfinite(c).all()) for c in out.cores)
    assert math.isfinite(scaled.rel_error)
    assert abs(scaled.rel_error - info.rel_error) <= 1e-3 * info.rel_error + 1e-6  # float32: a few digits
    # the ring reconstructs the scaled data as the unscaled ring reconstructs the data
    want = base.to_dense().double() * factor
    got = out.to_dense().double()
    assert float(torch.linalg.vector_norm(got - want)) <= 1e-3 * float(torch.linalg.vector_norm(want))


@settings(max_examples=20, deadline=None)
@given(exponent=st.integers(-280, 280), tol=st.sampled_from([0.3, 0.05, 1e-3]))
def test_tr_svd_tolerance_mode_ignores_the_scale(exponent, tol):
    x = torch.randn(6, 7, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64).cumsum(0)
    ring, info = trkit.tr_svd(x, tol=tol, return_info=True)
    scaled, sinfo = trkit.tr_svd(x * 10.0**exponent, tol=tol, return_info=True)
    assert scaled.ranks == ring.ranks
    assert math.isclose(sinfo.rel_error, info.rel_error, rel_tol=1e-6, abs_tol=1e-12) and sinfo.rel_error <= tol


def test_issue_19_scale_reports():
    """The reported cases: float32 x 1e19 (ranks 1 and error nan), x 1e-25 and float64 x 1e-300
    (error 0 where it is ~1), float64 x 1e160 (LinAlgError)."""
    x = TensorRing.random((6, 7, 8, 5), 3, seed=0).to_dense()
    x = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    ref, rinfo = trkit.tr_svd(x, tol=0.5, return_info=True)
    for dtype, factor in SCALES:
        ring, info = trkit.tr_svd((x * factor).to(dtype), tol=0.5, return_info=True)
        assert ring.ranks == ref.ranks, (dtype, factor)
        assert abs(info.rel_error - rinfo.rel_error) < 1e-4
        true = float(torch.linalg.vector_norm(ring.to_dense().double() / factor - x) / torch.linalg.vector_norm(x))
        assert abs(true - info.rel_error) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", METHODS, ids=IDS)
def test_half_precision_is_computed_in_float32_and_returned_as_is(m, dtype):
    ring = reference_ring(torch.float64)
    want, info64 = _call(m, ring, return_info=True)
    out, info = _scaled_call(m, ring.to(dtype), 1.0)
    assert out.dtype == dtype  # no torch internal error, and the input's dtype back
    assert info.rel_error < info64.rel_error + 0.05  # half precision data: ~3 digits


def test_rank_with_tol_is_a_cap_and_an_unmet_target_warns():
    x = torch.randn(6, 7, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64).cumsum(0)
    with pytest.warns(UserWarning, match=r"tol=0.01 not met at the rank caps \[2, 2, 2\]"):
        ring, info = trkit.tr_svd(x, rank=2, tol=0.01, return_info=True)
    assert max(ring.ranks) <= 2 and info.tol_met is False and info.rel_error > 0.01
    loose, info = trkit.tr_svd(x, rank=[8, 8, 8], tol=0.3, return_info=True)  # met within the caps
    assert info.tol_met and max(loose.ranks) <= 8
    free = trkit.tr_svd(x, tol=0.3)
    assert loose.ranks == free.ranks  # caps that do not bind change nothing


def test_tol_at_least_one_warns():
    x = torch.randn(4, 5, 6, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"tol=1 >= 1 asks for nothing"):
        trkit.tr_svd(x, tol=1.0)


@pytest.mark.parametrize(
    "values,dtype,match",
    [
        ([1.0, float("nan"), 2.0], torch.float64, r"contains 1 NaN value \(first at index \(0, 1\)\)"),
        ([1.0, float("inf"), float("-inf")], torch.float64, r"contains 2 Inf values \(first at index \(0, 1\)\)"),
        ([1.0, 3e38, 3e38], torch.float32, r"Inf values.*float32 holds magnitudes up to 3.4e\+38.*overflow"),
    ],
)
def test_non_finite_input_is_named(values, dtype, match):
    x = torch.tensor([values, [1.0, 2.0, 3.0]], dtype=torch.float64)
    x = (x * 10).to(dtype) if dtype == torch.float32 else x  # 3e39 does not fit float32: Inf
    with pytest.raises(ValueError, match=match):
        trkit.tr_svd(x, tol=0.1)
    with pytest.raises(ValueError, match=match):
        trkit.tr_als(x, 1)


def test_complex32_is_refused_by_name():
    with pytest.raises(TypeError, match="complex32"):
        trkit.tr_svd(torch.ones(2, 3, dtype=torch.complex32), tol=0.1)


def test_zero_tensor_gives_a_zero_ring():
    ring, info = trkit.tr_svd(np.zeros((3, 4, 5)), tol=0.1, return_info=True)
    assert float(ring.norm()) == 0 and info.rel_error == 0
