"""Writing files safely: atomic replace, the modes ``open()`` would give, cleanup after kills.

Every file trkit and its add-on packages write goes through :func:`atomic_write`:

- the data goes to a temp file beside the target, is flushed to disk, then renamed over the
  target, so readers see the old file or the complete new one, never half of it;
- a new file gets the mode a plain ``open(path, "w")`` would give (``0o666 & ~umask``), and a
  replaced file keeps its own mode;
- temp files are named ``.<name>.<pid>-<host>.<random>.tmp``; a process killed mid-write leaves
  one behind, and the next write to the same target removes it once its writer is gone (same
  host, process not running) or it is older than :data:`STALE_AFTER_S` (other hosts, old names).

:func:`check_output_path` runs the checks a command should do on an output path before it starts
a long computation (suffix, not a directory, not one of the inputs, folder writable, space).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import stat
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from trkit.errors import InputError

__all__ = ["atomic_write", "atomic_write_bytes", "check_output_path", "remove_stale_temps", "format_bytes"]

# A temp file this old is not being written any more, whoever made it (writes take seconds to minutes).
STALE_AFTER_S = 24 * 3600.0

_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; for sizes in messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _temp_pattern(name: str) -> re.Pattern:
    # .<name>.<pid>-<host>.<random>.tmp, or the older .<name>.<mkstemp random>.tmp (no pid)
    return re.compile(rf"\.{re.escape(name)}\.(?:(?P<pid>\d+)-(?P<host>[0-9a-f]{{8}})\.[0-9a-f]+|[A-Za-z0-9_]+)\.tmp")


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing the same target
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temp files of earlier writes to ``path`` whose writer is gone; returns what was removed.

    A temp is stale when its writer ran on this host and is no longer running, or when it is
    older than :data:`STALE_AFTER_S` (writers on other hosts sharing the folder, temps without
    a pid). Temps of running writers are left alone.
    """
    path = Path(path)
    pattern = _temp_pattern(path.name)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
        except FileNotFoundError:
            continue
        mine = match["host"] == _HOST
        if old or (mine and not _pid_running(int(match["pid"]))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _new_temp(path: Path) -> tuple[Path, int]:
    """Create an empty temp file beside ``path``; returns it and the mode ``open()`` gave it."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}-{_HOST}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        except FileExistsError:
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    raise FileExistsError(errno.EEXIST, "could not create a unique temp file", str(path.parent))


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise  # some file systems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it onto ``path``.

    The one atomic-write mechanism of the project (its add-on packages call it too): readers see
    the old file or the complete new one, never half a file; the data is fsynced before the
    rename. ``write`` may write the temp file in place or replace it. The new file gets the mode
    ``open(path, "w")`` would give; an existing file keeps its mode. The temp file is removed if
    anything fails, and stale temps of earlier, killed writes to ``path`` are removed first.
    The parent directory must exist (callers decide whether to create it). Returns ``path``.

    Raises:
        IsADirectoryError: ``path`` is a directory.
        OSError: writing failed (full disk, read-only file system, ...); the message names
            ``path`` (not the temp file) and the target is unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    remove_stale_temps(path)
    tmp = None
    try:
        tmp, mode = _new_temp(path)
        with contextlib.suppress(FileNotFoundError):
            existing = os.stat(path)
            if stat.S_ISREG(existing.st_mode):
                mode = stat.S_IMODE(existing.st_mode)
        write(str(tmp))
        os.chmod(tmp, mode)  # a writer that replaced the temp (e.g. by its own rename) must not decide the mode
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    except OSError as exc:
        if exc.errno is None or exc.filename == str(path):
            raise
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` with :func:`atomic_write`. Returns ``path``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def _probe_writable(folder: Path, name: str) -> None:
    tmp, _ = _new_temp(folder / name)
    os.unlink(tmp)


def check_output_path(
    path: str | os.PathLike,
    *,
    suffixes: Sequence[str] = (),
    inputs: Sequence[str | os.PathLike | None] = (),
    size: int | None = None,
    what: str = "output",
) -> Path:
    """Check, before any work, that ``path`` can be written; returns it as a ``Path``.

    Args:
        path: the output file.
        suffixes: allowed suffixes (lower case, with the dot), e.g. ``(".safetensors",)``.
        inputs: files the command reads; ``path`` must not be any of them (compared by inode,
            so symlinks and hard links count).
        size: bytes the output will take, if known: refused when the file system has less free.
        what: how the message names the path (e.g. ``"--out"``).

    Raises:
        InputError: with one line naming the problem (wrong suffix, a directory, the input
            itself, missing or read-only folder, not enough space).
    """
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{what} {path}: must end in {' or '.join(suffixes)} (that is the format written)")
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory; give a file name inside it")
    for inp in inputs:
        if inp is not None and path.exists() and Path(inp).exists() and os.path.samefile(path, inp):
            raise InputError(f"{what} {path} is the input file {inp}; writing it would destroy the input")
    folder = path.parent
    if not folder.is_dir():
        reason = "is not a directory" if folder.exists() else "does not exist"
        raise InputError(f"{what} {path}: folder {folder} {reason}")
    try:
        _probe_writable(folder, path.name)
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot write in {folder} ({exc.strerror})") from None
    if size is not None:
        free = shutil.disk_usage(folder).free  # an existing target is freed only after the rename
        if size > free:
            raise InputError(
                f"{what} {path}: needs {format_bytes(size)} but the file system of {folder} has "
                f"{format_bytes(free)} free"
            )
    return path
