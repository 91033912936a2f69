"""`trkit` CLI under faults: outputs that would destroy inputs or cannot be written, full disks,
damaged and hostile input files, values float32 cannot hold, huge rings, and memory limits.
Every failure must be one `trkit COMMAND: error:` line with exit code 2, found before the work starts."""

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
from _faults import full_disk, run_limited, tiny_fs
from safetensors.torch import save_file

import trkit
from trkit.cli import main


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("trkit ") and ": error: " in err, err
    return err


@pytest.fixture
def data(tmp_path):
    x = trkit.TensorRing.random((6, 7, 8), 2, seed=0).to_numpy()
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "x.npy"


@pytest.fixture
def no_decomposition(monkeypatch):
    """Fail the test if a decomposition runs: the output checks must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the decomposition ran before the output path was checked")

    for name in ("tr_svd", "tr_als", "tr_als_adaptive", "tr_als_sampled"):
        monkeypatch.setattr(trkit, name, forbidden)


def test_out_that_is_the_input_is_refused(data, capsys, no_decomposition):
    folder = data.parent
    src = folder / "x.safetensors"  # an array file with the suffix rings are written with
    save_file({"w": torch.from_numpy(np.load(data))}, str(src))
    (folder / "link.safetensors").symlink_to(src)
    os.link(src, folder / "hard.safetensors")
    before = src.read_bytes()
    for out in ("x.safetensors", "link.safetensors", "hard.safetensors"):
        assert main(["decompose", str(src), "--tol", "1e-3", "--out", str(folder / out)]) == 2
        assert f"--out {folder / out} is the input file {src}; writing it would destroy the input" in _err_line(capsys)
    assert src.read_bytes() == before
    before = data.read_bytes()
    assert main(["decompose", str(data), "--tol", "1e-3", "--out", str(data)]) == 2
    assert f"--out {data}: must end in .safetensors" in _err_line(capsys)
    assert data.read_bytes() == before


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["decompose", "{x}", "--tol", "0.1", "--out", "{d}/ring.npy"], "--out {d}/ring.npy: must end in .safetensors"),
        (["decompose", "{x}", "--tol", "0.1", "--out", "{d}/sub"], "--out {d}/sub: must end in .safetensors"),
        (["decompose", "{x}", "--tol", "0.1", "--out", "{d}/dir.safetensors"], "dir.safetensors is a directory"),
        (["decompose", "{x}", "--tol", "0.1", "--out", "{d}/no/r.safetensors"], "folder {d}/no does not exist"),
        (["decompose", "{x}", "--tol", "0.1", "--plot", "{d}/p.jpg"], "--plot {d}/p.jpg: must end in .png"),
        (["decompose", "{x}", "--tol", "0.1", "--plot", "{x}"], "must end in .png"),
        (["reconstruct", "{d}/r.safetensors", "--out", "{d}/x.safetensors"], "must end in .npy"),
        (["reconstruct", "{d}/r.safetensors", "--out", "{d}/dir.npy"], "dir.npy is a directory"),
    ],
)
def test_bad_out_paths_are_refused_before_the_work(data, capsys, no_decomposition, argv, needle):
    d = data.parent
    (d / "sub").mkdir()
    (d / "dir.safetensors").mkdir()
    (d / "dir.npy").mkdir()
    trkit.save(trkit.TensorRing.random((3, 4), 2, seed=0), d / "r.safetensors")
    assert main([a.format(x=data, d=d) for a in argv]) == 2
    assert needle.format(x=data, d=d) in _err_line(capsys)


def test_reconstruct_onto_its_own_ring_file_is_refused(tmp_path, capsys):
    ring_file = tmp_path / "ring.npy"  # a ring saved under a .npy name
    trkit.save(trkit.TensorRing.random((3, 4), 2, seed=0), ring_file)
    before = ring_file.read_bytes()
    assert main(["reconstruct", str(ring_file), "--out", str(ring_file)]) == 2
    assert "is the input file" in _err_line(capsys)
    assert ring_file.read_bytes() == before


def test_read_only_file_system(data, tmp_path, capsys, no_decomposition):
    with tiny_fs(tmp_path / "ro", readonly=True) as ro:
        assert main(["decompose", str(data), "--tol", "0.1", "--out", str(ro / "r.safetensors")]) == 2
        assert "(Read-only file system)" in _err_line(capsys)


@pytest.mark.parametrize("command", ["decompose", "reconstruct"])
def test_full_disk_is_one_error_line(data, tmp_path, capsys, monkeypatch, command):
    ring_file = tmp_path / "r.safetensors"
    trkit.save(trkit.TensorRing.random((60, 70, 80), 3, seed=0), ring_file)
    if command == "decompose":
        argv, out = ["decompose", str(data), "--rank", "2", "--out", str(ring_file)], ring_file
    else:
        out = tmp_path / "dense.npy"
        out.write_bytes(b"previous")
        argv = ["reconstruct", str(ring_file), "--out", str(out)]
    before = out.read_bytes()
    full_disk(monkeypatch, budget=200, match=lambda p: p.name.endswith(".tmp"))
    assert main(argv) == 2
    assert f"cannot write {out}: No space left on device" in _err_line(capsys)
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_full_tmpfs_is_one_error_line(data, tmp_path, capsys):
    ring_file = tmp_path / "r.safetensors"
    trkit.save(trkit.TensorRing.random((30, 40, 50), 2, seed=0), ring_file)  # 468.8 KiB dense
    with tiny_fs(tmp_path / "small", "256k") as small:
        # reconstruct knows the size: refused before writing anything
        assert main(["reconstruct", str(ring_file), "--out", str(small / "x.npy")]) == 2
        assert "needs 472.8 KiB but the file system of" in _err_line(capsys)
        # decompose cannot know the ring's size: the kernel's ENOSPC while writing is one line
        fd = os.open(small / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, bytes(4096))
        os.close(fd)
        assert main(["decompose", str(data), "--rank", "2", "--out", str(small / "r.safetensors")]) == 2
        assert f"cannot write {small / 'r.safetensors'}: No space left on device" in _err_line(capsys)
        assert sorted(os.listdir(small)) == ["filler"]


def test_metadata_that_is_json_but_not_an_object(tmp_path, capsys):
    for meta, kind in (("[1, 2]", "array"), ('"ring"', "string"), ("3", "number"), ("null", "null")):
        path = tmp_path / "m.safetensors"
        save_file({"core_0": torch.ones(1, 2, 1)}, str(path), metadata={"trkit": meta})
        for argv in (["info", str(path)], ["reconstruct", str(path), "--out", str(tmp_path / "o.npy")]):
            assert main(argv) == 2
            assert f"trkit metadata is a JSON {kind}, not an object" in _err_line(capsys)
    bad_shape = {"format": "trkit.TensorRing", "version": 1, "shape": "23", "ranks": [1]}
    save_file(
        {"core_0": torch.ones(1, 2, 1)}, str(tmp_path / "s.safetensors"), metadata={"trkit": json.dumps(bad_shape)}
    )
    assert main(["info", str(tmp_path / "s.safetensors")]) == 2
    assert "'shape' must be a list of positive integers, got '23'" in _err_line(capsys)


class Payload:
    """A class torch.load(weights_only=True) must refuse to instantiate."""


def test_messages_name_the_culprit(tmp_path, capsys):
    torch.save({"w": torch.ones(30, 40)}, tmp_path / "good.pt")
    good = (tmp_path / "good.pt").read_bytes()
    cases = []
    (tmp_path / "text.npy").write_bytes(b"just some text, not an array")
    cases.append(("text.npy", "text.npy: not a .npy file (it does not start with the NumPy header)"))
    with open(tmp_path / "pickle.npy", "wb") as f:
        pickle.dump({"a": 1}, f)
    cases.append(("pickle.npy", "pickle.npy: is a Python pickle, not a .npy file; refused"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases.append(("obj.npy", "obj.npy: holds Python objects (a pickled object array), not numbers; refused for safety"))
    np.save(tmp_path / "cut.npy", np.ones((10, 10)))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:300])
    cases.append(("cut.npy", "cut.npy: truncated: the header promises 800 bytes of data, the file has 172"))
    for n in (len(good) - 30, len(good) // 2, 100, 0):  # cut in the central directory, the data, the header
        (tmp_path / f"cut{n}.pt").write_bytes(good[:n])
        cases.append((f"cut{n}.pt", f"cut{n}.pt: truncated or corrupt .pt file"))
    torch.save({"w": torch.ones(2, 2), "p": Payload()}, tmp_path / "evil.pt")
    cases.append(("evil.pt", "evil.pt: refused: it holds pickled Python objects, not only tensors (Unsupported global"))
    for name, needle in cases:
        assert main(["decompose", str(tmp_path / name), "--tol", "0.1"]) == 2, name
        err = _err_line(capsys)
        assert needle in err, err
        assert "Errno 22" not in err and "contains pickled data" not in err
    assert main(["decompose", str(tmp_path / "evil.pt"), "--tol", "0.1"]) == 2
    evil = _err_line(capsys)
    assert "GLOBAL test_cli_faults.Payload" in evil and "never runs pickled code" in evil


@pytest.mark.parametrize(
    "values,dtype,needle",
    [
        ([np.nan, 1.0], "auto", "contains 1 NaN values"),
        ([np.inf, -np.inf, np.nan], "auto", "contains 1 NaN and 2 infinite values"),
        ([np.inf], "float64", "contains 1 infinite values"),
        ([1e300, -1e39], "float32", "2 values overflow float32 (largest magnitude 1.000e+300 > 3.403e+38)"),
    ],
)
def test_nan_inf_and_float32_overflow_are_told_apart(tmp_path, capsys, values, dtype, needle):
    x = np.ones((8, 9))
    x.flat[: len(values)] = values
    np.save(tmp_path / "x.npy", x)
    assert main(["decompose", str(tmp_path / "x.npy"), "--rank", "2", "--dtype", dtype]) == 2
    assert needle in _err_line(capsys)
    # float64 values beyond float32's range are fine in float64 (the default for float64 input)
    if dtype == "float32":
        assert main(["decompose", str(tmp_path / "x.npy"), "--rank", "2"]) == 0


def test_dtype_auto_keeps_float32_input_in_float32(tmp_path, capsys):
    x = trkit.TensorRing.random((6, 7, 8), 2, seed=0, dtype=torch.float32).to_numpy()
    np.save(tmp_path / "x32.npy", x)
    out = tmp_path / "r.safetensors"
    assert main(["decompose", str(tmp_path / "x32.npy"), "--rank", "2", "--out", str(out)]) == 0
    assert "float32" in capsys.readouterr().out and trkit.load(out).dtype == torch.float32
    # a tolerance float32 cannot meet switches to float64
    assert main(["decompose", str(tmp_path / "x32.npy"), "--tol", "1e-7", "--out", str(out)]) == 0
    assert trkit.load(out).dtype == torch.float64
    # half precision files: computed in float32, the ring as exact as float32 allows
    torch.save({"w": torch.from_numpy(x).bfloat16()}, tmp_path / "bf16.pt")
    np.save(tmp_path / "f16.npy", x.astype(np.float16))
    for name, ref in (("bf16.pt", torch.from_numpy(x).bfloat16().float().numpy()), ("f16.npy", x.astype(np.float16))):
        assert main(["decompose", str(tmp_path / name), "--tol", "1e-3", "--out", str(out)]) == 0
        ring = trkit.load(out)
        assert ring.dtype == torch.float32
        ref = ref.astype(np.float64)
        assert np.linalg.norm(ring.to_numpy() - ref) <= 1e-3 * np.linalg.norm(ref)


def test_info_prints_norms_beyond_the_dtype_range(tmp_path, capsys):
    base = trkit.TensorRing.random((5, 6, 7), 3, seed=0)
    ref = np.linalg.norm(base.to_numpy())
    # float32 cores whose norm is 1e40 * ref (float32 overflows at 3.4e38) and float64 with 1e400 * ref
    cases = [
        (trkit.TensorRing([c * 1e20 for c in base.cores[:2]] + [base.cores[2]]).to(torch.float32), 40),
        (trkit.TensorRing([c * 1e200 for c in base.cores[:2]] + [base.cores[2]]), 400),
    ]
    for ring, exp in cases:
        assert not math.isfinite(float(trkit.norm(ring)))  # the naive norm overflows
        trkit.save(ring, tmp_path / "big.safetensors")
        assert main(["info", str(tmp_path / "big.safetensors")]) == 0
        line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("norm: ")][0]
        mantissa, exponent = line[len("norm: ") :].split("e")
        want = math.log10(ref) + exp
        assert int(exponent) == math.floor(want)
        assert float(mantissa) == pytest.approx(10 ** (want - math.floor(want)), rel=1e-5)


def test_reconstruct_writes_what_np_save_writes(tmp_path, capsys):
    from trkit.io import save_dense

    for shape, ranks, dtype in [((7, 8, 9), (2, 3, 4), torch.float64), ((2, 3, 50, 5), 3, torch.float32)]:
        ring = trkit.TensorRing.random(shape, ranks, seed=1, dtype=dtype)
        np.save(tmp_path / "ref.npy", ring.to_numpy())
        # blocks much smaller than the tensor: cut along later modes, written in file order
        for block_bytes in (1, 100, 3000, 1 << 30):
            save_dense(ring, tmp_path / "out.npy", block_bytes=block_bytes)
            got, want = np.load(tmp_path / "out.npy"), np.load(tmp_path / "ref.npy")
            assert got.shape == want.shape and got.dtype == want.dtype
            tol = 1e-6 if dtype == torch.float32 else 1e-14  # the block order changes the rounding
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
            assert (tmp_path / "out.npy").stat().st_size == (tmp_path / "ref.npy").stat().st_size
    trkit.save(ring, tmp_path / "r.safetensors")
    assert main(["reconstruct", str(tmp_path / "r.safetensors"), "--out", str(tmp_path / "cli.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "cli.npy"), ring.to_numpy(), rtol=1e-5)


def test_a_ring_too_large_for_the_disk_is_refused_up_front(tmp_path, capsys):
    # 8 TB dense (2^40 float64 entries) from 40 small cores
    ring = trkit.TensorRing.random((2,) * 40, 2, seed=0)
    trkit.save(ring, tmp_path / "huge.safetensors")
    assert main(["reconstruct", str(tmp_path / "huge.safetensors"), "--out", str(tmp_path / "x.npy")]) == 2
    err = _err_line(capsys)
    assert "needs 8.0 TiB" in err and "the dense tensor" in err and ".entries(index)" in err
    assert os.listdir(tmp_path) == ["huge.safetensors"]
    assert main(["info", str(tmp_path / "huge.safetensors")]) == 0
    assert "entries: 1099511627776" in capsys.readouterr().out


def test_memory_limits(tmp_path):
    """Under an address-space limit below the dense tensor's size: reconstruct streams the tensor
    to disk, sampled ALS reads a memory-mapped file, and a dense method that cannot fit says so
    in one line, refused up front or caught when it runs out."""
    small = tmp_path / "small.npy"
    np.save(small, np.ones((4, 5, 6)))
    trkit.save(trkit.TensorRing.random((4, 5, 6), 2, seed=0), tmp_path / "ring_small.safetensors")
    ring = trkit.TensorRing.random((64, 64, 64, 64), 3, seed=0, dtype=torch.float32)  # 64 MiB dense
    trkit.save(ring, tmp_path / "ring.safetensors")
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, ring.to_numpy())
    mib = 1 << 20
    map_ = 64 * mib  # mapping the input file counts towards the address space, its pages do not
    res = run_limited(
        "trkit.cli:main",
        {
            "reconstruct": (["reconstruct", tmp_path / "ring.safetensors", "--out", y], 48 * mib),
            "sampled": (["decompose", x, "--method", "sampled", "--rank", "3", "--max-iter", "2"], 48 * mib + map_),
            "refused": (["decompose", x, "--rank", "3"], 48 * mib + map_),
            "caught": (["decompose", x, "--rank", "3"], 72 * mib + map_),
        },
        warmup=[
            ["decompose", small, "--rank", "2"],
            ["reconstruct", tmp_path / "ring_small.safetensors", "--out", tmp_path / "warm.npy"],
        ],
    )
    for name in ("reconstruct", "sampled"):
        assert res[name]["rc"] == 0, (name, res[name]["stderr"][-2000:])
    np.testing.assert_allclose(np.load(y, mmap_mode="r")[:2], np.load(x)[:2], rtol=1e-6)
    assert "needs at least 64.0 MiB of memory" in res["refused"]["stderr"]
    assert "out of memory while decomposing (64, 64, 64, 64) (64.0 MiB)" in res["caught"]["stderr"]
    for name in ("refused", "caught"):
        rc, err = res[name]["rc"], res[name]["stderr"]
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err[-2000:]
        assert "--method sampled" in err


@pytest.mark.parametrize(
    "error",
    [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: not enough memory")],
)
def test_running_out_of_memory_in_a_method_is_one_line(data, capsys, monkeypatch, error):
    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(trkit, "tr_svd", out_of_memory)
    assert main(["decompose", str(data), "--rank", "2"]) == 2
    assert "out of memory while decomposing (6, 7, 8) (2.6 KiB); try --method sampled" in _err_line(capsys)
    monkeypatch.setattr(trkit, "tr_svd", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    # Other errors are not disguised as memory problems: they are bugs (traceback, exit 1).
    assert main(["decompose", str(data), "--rank", "2"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err and "out of memory" not in err
