"""One API convention, checked over every decomposition (docs/api/decompose.md).

To add a method, append one ``Method`` to ``METHODS``: how to build its data from a reference
ring (a dense tensor, sampled entries, a function, a ring...), its minimal keyword options, and
whether it iterates.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

import trkit
from trkit import TensorRing
from trkit.decompose.info import DecompositionInfo

SHAPE = (5, 6, 4, 5)


def _noisy(ring: TensorRing) -> torch.Tensor:
    """The ring's dense tensor plus 1% noise (not exactly a ring: iterative methods must sweep)."""
    x = ring.to_dense()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g, dtype=x.real.dtype).to(x.dtype)
    return x + 0.01 * noise * x.abs().mean()


def _mask(ring: TensorRing) -> torch.Tensor:
    return torch.rand(ring.shape, generator=torch.Generator().manual_seed(2)) < 0.6


@dataclass
class Method:
    name: str
    fn: Callable
    data: Callable  # reference ring -> the first positional argument
    kwargs: dict = field(default_factory=dict)  # minimal keyword options (may depend on the ring)
    iterative: bool = True
    first: str = "x"  # name of the first parameter
    sweeps: str = "max_iter"  # name of the option bounding the sweeps


METHODS = [
    Method("tr_svd", trkit.tr_svd, _noisy, {"rank": 2}, iterative=False),
    Method("tr_als", trkit.tr_als, _noisy, {"rank": 2, "max_iter": 4}),
    Method("tr_als_adaptive", trkit.tr_als_adaptive, _noisy, {"tol": 0.05, "max_iter": 3}),
    Method(
        "tr_als_sampled",
        trkit.tr_als_sampled,
        _noisy,
        {"rank": 2, "n_samples": 60, "n_holdout": 300, "max_iter": 4, "init": "gaussian"},
    ),
    Method("tr_complete", trkit.tr_complete, _noisy, {"rank": 2, "max_iter": 30, "mask": _mask}),
    Method(
        "tr_round",
        trkit.tr_round,
        lambda ring: trkit.add(ring, trkit.scale(TensorRing.random(ring.shape, 1, seed=5, dtype=ring.dtype), 0.05)),
        {"max_rank": 2, "refine": 3},
        first="ring",
        sweeps="refine",
    ),
]
IDS = [m.name for m in METHODS]


def _call(m: Method, ring: TensorRing, **extra):
    kwargs = {k: (v(ring) if callable(v) else v) for k, v in m.kwargs.items()}
    kwargs.update(extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # clamped ranks on tiny modes, unmet targets
        return m.fn(m.data(ring), **kwargs)


def _ring(dtype=torch.float64) -> TensorRing:
    ring = TensorRing.random(SHAPE, 2, seed=3, dtype=torch.float64)
    if dtype.is_complex:
        imag = TensorRing.random(SHAPE, 2, seed=4, dtype=torch.float64)
        ring = TensorRing([a + 0.5j * b for a, b in zip(ring.cores, imag.cores)])
    return ring.to(dtype)


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
