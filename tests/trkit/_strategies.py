"""Hypothesis strategies shared by the core tests: random ring shapes and ranks."""

from hypothesis import settings
from hypothesis import strategies as st

from trkit import TensorRing

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def ring_specs(draw, max_d=6, max_n=6, max_r=4):
    """``(shape, ranks, seed)`` of a random ring: order 2..max_d, modes 1..max_n, ranks 1..max_r."""
    d = draw(st.integers(2, max_d))
    shape = draw(st.lists(st.integers(1, max_n), min_size=d, max_size=d))
    ranks = draw(st.lists(st.integers(1, max_r), min_size=d, max_size=d))
    seed = draw(st.integers(0, 2**31 - 1))
    return shape, ranks, seed


@st.composite
def rings(draw, max_d=6, max_n=6, max_r=4):
    """A float64 ``TensorRing.random`` drawn from :func:`ring_specs`."""
    shape, ranks, seed = draw(ring_specs(max_d, max_n, max_r))
    return TensorRing.random(shape, ranks, seed=seed)
