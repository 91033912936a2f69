"""Evaluate a run folder (base / novel / HM / all), on its own dataset or another one (``trkit-vlm eval``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trkit.errors import InputError
from trkit_vlm.adapters import load_adapters
from trkit_vlm.data import load_dataset
from trkit_vlm.evaluation.evaluate import evaluate_base_novel
from trkit_vlm.files import atomic_write_text
from trkit_vlm.models import load_clip, register_model_config
from trkit_vlm.training.config import RunConfig, load_config
from trkit_vlm.training.distributed import resolve_device
from trkit_vlm.training.seeding import seed_everything
from trkit_vlm.training.train import load_run_data


def evaluate_run(
    run_dir: str | None,
    dataset: str | None = None,
    root: str | None = None,
    split: str = "test",
    zero_shot: bool = False,
    model: str | None = None,
    pretrained: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Accuracy of a run's adapters (or zero-shot CLIP) on its own or another dataset."""
    if run_dir is not None:
        cfg_path = Path(run_dir) / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
        cfg = load_config(cfg_path, validate=True)
    elif zero_shot:
        cfg = RunConfig()
    else:
        raise InputError("give a run folder, or --zero-shot with --model/--dataset")
    name = model or cfg.model
    weights = pretrained if pretrained is not None else cfg.pretrained
    dev = resolve_device(device)
    if cfg.model_config is not None:
        register_model_config(cfg.model, cfg.model_config)
    # train() seeds before building the model, so a random-weight backbone is rebuilt identically here.
    seed_everything(cfg.seed)
    bundle = load_clip(name, weights, device=str(dev))
    if not zero_shot:
        path = Path(run_dir) / "adapters.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the run has not finished")
        load_adapters(bundle.model, path)
    if dataset is None:  # the run's own data, its task (shift, hold-out, scored images) included
        if root is not None:
            cfg.data.root = root
        data = load_run_data(cfg)
    else:
        data = load_dataset(dataset, root if root is not None else cfg.data.root)
    acc = evaluate_base_novel(
        bundle.model,
        bundle.tokenizer,
        data,
        cfg.prompt_template(),
        batch_size=batch_size or cfg.optim.eval_batch_size,
        split=split,
    )
    result = {
        "dataset": data.name,
        "split": split,
        "trained_on": None if zero_shot else cfg.dataset_key(),
        "method": "zero-shot" if zero_shot else cfg.method,
        "model": name,
        "pretrained": weights,
        **acc,
    }
    if run_dir is not None:
        atomic_write_text(
            Path(run_dir) / f"eval_{data.name}_{split}{'_zeroshot' if zero_shot else ''}.json",
            json.dumps(result, indent=2),
        )
    return result
