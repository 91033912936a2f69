"""Files written atomically through trkit's one mechanism (:func:`trkit.files.atomic_write`: a temp
file beside the target, fsynced, renamed over it; modes kept; stale temps of killed writers removed).

These wrappers add what run folders need: the folder is created, and text and torch objects."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from trkit import files

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_torch_save"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`trkit.files.atomic_write_bytes`), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write_bytes(path, data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` made atomic."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
