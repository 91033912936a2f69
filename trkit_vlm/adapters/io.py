"""Saving and loading adapters alone (independent of the backbone weights), and importing official MMA
checkpoints.

File format: one safetensors file holding the adapter tensors (keys as in ``model.trkit_adapters``) with
metadata ``format``, ``config`` (the adapter config as JSON), ``towers`` (width and depth of each tower)
and ``layers`` (the adapted 1-based layers).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from trkit.errors import InputError, InputTypeError
from trkit_vlm.adapters.base import TOWERS, AdapterSet, add_adapters, get_adapters, remove_adapters
from trkit_vlm.adapters.config import AdapterConfig
from trkit_vlm.adapters.mma.config import MMAConfig
from trkit_vlm.adapters.registry import adapter_config_from_dict
from trkit_vlm.files import atomic_write_bytes
from trkit_vlm.models import tower_info

__all__ = [
    "save_adapters",
    "load_adapters",
    "read_adapter_file",
    "read_mma_state_dict",
    "mma_config_from_state_dict",
    "import_mma_checkpoint",
    "add_adapters_with_weights",
    "FORMAT",
]

FORMAT = "trkit-adapters/1"
_MMA_KEY = re.compile(r"^(text_adapter|visual_adapter|shared_adapter)\.(\d+)\.(.+)$")


def save_adapters(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's adapters (tensors + config) to ``path`` atomically (temp file + rename).

    The file is serialised in memory (adapters are small) and written by :func:`trkit.files.atomic_write`,
    so a kill or a full disk leaves the old file and no safetensors ``.tmpXXXX`` file."""
    aset = get_adapters(model)
    if aset is None:
        raise InputError("model has no trkit adapters to save")
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in aset.state_dict().items()}
    meta = {
        "format": FORMAT,
        "config": json.dumps(aset.config.to_dict()),
        "towers": json.dumps(aset.info),
        "layers": json.dumps({t: aset.adapted_layers(t) for t in TOWERS}),
    }
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=meta))
    return path


def read_adapter_file(path: str | os.PathLike):
    """``(config, towers, tensors)`` of an adapter file, without touching any model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for non-safetensors files
        raise InputError(f"{path} is not a safetensors adapter file ({err})") from err
    if meta.get("format") != FORMAT:
        raise InputError(f"{path} is not a trkit adapter file (format {meta.get('format')!r}, expected {FORMAT!r})")
    return adapter_config_from_dict(json.loads(meta["config"])), json.loads(meta["towers"]), tensors


def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Add the adapters stored in ``path`` to ``model`` (a fresh backbone) and load their weights.

    If the model already has adapters of the same config, their weights are replaced. Raises ValueError
    naming the tower, layer or tensor that disagrees when the file was made for another backbone.
    """
    config, towers, tensors = read_adapter_file(path)
    have = tower_info(model)
    for t in ("text", "image"):
        for what in ("width", "depth"):
            if towers[t][what] != have[t][what]:
                raise InputError(
                    f"adapter file {path} was made for a {t} tower of {what} {towers[t][what]}; "
                    f"this backbone's {t} tower has {what} {have[t][what]}"
                )
    add_adapters_with_weights(model, config, tensors, str(path))
    return model


def add_adapters_with_weights(
    model: nn.Module, config: AdapterConfig, tensors: dict[str, torch.Tensor], source: str = "adapter tensors"
) -> AdapterSet:
    """Add ``config``'s adapters to ``model`` (or reuse equal ones it has) and copy ``tensors`` into them.

    Raises InputError naming the missing, unexpected or mis-shaped tensors (``source`` says where they
    came from); adapters added here are removed again on failure.
    """
    existing = get_adapters(model)
    added = existing is None
    if added:
        add_adapters(model, config)
    elif existing.config.to_dict() != config.to_dict():
        raise InputError(
            f"model already has different adapters ({existing.config.method}); "
            f"call remove_adapters(model) before loading {source}"
        )
    aset = get_adapters(model)
    try:
        _check_and_copy(aset, tensors, source)
    except Exception:
        if added:
            remove_adapters(model)
        raise
    return aset


def _check_and_copy(aset: AdapterSet, tensors: dict[str, torch.Tensor], source: str) -> None:
    own = aset.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise InputError(
            f"{source} does not match this backbone's adapters (text layers {aset.adapted_layers('text')}, "
            f"image layers {aset.adapted_layers('image')}): missing {missing[:6]}, unexpected {unexpected[:6]}"
        )
    for k, v in own.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise InputError(
                f"{source}: tensor {k} has shape {tuple(tensors[k].shape)}, "
                f"this backbone's adapter needs {tuple(v.shape)}"
            )
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(tensors[k].to(dtype=v.dtype, device=v.device))


# ----------------------------------------------------------------------------------- official MMA


def read_mma_state_dict(source) -> dict[str, torch.Tensor]:
    """The MMA adapter tensors of an official checkpoint (Dassl ``model.pth.tar-N`` / ``model-best.pth.tar``,
    a plain state dict, or an already loaded dict), keys ``text_adapter.{i}...`` etc.

    Loads with ``torch.load(weights_only=True)``; ``module.`` / ``adapter_learner.`` prefixes are stripped and
    the fixed prompt buffers (``token_embedding``, ``tokenized_prompts``) dropped.
    """
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"MMA checkpoint not found: {source}")
        try:
            source = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InputError(f"could not read {source} with torch.load(weights_only=True): {err}") from err
    if not isinstance(source, dict):
        raise InputTypeError(f"expected a state dict or checkpoint path, got {type(source).__name__}")
    sd = source.get("state_dict", source)
    out = {}
    for k, v in sd.items():
        for pre in ("module.", "adapter_learner.", "trkit_adapters."):
            if k.startswith(pre):
                k = k[len(pre) :]
        if _MMA_KEY.match(k) and isinstance(v, torch.Tensor):
            out[k] = v.detach().float()
    if not out:
        raise InputError(
            "no MMA adapter tensors (text_adapter.{i}..., visual_adapter.{i}..., shared_adapter.{i}...) "
            f"found; keys look like {list(sd)[:5]}"
        )
    return out


def mma_config_from_state_dict(sd: dict[str, torch.Tensor], scale: float = 0.001):
    """The ``MMAConfig`` (layers, hidden width) an official MMA state dict was trained with."""
    idx = {"text_adapter": set(), "visual_adapter": set()}
    for k in sd:
        m = _MMA_KEY.match(k)
        if m and m.group(1) in idx:
            idx[m.group(1)].add(int(m.group(2)))
    ranges = {}
    for name, s in idx.items():
        if not s:
            raise InputError(f"MMA state dict has no {name} tensors")
        if 0 in s:
            raise InputError(
                "MMA's layer-0 (token-embedding / ln_pre) adapter is not supported; train with ADAPTER_START >= 1"
            )
        lo, hi = min(s), max(s)
        if s != set(range(lo, hi + 1)):
            raise InputError(f"{name} layers {sorted(s)} are not one contiguous range")
        ranges[name] = (lo, hi)
    lo, hi = ranges["text_adapter"]
    hidden = sd[f"text_adapter.{lo}.down.0.weight"].shape[0]
    return MMAConfig(
        hidden=int(hidden), text_layers=ranges["text_adapter"], image_layers=ranges["visual_adapter"], scale=scale
    )


def import_mma_checkpoint(model: nn.Module, source, scale: float = 0.001) -> nn.Module:
    """Add MMA adapters matching an official checkpoint to ``model`` and load its weights."""
    sd = read_mma_state_dict(source)
    config = mma_config_from_state_dict(sd, scale=scale)
    where = str(source) if isinstance(source, (str, os.PathLike)) else "MMA state dict"
    add_adapters_with_weights(model, config, sd, where)
    return model
