"""Training checkpoints that load with ``weights_only=True``, and the fingerprint a checkpoint must match.

A checkpoint is written to a temporary file in the same folder and renamed over the old one, so a
crash while saving leaves the previous checkpoint intact; the one before is kept as ``*.prev.pt``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from trkit.errors import InputError
from trkit_vlm.files import atomic_write_bytes
from trkit_vlm.training.config import RunConfig

__all__ = ["fingerprint", "save_checkpoint", "load_checkpoint"]

# Config fields that do not change the numbers: a checkpoint written under other values still resumes.
_NOT_IN_FINGERPRINT = ("output_dir", "device", "log_every", "cache_dir", "prefix_cache", "eval_every", "checkpoint")


def fingerprint(cfg: RunConfig) -> dict:
    """The config minus fields that do not affect the result (what a checkpoint must match to resume)."""
    d = cfg.to_dict()
    for k in _NOT_IN_FINGERPRINT:
        d.pop(k, None)
    d["data"].pop("num_workers", None)
    return d


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
