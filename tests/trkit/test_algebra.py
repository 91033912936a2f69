"""Algebra on rings vs the dense tensor (independent reference: tensorly.tr_to_tensor / torch)."""
import math

import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given, settings, strategies as st

import trkit
from trkit import algebra

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def ring_specs(draw, max_d=6, max_n=6, max_r=4):
    d = draw(st.integers(2, max_d))
    shape = draw(st.lists(st.integers(1, max_n), min_size=d, max_size=d))
    ranks = draw(st.lists(st.integers(1, max_r), min_size=d, max_size=d))
    seed = draw(st.integers(0, 2**31 - 1))
    return shape, ranks, seed


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
