"""A run folder's life: one training process at a time, a fresh start, and where ``--resume`` continues.

The folder ``output_dir/<dataset>/<method>/shots_<K>/seed<S>/`` holds ``config.json``, ``log.jsonl``,
``checkpoint.pt`` (and ``checkpoint.prev.pt``), ``adapters.safetensors``, ``metrics.json`` and ``.lock``.

- :func:`lock_run_folder`: an exclusive ``flock`` on ``.lock`` for as long as a run trains, so a second
  run into the same folder stops at once with the holder's pid and host. The kernel drops the lock when
  its process dies, so a killed run never blocks the next one.
- :func:`start_fresh`: a run that does not resume removes the previous run's results first, so the
  folder never mixes one run's config with another's metrics.
- :func:`resume_point`: the checkpoint a resume continues from, ``checkpoint.prev.pt`` when
  ``checkpoint.pt`` is missing or unreadable, and a refusal when the log shows epochs no checkpoint holds.
- :func:`finished_metrics`: a resume of a finished run returns its metrics as they are.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from trkit.errors import InputError
from trkit_vlm.training.checkpoint import check_fingerprint, load_checkpoint, previous_path

__all__ = ["RunFolderLock", "lock_run_folder", "start_fresh", "resume_point", "finished_metrics", "logged_epochs"]

LOCK_NAME = ".lock"
CHECKPOINT = "checkpoint.pt"
# What a run writes besides config.json; a fresh run removes them first.
RUN_OUTPUTS = ("log.jsonl", "metrics.json", "adapters.safetensors", CHECKPOINT, "checkpoint.prev.pt")


class RunFolderLock:
    """An exclusive ``flock`` on ``<run folder>/.lock`` (``fd`` None: locking unsupported, nothing held)."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    def release(self) -> None:
        """Drop the lock (the file stays: deleting a lock file races with a process about to lock it)."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunFolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file."""
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    return "holder unknown"


def lock_run_folder(run_dir: str | os.PathLike) -> RunFolderLock:
    """Take the run folder's lock (creating the folder), or refuse with one line naming the holder.

    Raises:
        InputError: another process holds the lock (a run training into the same folder).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise InputError(
            f"run folder {run_dir} is in use by another training run ({holder}); wait for it to end, "
            "or give this run another output_dir or seed"
        ) from None
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        warnings.warn(
            f"cannot lock {path} ({err.strerror}): a second run into this folder would not be stopped", stacklevel=2
        )
        return RunFolderLock(path, None)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return RunFolderLock(path, fd)


def start_fresh(run_dir: str | os.PathLike) -> None:
    """Remove what an earlier run left in ``run_dir`` (log, checkpoints, adapters, metrics)."""
    for name in RUN_OUTPUTS:
        with contextlib.suppress(FileNotFoundError):
            (Path(run_dir) / name).unlink()


def logged_epochs(run_dir: str | os.PathLike) -> list[int]:
    """The epochs ``log.jsonl`` records as finished (a line cut short by a kill is ignored)."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    epochs = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("type") == "epoch" and isinstance(record.get("epoch"), int):
            epochs.append(record["epoch"])
    return epochs


def resume_point(run_dir: str | os.PathLike, fingerprint: dict[str, Any]) -> tuple[Path, int] | None:
    """``(checkpoint file, its epoch)`` a resume continues from, or None to start from epoch 1.

    ``checkpoint.pt`` when it loads; otherwise ``checkpoint.prev.pt``, with a warning. None when
    neither exists and the run had not finished its first epoch (nothing is lost by starting again).

    Raises:
        InputError: a checkpoint of another run (its fingerprint differs); checkpoints that exist but
            cannot be read; no checkpoint while ``log.jsonl`` records two or more finished epochs or
            ``metrics.json`` exists (the checkpoint was lost: resuming would silently redo the run).
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    problems = []
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            problems.append(f"{candidate} is missing")
            continue
        try:
            state = load_checkpoint(candidate)
        except InputError as err:
            problems.append(str(err))
            continue
        check_fingerprint(state, fingerprint, candidate)
        if candidate != path:
            warnings.warn(f"{problems[0]}; resuming from the previous checkpoint {candidate}", stacklevel=2)
        return candidate, int(state["epoch"])
    if not path.is_file() and not previous_path(path).is_file():
        epochs = logged_epochs(run_dir)
        if len(epochs) >= 2 or (run_dir / "metrics.json").is_file():
            raise InputError(
                f"{run_dir} has no checkpoint, but its log.jsonl records finished epochs {epochs}: the checkpoint "
                "was lost or removed, and resuming would silently train again from epoch 1. Run without --resume "
                "to start the run again"
            )
        return None
    raise InputError("; ".join(problems))


def finished_metrics(run_dir: str | os.PathLike, epoch: int, epochs: int) -> dict[str, Any] | None:
    """The metrics of a finished run (checkpoint at the last epoch, adapters and metrics written), else None."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.json"
    if epoch < epochs or not metrics.is_file() or not (run_dir / "adapters.safetensors").is_file():
        return None
    try:
        return json.loads(metrics.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{metrics}: not valid JSON ({err}); remove it to evaluate the run again") from None
