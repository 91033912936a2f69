"""Saving, loading and tensorly interop for :class:`~trkit.ring.TensorRing`.

File format: safetensors with tensors ``core_0 .. core_{d-1}`` and one metadata entry
``"trkit"`` holding a JSON object ``{"format": "trkit.TensorRing", "version": 1, "shape": [...],
"ranks": [...]}``. Writes go through :func:`trkit.files.atomic_write` (complete or absent, usual
file modes, temp files of killed writes cleaned up); loads never unpickle. :func:`save_dense`
writes a ring's dense tensor as ``.npy`` a block at a time, so it works for tensors larger than
memory.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from trkit._blocks import block_indices
from trkit.errors import InputError, InputTypeError
from trkit.files import atomic_write, atomic_write_bytes
from trkit.ring import TensorRing, as_tensor

__all__ = ["save", "load", "save_dense", "from_tensorly", "to_tensorly", "atomic_write"]

FORMAT_NAME = "trkit.TensorRing"
FORMAT_VERSION = 1


def save(tr: TensorRing, path: str | os.PathLike) -> Path:
    """Write ``tr`` to ``path`` (safetensors; parent directory must exist). Returns the path.

    The file appears complete or not at all: data goes to a temp file beside ``path`` first.
    """
    from safetensors.torch import save as safetensors_bytes

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
    # serialised in memory (rings are small) so the bytes go through atomic_write: safetensors'
    # own file writer leaves a .tmpXXXX file behind when killed
    return atomic_write_bytes(path, safetensors_bytes(tensors, metadata={"trkit": json.dumps(meta)}))


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
    if not isinstance(meta, dict):
        raise InputError(f"{path}: trkit metadata is a JSON {_json_kind(meta)}, not an object")
    if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: unsupported format {meta.get('format')!r} version "
            f"{meta.get('version')!r} (this trkit reads {FORMAT_NAME!r} version {FORMAT_VERSION})"
        )
    for key in ("shape", "ranks"):
        value = meta.get(key)
        if not (isinstance(value, list) and all(type(n) is int and n >= 1 for n in value)):
            raise InputError(f"{path}: trkit metadata {key!r} must be a list of positive integers, got {value!r:.80}")
    d = len(meta["shape"])
    names = [f"core_{k}" for k in range(d)]
    if sorted(tensors) != sorted(names):
        raise InputError(f"{path}: expected tensors {names}, found {sorted(tensors)}")
    try:
        tr = TensorRing([tensors[n] for n in names])
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc
    if list(tr.shape) != meta["shape"] or list(tr.ranks) != meta["ranks"]:
        raise InputError(
            f"{path}: cores give shape {tr.shape} and ranks {tr.ranks}, but the metadata "
            f"says shape {tuple(meta['shape'])} and ranks {tuple(meta['ranks'])}"
        )
    return tr


def _json_kind(value) -> str:
    names = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def dense_nbytes(tr: TensorRing) -> int:
    """Bytes of ``tr``'s dense tensor as :func:`save_dense` writes it (without the .npy header)."""
    return math.prod(tr.shape) * _numpy_dtype(tr.dtype).itemsize


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    # numpy has no bfloat16: those rings are written as float32
    return np.dtype("float32") if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype


def save_dense(tr: TensorRing, path: str | os.PathLike, *, block_bytes: int = 8 << 20) -> Path:
    """Write ``tr``'s dense tensor to ``path`` as ``.npy``, one block of ``<= block_bytes`` at a time.

    Memory stays near ``block_bytes`` whatever the tensor's size, so the file may be larger than
    RAM (read it back with ``np.load(path, mmap_mode="r")``). Same header and layout as
    ``np.save(path, tr.to_numpy())`` (bfloat16 rings as float32), values equal up to rounding
    (blocks are contracted separately); written atomically.
    """
    if not isinstance(tr, TensorRing):
        raise InputTypeError(f"save_dense expects a TensorRing, got {type(tr).__name__}")
    dtype = _numpy_dtype(tr.dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(tr.shape)}
    ring = tr.detach()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for index in block_indices(tr.shape, dtype.itemsize, block_bytes):
                dense = ring[index].to_dense()
                block = (dense.float() if dense.dtype == torch.bfloat16 else dense).cpu().numpy()
                if isinstance(f, io.BufferedWriter):
                    block.tofile(f)  # as np.save does: ~3x faster than f.write for large blocks
                else:
                    f.write(memoryview(block).cast("B"))

    return atomic_write(path, write)


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
    cores: list[torch.Tensor] | list[np.ndarray]
    if backend == "pytorch":
        cores = list(tr.cores)
    elif backend == "numpy":
        cores = [c.detach().cpu().numpy() for c in tr.cores]
    else:
        cores = [tl.tensor(np.asarray(c.detach().cpu().numpy())) for c in tr.cores]
    return TRTensor(cores)
