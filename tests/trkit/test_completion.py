"""Tensor completion recovers an exact low-rank ring from 30% of its entries."""

import numpy as np
import pytest
import torch

from trkit import TensorRing, tr_complete


def test_recovers_exact_ring_from_30_percent():
    tr = TensorRing.random((8, 8, 8, 8), 2, seed=3)
    x = tr.to_dense()
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    ring, info = tr_complete(x, 2, mask=mask, return_info=True)
    dense = ring.to_dense()
    unobs = float((dense - x)[~mask].norm() / x[~mask].norm())  # independent dense reference
    assert unobs < 1e-6
    assert info.heldout_error < 1e-6 and info.train_error < 1e-6
    assert abs(info.unobserved_error - unobs) < 1e-12


def test_index_value_form_and_holdout_zero():
    tr = TensorRing.random((6, 6, 6, 6), 2, seed=1)
    x = tr.to_dense()
    flat = np.random.default_rng(0).permutation(x.numel())[:520]  # 40% of the entries
    idx = np.stack(np.unravel_index(flat, x.shape), 1)
    vals = x.numpy()[tuple(idx.T)]
    ring, info = tr_complete((idx, vals), rank=2, shape=x.shape, holdout=0.0, return_info=True)
    assert info.heldout_error is None and info.rel_error == info.train_error
    assert info.train_error < 1e-6


@pytest.mark.parametrize(
    "args,kw,match",
    [
        ((torch.ones(3, 3), 1), {"mask": torch.zeros(3, 3, dtype=torch.bool)}, "observes no entries"),
        ((torch.ones(3, 3), 1), {"mask": torch.ones(3, 4, dtype=torch.bool)}, "mask shape"),
        ((torch.ones(3, 3), 1), {"mask": torch.ones(3, 3)}, None),
        (((np.zeros((2, 2), int), np.zeros(2)),), {"rank": 1}, "shape"),
        ((torch.ones(3, 3), 0), {"mask": torch.ones(3, 3, dtype=torch.bool)}, "rank"),
    ],
)
def test_bad_input(args, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tr_complete(*args, **kw)
