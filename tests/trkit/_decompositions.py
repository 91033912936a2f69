"""Every decomposition, as the cross-method tests call it (test_decompose_convention.py,
test_decompose_scale.py).

To add a method, append one ``Method`` to ``METHODS``: how to build its data from a reference
ring (a dense tensor, sampled entries, a function, a ring...), its minimal keyword options (a
callable value is called with the reference ring), and whether it iterates.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import trkit
from trkit import TensorRing

SHAPE = (5, 6, 4, 5)


def noisy(ring: TensorRing) -> torch.Tensor:
    """The ring's dense tensor plus 1% noise (not exactly a ring: iterative methods must sweep)."""
    x = ring.to_dense()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g, dtype=x.real.dtype).to(x.dtype)
    return x + 0.01 * noise * x.abs().mean()


def mask(ring: TensorRing) -> torch.Tensor:
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
    Method("tr_svd", trkit.tr_svd, noisy, {"rank": 2}, iterative=False),
    Method("tr_als", trkit.tr_als, noisy, {"rank": 2, "max_iter": 4}),
    Method("tr_als_adaptive", trkit.tr_als_adaptive, noisy, {"tol": 0.05, "max_iter": 3}),
    Method(
        "tr_als_sampled",
        trkit.tr_als_sampled,
        noisy,
        {"rank": 2, "n_samples": 60, "n_holdout": 300, "max_iter": 4, "init": "gaussian"},
    ),
    Method("tr_complete", trkit.tr_complete, noisy, {"rank": 2, "max_iter": 30, "mask": mask}),
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


def call(m: Method, ring: TensorRing, **extra):
    kwargs = {k: (v(ring) if callable(v) else v) for k, v in m.kwargs.items()}
    kwargs.update(extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # clamped ranks on tiny modes, unmet targets
        return m.fn(m.data(ring), **kwargs)


def reference_ring(dtype=torch.float64) -> TensorRing:
    ring = TensorRing.random(SHAPE, 2, seed=3, dtype=torch.float64)
    if dtype.is_complex:
        imag = TensorRing.random(SHAPE, 2, seed=4, dtype=torch.float64)
        ring = TensorRing([a + 0.5j * b for a, b in zip(ring.cores, imag.cores)])
    return ring.to(dtype)
