"""Reading the MMA adapters to compress: a run folder, a trkit adapter file, an official checkpoint or a
state dict, with the MMA config (layers, hidden width, scale) they were trained with."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from trkit.errors import InputError
from trkit_vlm.adapters.io import mma_config_from_state_dict, read_adapter_file, read_mma_state_dict
from trkit_vlm.adapters.mma.config import MMAConfig
from trkit_vlm.training.config import RunConfig, config_from_dict

__all__ = ["MMASource", "read_mma_source", "DEFAULT_MMA_SCALE"]

# MMA's published output scale; official checkpoints do not store it.
DEFAULT_MMA_SCALE = 0.001


@dataclass
class MMASource:
    """A trained MMA adapter set and where it came from.

    Attributes:
        state_dict: the adapter tensors under MMA's official key names.
        config: the MMA config (layers, hidden width, ``scale``).
        scale_origin: where ``config.scale`` came from (the file, the caller, or MMA's default).
        run_config: the source run's config when the source is a run folder (model, data, task, prompts).
        description: the path (or "MMA state dict") for reports.
    """

    state_dict: dict[str, torch.Tensor]
    config: MMAConfig
    scale_origin: str
    run_config: RunConfig | None
    description: str


def _check_scale(stored: float, given: float | None, where: str) -> None:
    if given is not None and float(given) != float(stored):
        raise InputError(f"{where} was trained with scale {stored}; scale={given} contradicts it (leave it out)")


def read_mma_source(source, scale: float | None = None) -> MMASource:
    """Read ``source``: a run folder of an MMA run (``config.json`` + ``adapters.safetensors``), a trkit MMA
    adapter file (``.safetensors``), an official MMA checkpoint (``.pth.tar``/``.pt``) or a state dict.

    ``scale`` is needed only for official checkpoints and state dicts, which do not store it (default
    MMA's 0.001); a run folder or adapter file keeps its own, and a different ``scale`` is an error.
    """
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        run = Path(source)
        cfg_path, adapters = run / "config.json", run / "adapters.safetensors"
        if not cfg_path.is_file() or not adapters.is_file():
            raise InputError(f"{run} is not a finished run folder (needs config.json and adapters.safetensors)")
        run_config = config_from_dict(json.loads(cfg_path.read_text()))
        if run_config.method != "mma":
            raise InputError(f"{run} is a {run_config.method} run; compress takes MMA runs")
        found = _adapter_file(adapters, scale)
        return MMASource(found.state_dict, found.config, "run folder", run_config, str(run))
    if isinstance(source, (str, os.PathLike)) and str(source).endswith(".safetensors"):
        return _adapter_file(Path(source), scale)
    sd = read_mma_state_dict(source)
    where = str(source) if isinstance(source, (str, os.PathLike)) else "MMA state dict"
    value = DEFAULT_MMA_SCALE if scale is None else float(scale)
    origin = "given" if scale is not None else f"MMA's default {DEFAULT_MMA_SCALE} (official checkpoints store none)"
    return MMASource(sd, mma_config_from_state_dict(sd, scale=value), origin, None, where)


def _adapter_file(path: Path, scale: float | None) -> MMASource:
    config, _, tensors = read_adapter_file(path)
    if config.method != "mma":
        raise InputError(f"{path} holds {config.method} adapters, not MMA")
    _check_scale(config.scale, scale, str(path))
    sd = read_mma_state_dict(tensors)
    # Layers and width from the tensors (the stored config may say None: MMA's placement for the depth).
    return MMASource(sd, mma_config_from_state_dict(sd, scale=config.scale), "adapter file", None, str(path))
