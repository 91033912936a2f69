"""One API convention, checked over every decomposition (docs/api/decompose.md).

The methods and how to call them are listed once, in ``_decompositions.METHODS``.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from _decompositions import IDS, METHODS
from _decompositions import call as _call
from _decompositions import reference_ring as _ring

from trkit import TensorRing
from trkit.decompose.info import DecompositionInfo


@pytest.mark.parametrize("m", METHODS, ids=IDS)
def test_signature_keyword_only_after_data_and_rank(m):
    params = list(inspect.signature(m.fn).parameters.values())
    assert [p.name for p in params[:2]] == [m.first, "rank"]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:2])
    rest = {p.name: p for p in params[2:]}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest.values())
    common = {"tol", "return_info"} | ({"stop_tol", m.sweeps, "callback", "verbose"} if m.iterative else set())
    assert common <= set(rest), common - set(rest)
    with pytest.raises(TypeError):  # a third positional argument is refused, not reinterpreted
        m.fn(m.data(_ring()), 2, 0.1)


@pytest.mark.parametrize("m", METHODS, ids=IDS)
def test_return_info_declares_its_fields(m):
    ring = _ring()
    plain = _call(m, ring)
    assert isinstance(plain, TensorRing)
    out, info = _call(m, ring, return_info=True)
    assert isinstance(out, TensorRing) and isinstance(info, DecompositionInfo)
    assert dataclasses.is_dataclass(info)
    assert all("__getattr__" not in vars(c) for c in type(info).__mro__ if c is not object)
    names = {f.name for f in dataclasses.fields(info)}
    assert {"method", "rel_error", "ranks", "n_iter", "time_s", "converged", "tol", "tol_met", "history"} <= names
    assert info.method == m.name and info.ranks == out.ranks and info.time_s >= 0
    assert 0 <= info.rel_error < 1 and len(info.history) >= 1
    with pytest.raises(AttributeError):
        _ = info.no_such_field  # nothing is looked up dynamically


@pytest.mark.parametrize("m", [m for m in METHODS if m.iterative], ids=[m.name for m in METHODS if m.iterative])
def test_callback_sees_ring_and_info_and_can_stop(m):
    ring = _ring()
    seen = []

    def callback(current, info):
        seen.append((current, info))
        return True  # stop after the first sweep

    out, info = _call(m, ring, callback=callback, return_info=True, tol=1e-12)
    assert len(seen) == 1 and info.n_iter == 1 and not info.converged
    current, snapshot = seen[0]
    assert isinstance(current, TensorRing) and current.shape == ring.shape
    assert isinstance(snapshot, DecompositionInfo) and snapshot.n_iter == 1 and snapshot.method == m.name


@pytest.mark.parametrize("m", METHODS, ids=IDS)
def test_tol_is_an_error_target(m):
    ring = _ring()
    out, info = _call(m, ring, tol=0.5, return_info=True)
    assert info.tol == 0.5 and info.tol_met is True and info.rel_error <= 0.5
    out, info = _call(m, ring, tol=0, return_info=True)  # accepted: "as exact as possible"
    assert info.tol == 0 and info.tol_met is (info.rel_error == 0)
    kwargs = {k: (v(ring) if callable(v) else v) for k, v in m.kwargs.items()}
    with pytest.warns(UserWarning, match="asks for nothing"):
        m.fn(m.data(ring), **{**kwargs, "tol": 1.0})
    with pytest.raises(ValueError, match="tol"):
        _call(m, ring, tol=-0.1)


@pytest.mark.parametrize("m", [m for m in METHODS if m.iterative], ids=[m.name for m in METHODS if m.iterative])
def test_stop_tol_zero_runs_every_sweep(m):
    if m.name == "tr_als_adaptive":
        pytest.skip("adaptive's sweeps end on rank decisions, not on stop_tol alone")
    out, info = _call(m, _ring(), return_info=True, stop_tol=0.0, **{m.sweeps: 4})
    assert info.n_iter == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
@pytest.mark.parametrize("m", METHODS, ids=IDS)
def test_dtype_is_kept(m, dtype):
    out, info = _call(m, _ring(dtype), return_info=True)
    assert out.dtype == dtype
    assert 0 <= info.rel_error < (0.5 if dtype in (torch.float32, torch.complex64) else 0.3)
