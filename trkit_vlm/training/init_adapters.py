"""Starting a run from saved adapters (``RunConfig.init_adapters``): the checks made before any work, and
the config a run started from a file or a run folder gets (``trkit-vlm train --init-adapters``)."""

from __future__ import annotations

import json
from pathlib import Path

from trkit.errors import InputError
from trkit_vlm.adapters.io import adapter_file_of, read_adapter_file
from trkit_vlm.training.config import RunConfig, config_from_dict

__all__ = ["check_init_adapters", "config_with_init_adapters"]


def check_init_adapters(cfg: RunConfig) -> None:
    """Before any work: ``cfg.init_adapters`` names a readable adapter file (or run folder) of ``cfg.method``,
    and the run would not write over it."""
    if cfg.init_adapters is None:
        return
    path = adapter_file_of(cfg.init_adapters)
    saved, _, _ = read_adapter_file(path)
    if saved.method != cfg.method:
        raise InputError(
            f"init_adapters {cfg.init_adapters} holds {saved.method} adapters; this run trains {cfg.method}"
        )
    if path.resolve().parent == cfg.run_dir().resolve():
        raise InputError(
            f"this run's folder {cfg.run_dir()} holds the adapters it starts from ({path}); "
            "give another output_dir (--output-dir) so they are not written over"
        )


def config_with_init_adapters(base: RunConfig | None, source: str) -> RunConfig:
    """The config of a run starting from the adapters of ``source`` (an adapter file or a run folder).

    ``base`` (a config file the user gave) or, without one, the run folder's own ``config.json`` (its
    model, data, task, prompts and recipe) or the defaults; then ``init_adapters = source`` and the
    method and adapter fields of the saved adapters, so their weights load as saved.
    """
    path = adapter_file_of(source)
    if base is None:
        run_config = Path(source) / "config.json"
        base = config_from_dict(json.loads(run_config.read_text())) if run_config.is_file() else RunConfig()
    saved, _, _ = read_adapter_file(path)
    d = base.to_dict()
    fields = saved.to_dict()
    d["method"] = fields.pop("method")
    d["adapter"] = fields
    d["init_adapters"] = str(source)
    return config_from_dict(d)
