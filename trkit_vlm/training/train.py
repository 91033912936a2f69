"""Few-shot adapter training for open_clip CLIP: one config in, adapter weights and metrics out.

``train(cfg)`` runs the CoOp base-to-novel protocol: sample K shots per class (cached), train the
adapters on the base classes, evaluate base / novel / HM / all-class accuracy. It checkpoints every
epoch (atomically, with optimiser, scheduler, scaler and RNG state) and ``resume=True`` continues to
the same final numbers. Under ``torchrun`` it trains data-parallel (DDP).

Run folder ``output_dir/<dataset>/<method>/shots_<K>/seed<S>/``: ``config.json``, ``log.jsonl``,
``checkpoint.pt``, ``adapters.safetensors`` (the adapter config in its metadata), ``metrics.json``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from trkit.errors import InputError
from trkit_vlm.data import (
    ClassificationData,
    check_usable,
    few_shot_data,
    fewshot_cache_path,
    load_dataset,
    subsample_classes,
)
from trkit_vlm.data.transforms import build_transforms, check_files, load_image
from trkit_vlm.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from trkit_vlm.training.config import RunConfig, save_config
from trkit_vlm.training.distributed import DistInfo, barrier, broadcast_object, init_distributed, shutdown
from trkit_vlm.training.loop import Trainer

# Config fields that do not change the numbers: a checkpoint written under other values still resumes.
_NOT_IN_FINGERPRINT = ("output_dir", "device", "log_every", "cache_dir", "prefix_cache", "eval_every")


def fingerprint(cfg: RunConfig) -> dict:
    """The config minus fields that do not affect the result."""
    d = cfg.to_dict()
    for k in _NOT_IN_FINGERPRINT:
        d.pop(k, None)
    d["data"].pop("num_workers", None)
    return d


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    """bf16/fp16 autocast on CUDA; None (fp32) on CPU whatever the config says."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    return torch.bfloat16 if cfg.amp == "bf16" or torch.cuda.is_bf16_supported() else torch.float16


def prepare_data(
    cfg: RunConfig, data: ClassificationData | None, info: DistInfo
) -> tuple[ClassificationData, ClassificationData]:
    """(few-shot data with all classes, the training subset). Rank 0 samples and caches the shots."""
    if data is None:  # load_dataset checks the splits itself
        data = load_dataset(
            cfg.data.dataset,
            cfg.data.root,
            split_file=cfg.data.split_file,
            image_dir=cfg.data.image_dir,
            classnames=cfg.data.classnames,
        )
    elif cfg.data.classnames is not None and list(cfg.data.classnames) != list(data.classnames):
        raise InputError("class-name mismatch between the data passed in and data.classnames in the config")
    else:
        check_usable(data)
    cache = fewshot_cache_path(cfg.output_dir, cfg.dataset_key(), cfg.data.shots, cfg.seed)
    if info.is_main:
        fs = few_shot_data(data, cfg.data.shots, cfg.seed, cache)
    barrier(info)
    if not info.is_main:
        fs = few_shot_data(data, cfg.data.shots, cfg.seed, cache)
    train_data = subsample_classes(fs, cfg.data.subsample)
    if not train_data.train:
        raise InputError(f"dataset {data.name!r}: no training images left after few-shot sampling")
    check_files(train_data.train, f"{data.name} train")
    check_files(fs.test, f"{data.name} test")
    return fs, train_data


def build_model(cfg: RunConfig, bundle, device: torch.device):
    """Load (or take) the CLIP bundle and add the configured adapters (initialised from cfg.seed)."""
    from trkit_vlm.adapters import adapter_config_from_dict, add_adapters, get_adapters
    from trkit_vlm.models import load_clip

    if bundle is None:
        if cfg.model_config is not None:
            from trkit_vlm.models import register_model_config

            register_model_config(cfg.model, cfg.model_config)
        bundle = load_clip(cfg.model, cfg.pretrained, device=str(device))
    elif get_adapters(bundle.model) is not None:
        raise InputError("the model passed in already has adapters; pass a bundle without them")
    adapter_cfg = adapter_config_from_dict({"method": cfg.method, **cfg.adapter})
    torch.manual_seed(cfg.seed)
    model = add_adapters(bundle.model.to(device), adapter_cfg)
    return bundle, model, adapter_cfg


def view_transform(cfg: RunConfig, model: nn.Module, records: list):
    """``f(index, view) -> tensor`` for the prefix cache: the eval view, or seeded augmented views."""
    train_tf, eval_tf = build_transforms(model, augment=cfg.data.augment)
    if not cfg.data.augment:
        return (lambda i, v: eval_tf(load_image(records[i][0]))), 1, "eval"
    n = max(1, cfg.data.cached_views)

    def f(i: int, v: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((cfg.seed * 1_000_003 + i) * 997 + v)
            return train_tf(load_image(records[i][0]))

    return f, n, f"aug{n}-seed{cfg.seed}"


def train(
    cfg: RunConfig,
    bundle=None,
    data: ClassificationData | None = None,
    progress: bool = True,
    resume: bool = False,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train adapters on ``cfg`` and evaluate them.

    Args:
        cfg: the run (see :class:`trkit_vlm.training.config.RunConfig`).
        bundle: an already-loaded :class:`~trkit_vlm.models.ClipBundle` (without adapters); its model
            gets adapters for the run and has them removed again at the end, so it can be reused.
        data: in-memory :class:`ClassificationData` (all classes) instead of ``cfg.data.dataset``.
        progress: tqdm bars (rank 0 only).
        resume: continue from ``checkpoint.pt`` in the run folder when there is one.
        stop_after_epoch: stop after that epoch (after its checkpoint), as a preempted job would.

    Returns:
        metrics: ``base``, ``novel``, ``hm``, ``all`` (%), ``n_trainable``, ``train_time_s``, ``run_dir``...
        (``{"stopped_after_epoch": e, ...}`` when stopped early).
    """
    cfg.validate()
    info = init_distributed(cfg.device)
    own_bundle = bundle is None
    model = None
    try:
        seed_everything(cfg.seed)
        run_dir = cfg.run_dir()
        fs, train_data = prepare_data(cfg, data, info)
        bundle, model, adapter_cfg = build_model(cfg, bundle, info.device)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.json")
        trainer = Trainer(
            cfg,
            bundle,
            model,
            train_data,
            fs,
            info,
            run_dir,
            progress=progress,
            view_fn=view_transform,
            fingerprint=fingerprint(cfg),
            amp=amp_dtype(cfg, info.device),
        )
        if resume:
            trainer.try_resume(load_checkpoint, set_rng_state)
        elif info.is_main and (run_dir / "log.jsonl").exists():
            (run_dir / "log.jsonl").unlink()  # a fresh run starts a fresh log
        result = trainer.fit(stop_after_epoch, save_checkpoint, rng_state)
        return broadcast_object(result, info)
    finally:
        if model is not None and not own_bundle:
            from trkit_vlm.adapters import get_adapters, remove_adapters

            if get_adapters(model) is not None:
                remove_adapters(model)
        shutdown(info)
