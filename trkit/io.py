"""Saving, loading and tensorly interop for :class:`~trkit.ring.TensorRing`.

File format: safetensors with tensors ``core_0 .. core_{d-1}`` and one metadata entry
``"trkit"`` holding JSON ``{"format": "trkit.TensorRing", "version": 1, "shape": [...],
"ranks": [...]}``. Writes are atomic (temp file in the target directory, then ``os.replace``);
loads never unpickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trkit.errors import InputError, InputTypeError
from trkit.ring import TensorRing, as_tensor

__all__ = ["save", "load", "from_tensorly", "to_tensorly", "atomic_write"]

FORMAT_NAME = "trkit.TensorRing"
FORMAT_VERSION = 1


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then ``os.replace`` it onto ``path``.

    The one atomic-write mechanism of the project (its add-on packages call it too): readers see
    the old file or the complete new one, never half a file; the temp file is removed if ``write``
    fails. The parent directory must exist (callers decide whether to create it). Returns ``path``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save(tr: TensorRing, path: str | os.PathLike) -> Path:
    """Write ``tr`` to ``path`` (safetensors; parent directory must exist). Returns the path.

    The file appears complete or not at all: data goes to a temp file beside ``path`` first.
    """
    from safetensors.torch import save_file

    if not isinstance(tr, TensorRing):
        raise InputTypeError(f"save expects a TensorRing, got {type(tr).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save to {path}: directory {path.parent} does not exist")
    tensors = {f"core_{k}": c.detach().cpu().contiguous() for k, c in enumerate(tr.cores)}
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "shape": list(tr.shape),
        "ranks": list(tr.ranks),
        "dtype": str(tr.dtype).replace("torch.", ""),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"trkit": json.dumps(meta)}))


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> TensorRing:
    """Read a ring written by :func:`save` (optionally straight onto ``device``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable trkit safetensors file, or its cores disagree
            with its metadata (message names the file).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no TensorRing file at {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device or "cpu")) as f:
            meta_raw = (f.metadata() or {}).get("trkit")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
        raise InputError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta_raw is None:
        raise InputError(f"{path} has no 'trkit' metadata; it was not written by trkit.save")
    try:
        meta = json.loads(meta_raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: trkit metadata is not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: unsupported format {meta.get('format')!r} version "
            f"{meta.get('version')!r} (this trkit reads {FORMAT_NAME!r} version {FORMAT_VERSION})"
        )
    d = len(meta.get("shape", []))
    names = [f"core_{k}" for k in range(d)]
    if sorted(tensors) != sorted(names):
        raise InputError(f"{path}: expected tensors {names}, found {sorted(tensors)}")
    try:
        tr = TensorRing([tensors[n] for n in names])
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc
    if list(tr.shape) != list(meta["shape"]) or list(tr.ranks) != list(meta.get("ranks", [])):
        raise InputError(
            f"{path}: cores give shape {tr.shape} and ranks {tr.ranks}, but the metadata "
            f"says shape {tuple(meta['shape'])} and ranks {tuple(meta.get('ranks', []))}"
        )
    return tr


def from_tensorly(tr_or_cores) -> TensorRing:
    """A TensorRing from a tensorly ``TRTensor`` or a list of cores (numpy or torch; same convention)."""
    cores = list(tr_or_cores)
    if not cores:
        raise InputError("from_tensorly: got no cores")
    return TensorRing([as_tensor(c) for c in cores])


def to_tensorly(tr: TensorRing):
    """A tensorly ``TRTensor`` whose cores use tensorly's current backend.

    With the ``pytorch`` backend the cores are the ring's own tensors (autograd graph kept);
    with ``numpy`` they are detached numpy arrays; other backends get ``tensorly.tensor`` copies.
    """
    import tensorly as tl
    from tensorly.tr_tensor import TRTensor

    if not isinstance(tr, TensorRing):
        raise InputTypeError(f"to_tensorly expects a TensorRing, got {type(tr).__name__}")
    backend = tl.get_backend()
    if backend == "pytorch":
        cores = list(tr.cores)
    elif backend == "numpy":
        cores = [c.detach().cpu().numpy() for c in tr.cores]
    else:
        cores = [tl.tensor(np.asarray(c.detach().cpu().numpy())) for c in tr.cores]
    return TRTensor(cores)
