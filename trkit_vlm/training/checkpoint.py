"""Training checkpoints that load with ``weights_only=True``, and the fingerprint a checkpoint must match.

Saving keeps a complete ``checkpoint.pt`` on disk at every moment: the current file is first kept as
``checkpoint.prev.pt`` by a hard link (a copy where the file system has none), then the new one is
written to a temp file and renamed over ``checkpoint.pt``. A kill or a full disk at any point leaves
the old or the new checkpoint, never neither.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from trkit.errors import InputError
from trkit.files import atomic_write
from trkit_vlm.files import atomic_write_bytes, atomic_write_text
from trkit_vlm.training.config import RunConfig

__all__ = ["fingerprint", "save_checkpoint", "load_checkpoint", "check_fingerprint", "previous_path"]

# Config fields that do not change the numbers: a checkpoint written under other values still resumes.
_NOT_IN_FINGERPRINT = ("output_dir", "device", "log_every", "cache_dir", "prefix_cache", "eval_every", "checkpoint")


def fingerprint(cfg: RunConfig) -> dict:
    """The config minus fields that do not affect the result (what a checkpoint must match to resume)."""
    d = cfg.to_dict()
    for k in _NOT_IN_FINGERPRINT:
        d.pop(k, None)
    d["data"].pop("num_workers", None)
    return d


def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint it replaces: ``<name>.prev.pt``."""
    return Path(path).with_suffix(".prev.pt")


# os.link fails with these where the file system has no hard links (FAT, some network and FUSE mounts).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


def _keep_as_previous(path: Path) -> None:
    """Make ``<name>.prev.pt`` the same content as ``path`` (atomically), leaving ``path`` in place."""

    def link_or_copy(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError as err:
            if err.errno not in _NO_HARD_LINKS:
                raise
            shutil.copyfile(path, tmp)

    atomic_write(previous_path(path), link_or_copy)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` atomically to ``path``; the file it replaces is kept as ``<name>.prev.pt``.

    ``path`` holds a complete checkpoint at every moment of the save (the old one until the rename,
    then the new one), so a kill or a full disk half way never loses the run.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    if path.is_file():
        _keep_as_previous(path)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and check it belongs to this run.

    Args:
        path: the checkpoint file.
        fingerprint: what must match (e.g. the run config); compared with ``state["fingerprint"]``.

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable/corrupt file, or written for another
            run (the message names the differing keys). The file on disk is left as it is.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign / empty files
        reason = " ".join(str(err).split())[:200] or "no details"
        size = path.stat().st_size
        raise InputError(
            f"checkpoint {path} is corrupt or not a trkit checkpoint ({size} bytes; {type(err).__name__}: {reason})"
        ) from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise InputError(f"checkpoint {path} is not a trkit training checkpoint")
    if fingerprint is not None:
        check_fingerprint(state, fingerprint, path)
    return state


def check_fingerprint(state: dict[str, Any], fingerprint: dict[str, Any], path: str | os.PathLike) -> None:
    """InputError naming the differing config keys when checkpoint ``state`` belongs to another run.

    A field the checkpoint's fingerprint lacks (it was written before the field existed) matches when
    this run leaves the field at its default, so a new config option does not orphan older checkpoints.
    """
    diff = _diff(fingerprint, state["fingerprint"], defaults=fingerprint_of_defaults())
    if diff:
        raise InputError(
            f"checkpoint {path} was written for a different run (differs in: "
            f"{', '.join(diff[:6])}); use a new output_dir or remove the checkpoint"
        )


def fingerprint_of_defaults() -> dict:
    """The fingerprint of ``RunConfig()``: every field at its default."""
    return fingerprint(RunConfig())


def _diff(a: Any, b: Any, prefix: str = "", defaults: Any = None) -> list[str]:
    """Dotted keys where ``a`` and ``b`` differ; a key ``b`` lacks is equal when ``a`` holds its default."""
    if isinstance(a, dict) and isinstance(b, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in b and k in defaults and a[k] == defaults[k]:
                continue
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.", defaults.get(k))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [prefix.rstrip(".")]


def trim_log(path: Path, last_epoch: int) -> None:
    """Keep the lines of the JSONL log ``path`` up to epoch ``last_epoch`` (a resumed run writes the
    interrupted epoch again) and drop a line a kill cut short; nothing to do when there is no log."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(line).get("epoch", 0) <= last_epoch:
                keep.append(line)
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))
