"""Files written atomically: a temporary file in the target's folder, fsynced, then renamed over it,
so a crash leaves either the old file or the new one (``trkit.io.atomic_write``)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from trkit.io import atomic_write

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_torch_save"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`trkit.io.atomic_write`), fsynced, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` made atomic."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
