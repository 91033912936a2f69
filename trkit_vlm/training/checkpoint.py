"""Atomic file writes, RNG state as tensors, and training checkpoints that load with ``weights_only=True``.

A checkpoint is written to a temporary file in the same folder and renamed over the old one, so a
crash while saving leaves the previous checkpoint intact; the one before is kept as ``*.prev.pt``.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trkit.errors import InputError
from trkit.io import atomic_write


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


def rng_state() -> dict[str, torch.Tensor]:
    """Python, numpy, torch (CPU and CUDA) RNG states, all as tensors (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": torch.tensor([version, *internal], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_meta": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_gauss], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"].tolist()
    g = float(state["python_gauss"][0])
    random.setstate((int(py[0]), tuple(int(v) for v in py[1:]), None if g != g else g))
    pos, has_gauss = (int(v) for v in state["numpy_meta"].tolist())
    np.random.set_state(
        ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, float(state["numpy_gauss"][0]))
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` atomically to ``path``; the file it replaces is kept as ``<name>.prev.pt``."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    if path.exists():
        os.replace(path, path.with_suffix(".prev.pt"))
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
    except Exception as err:  # torch raises several types for truncated / foreign files
        prev = path.with_suffix(".prev.pt")
        hint = f"; the previous one is {prev}" if prev.is_file() else ""
        raise InputError(
            f"checkpoint {path} is corrupt or not a trkit checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}){hint}"
        ) from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise InputError(f"checkpoint {path} is not a trkit training checkpoint")
    if fingerprint is not None:
        diff = _diff(fingerprint, state["fingerprint"])
        if diff:
            raise InputError(
                f"checkpoint {path} was written for a different run (differs in: "
                f"{', '.join(diff[:6])}); use a new output_dir or remove the checkpoint"
            )
    return state


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [prefix.rstrip(".")]
