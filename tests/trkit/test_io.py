"""Serialisation (safetensors, atomic, never unpickles) and tensorly interop."""

import json
import os

import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import trkit
from trkit import TensorRing


@pytest.fixture
def numpy_backend():
    old = tl.get_backend()
    tl.set_backend("numpy")
    yield
    tl.set_backend(old)


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 6), seed=st.integers(0, 10**6), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_save_load_round_trip_is_exact(tmp_path_factory, d, seed, dtype):
    rng = np.random.default_rng(seed)
    shape, ranks = rng.integers(1, 7, d).tolist(), rng.integers(1, 5, d).tolist()
    tr = TensorRing.random(shape, ranks, seed=seed, dtype=dtype)
    path = tmp_path_factory.mktemp("io") / "ring.safetensors"
    assert trkit.save(tr, path) == path
    back = trkit.load(path)
    assert back.shape == tr.shape and back.ranks == tr.ranks and back.dtype == dtype
    assert all(torch.equal(x, y) for x, y in zip(back.cores, tr.cores))
    assert os.listdir(path.parent) == ["ring.safetensors"]  # no temp files left behind


def test_metadata_header(tmp_path):
    from safetensors import safe_open

    path = trkit.save(TensorRing.random((2, 3, 4), (1, 2, 3), seed=0), tmp_path / "r.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["trkit"])
    assert meta == {
        "format": "trkit.TensorRing",
        "version": 1,
        "shape": [2, 3, 4],
        "ranks": [1, 2, 3],
        "dtype": "float64",
    }


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        trkit.load(missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trkit.save(TensorRing.random((2,), 1, seed=0), tmp_path / "no_dir" / "x.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 this is not safetensors")
    with pytest.raises(ValueError, match="garbage.safetensors is not a readable safetensors file"):
        trkit.load(garbage)
    good = trkit.save(TensorRing.random((2, 3), 2, seed=0), tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        trkit.load(truncated)
    # a pickle is rejected, never unpickled
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"core_0": torch.ones(1, 2, 1)}, pickled)
    with pytest.raises(ValueError, match="pickled.safetensors is not a readable safetensors file"):
        trkit.load(pickled)
    plain = tmp_path / "plain.safetensors"
    save_file({"core_0": torch.ones(1, 2, 1)}, str(plain))
    with pytest.raises(ValueError, match="plain.safetensors has no 'trkit' metadata"):
        trkit.load(plain)


def _write(path, tensors, meta):
    save_file(tensors, str(path), metadata={"trkit": meta if isinstance(meta, str) else json.dumps(meta)})
    return path


def test_load_rejects_inconsistent_files(tmp_path):
    meta = {"format": "trkit.TensorRing", "version": 1, "shape": [2, 3], "ranks": [2, 2]}
    cores = {"core_0": torch.randn(2, 2, 2), "core_1": torch.randn(2, 3, 2)}
    with pytest.raises(ValueError, match="v2.safetensors: unsupported format 'trkit.TensorRing' version 2"):
        trkit.load(_write(tmp_path / "v2.safetensors", cores, {**meta, "version": 2}))
    with pytest.raises(ValueError, match="bad.safetensors: trkit metadata is not valid JSON"):
        trkit.load(_write(tmp_path / "bad.safetensors", cores, "{not json"))
    with pytest.raises(
        ValueError, match=r"few.safetensors: expected tensors \['core_0', 'core_1'\], found \['core_0'\]"
    ):
        trkit.load(_write(tmp_path / "few.safetensors", {"core_0": cores["core_0"]}, meta))
    with pytest.raises(
        ValueError,
        match=r"shape.safetensors: cores give shape \(2, 3\) and ranks \(2, 2\), "
        r"but the metadata says shape \(2, 4\)",
    ):
        trkit.load(_write(tmp_path / "shape.safetensors", cores, {**meta, "shape": [2, 4]}))
    with pytest.raises(ValueError, match="ranks.safetensors: ranks disagree between core 0 and core 1"):
        trkit.load(
            _write(
                tmp_path / "ranks.safetensors", {"core_0": torch.randn(2, 2, 3), "core_1": torch.randn(2, 3, 2)}, meta
            )
        )
    with pytest.raises(TypeError, match="save expects a TensorRing, got list"):
        trkit.save([torch.ones(1, 2, 1)], tmp_path / "x.safetensors")


def test_tensorly_round_trip_numpy_backend(numpy_backend):
    tr = TensorRing.random((3, 4, 5), (2, 3, 4), seed=1)
    tt = trkit.to_tensorly(tr)
    assert all(isinstance(c, np.ndarray) for c in tt)
    assert np.allclose(tl.tr_to_tensor(tt), tr.to_numpy(), rtol=1e-12)
    back = trkit.from_tensorly(tt)
    assert all(torch.equal(x, y) for x, y in zip(back.cores, tr.cores))
    # tensorly's own decomposition comes in exactly (same convention)
    x = np.random.default_rng(0).standard_normal((4, 5, 6))
    fac = tl.decomposition.tensor_ring(x, rank=[1, 3, 4, 1])
    assert np.allclose(trkit.from_tensorly(fac).to_numpy(), tl.tr_to_tensor(fac), rtol=1e-12)


def test_tensorly_round_trip_pytorch_backend():
    old = tl.get_backend()
    tl.set_backend("pytorch")
    try:
        tr = TensorRing.random((3, 4), (2, 2), seed=2).requires_grad_()
        tt = trkit.to_tensorly(tr)
        assert all(isinstance(c, torch.Tensor) for c in tt)
        dense = tl.tr_to_tensor(tt)
        assert torch.allclose(dense, tr.to_dense())
        dense.sum().backward()  # same tensors: gradients reach the ring's cores
        assert tr.cores[0].grad is not None
        back = trkit.from_tensorly(tt)
        assert all(x is y for x, y in zip(back.cores, tr.cores))
    finally:
        tl.set_backend(old)


def test_from_tensorly_errors():
    with pytest.raises(ValueError, match="from_tensorly: got no cores"):
        trkit.from_tensorly([])
    with pytest.raises(ValueError, match="ranks disagree"):
        trkit.from_tensorly([np.ones((1, 2, 2)), np.ones((3, 2, 1))])
    with pytest.raises(TypeError, match="to_tensorly expects a TensorRing"):
        trkit.to_tensorly([np.ones((1, 2, 1))])
