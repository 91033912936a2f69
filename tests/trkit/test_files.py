"""trkit.files: atomic writes keep usual file modes, clean up after killed writers, name the file
when the disk is full or read-only, and check output paths before any work."""

import errno
import os
import signal
import stat
import time

import pytest
from _faults import full_disk, start_writer_that_hangs, tiny_fs

import trkit
from trkit.files import STALE_AFTER_S, atomic_write, atomic_write_bytes, check_output_path, remove_stale_temps


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _plain_open_mode(folder, name="reference") -> int:
    """The mode ``open(..., "w")`` gives under the current umask: the reference for new files."""
    ref = folder / name
    with open(ref, "w"):
        pass
    mode = _mode(ref)
    ref.unlink()
    return mode


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_new_files_get_the_mode_open_would_give(tmp_path, umask, mask):
    umask(mask)
    want = _plain_open_mode(tmp_path)
    assert want == 0o666 & ~mask
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    trkit.save(trkit.TensorRing.random((2, 3), 2, seed=0), tmp_path / "r.safetensors")
    assert _mode(tmp_path / "a.bin") == want
    assert _mode(tmp_path / "r.safetensors") == want


def test_replacing_a_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "r.safetensors"
    trkit.save(trkit.TensorRing.random((2, 3), 2, seed=0), path)
    os.chmod(path, 0o640)
    trkit.save(trkit.TensorRing.random((2, 3), 2, seed=1), path)
    assert _mode(path) == 0o640
    # a writer that replaces the temp file itself (as safetensors' save_file does) cannot change it
    os.chmod(path, 0o604)

    def replace_tmp(tmp):
        side = tmp + ".side"
        with open(side, "wb") as f:
            f.write(b"new")
        os.chmod(side, 0o600)
        os.replace(side, tmp)

    atomic_write(path, replace_tmp)
    assert _mode(path) == 0o604 and path.read_bytes() == b"new"


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_killed_writer_leaves_a_temp_that_the_next_write_removes(tmp_path):
    target = tmp_path / "ring.safetensors"
    ring = trkit.TensorRing.random((20, 30, 40), 4, seed=0)
    trkit.save(ring, target)
    before = target.read_bytes()
    proc, _ = start_writer_that_hangs(
        target,
        """
        import trkit
        trkit.save(trkit.TensorRing.random((20, 30, 40), 5, seed=1), target)
        """,
        after_bytes=1000,
    )
    try:
        (tmp,) = _temps(tmp_path)
        assert tmp.startswith(f".ring.safetensors.{proc.pid}-")
        assert (tmp_path / tmp).stat().st_size == 1000  # half written
        # a second writer while the first is alive leaves its temp alone
        atomic_write_bytes(tmp_path / "other.bin", b"1")
        trkit.save(ring, target)
        assert _temps(tmp_path) == [tmp]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert target.read_bytes() == before  # the killed write changed nothing
    assert _temps(tmp_path) == [tmp]  # ... but left its temp file
    trkit.save(ring, target)  # the next write to the same target cleans it up
    assert _temps(tmp_path) == []
    assert trkit.load(target).shape == (20, 30, 40)


def test_old_temps_without_a_live_writer_are_removed(tmp_path):
    target = tmp_path / "x.npy"
    other_host = tmp_path / f".x.npy.{os.getpid()}-00000000.1234abcd.tmp"  # another host: age decides
    mkstemp_style = tmp_path / ".x.npy.k2j4_a9q.tmp"  # written by mkstemp: no pid, age decides
    unrelated = tmp_path / ".y.npy.123-00000000.1234abcd.tmp"  # another target: never touched
    for p in (other_host, mkstemp_style, unrelated):
        p.write_bytes(b"partial")
    assert remove_stale_temps(target) == []  # all fresh
    old = time.time() - STALE_AFTER_S - 60
    for p in (other_host, mkstemp_style, unrelated):
        os.utime(p, (old, old))
    assert sorted(remove_stale_temps(target)) == sorted([other_host, mkstemp_style])
    assert unrelated.exists()


def test_full_disk_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "ring.safetensors"
    trkit.save(trkit.TensorRing.random((2, 3), 2, seed=0), path)
    before = path.read_bytes()
    full_disk(monkeypatch, budget=100, match=lambda p: p.name.endswith(".tmp"))
    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device") as info:
        trkit.save(trkit.TensorRing.random((40, 40), 3, seed=1), path)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["ring.safetensors"]


def test_full_tmpfs_and_read_only_tmpfs(tmp_path):
    with tiny_fs(tmp_path / "small", "64k") as small:
        (small / "keep.bin").write_bytes(b"old")
        with pytest.raises(OSError, match="No space left on device") as info:
            atomic_write_bytes(small / "keep.bin", bytes(200_000))
        assert info.value.errno == errno.ENOSPC
        assert (small / "keep.bin").read_bytes() == b"old" and os.listdir(small) == ["keep.bin"]
    with tiny_fs(tmp_path / "ro", "64k", readonly=True) as ro:
        with pytest.raises(OSError, match="Read-only file system"):
            atomic_write_bytes(ro / "x.bin", b"1")
        with pytest.raises(ValueError, match=r"cannot write in .*ro \(Read-only file system\)"):
            check_output_path(ro / "x.bin")


def test_writing_onto_a_directory_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic_write_bytes(tmp_path / "d", b"1")
    with pytest.raises(ValueError, match="is a directory"):
        check_output_path(tmp_path / "d")


def test_check_output_path(tmp_path):
    src = tmp_path / "a.npy"
    src.write_bytes(b"data")
    (tmp_path / "link.npy").symlink_to(src)
    os.link(src, tmp_path / "hard.npy")
    for same in ("a.npy", "link.npy", "hard.npy"):
        with pytest.raises(ValueError, match=f"{same} is the input file .*a.npy; writing it would destroy the input"):
            check_output_path(tmp_path / same, inputs=[src])
    assert check_output_path(tmp_path / "b.npy", inputs=[src], suffixes=(".npy",)) == tmp_path / "b.npy"
    with pytest.raises(ValueError, match=r"b.npy: must end in \.safetensors"):
        check_output_path(tmp_path / "b.npy", suffixes=(".safetensors",))
    with pytest.raises(ValueError, match="folder .*nope does not exist"):
        check_output_path(tmp_path / "nope" / "b.npy")
    with pytest.raises(ValueError, match="folder .*a.npy is not a directory"):
        check_output_path(src / "b.npy")
    with pytest.raises(ValueError, match=r"needs 8\.0 TiB but the file system of .* has .* free"):
        check_output_path(tmp_path / "b.npy", size=8 << 40)
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "hard.npy", "link.npy"]  # the probe left nothing
