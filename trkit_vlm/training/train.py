"""Few-shot adapter training for open_clip CLIP: one config in, adapter weights and metrics out.

``train(cfg)`` runs the CoOp base-to-novel protocol: sample K shots per class (cached), train the
adapters on the base classes, evaluate base / novel / HM / all-class accuracy. It checkpoints every
epoch (atomically, with optimiser, scheduler, scaler and RNG state) and ``resume=True`` continues to
the same final numbers. Under ``torchrun`` it trains data-parallel (DDP).

Run folder ``output_dir/<dataset>/<method>/shots_<K>/seed<S>/``: ``config.json``, ``log.jsonl``,
``checkpoint.pt``, ``adapters.safetensors`` (the adapter config in its metadata), ``metrics.json``;
one run at a time holds it (:mod:`trkit_vlm.training.run_folder`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trkit.errors import InputError
from trkit_vlm.adapters import AdapterConfig, adapter_config_from_dict, add_adapters, get_adapters, remove_adapters
from trkit_vlm.adapters.io import load_initial_weights
from trkit_vlm.data import (
    ClassificationData,
    check_usable,
    few_shot_data,
    fewshot_cache_path,
    load_dataset,
    subsample_classes,
)
from trkit_vlm.data.tasks import apply_task
from trkit_vlm.data.transforms import check_files
from trkit_vlm.models import ClipBundle, load_clip, provided_model, register_model_config, registered_model_config
from trkit_vlm.training.checkpoint import fingerprint
from trkit_vlm.training.config import RunConfig, save_config
from trkit_vlm.training.data_start import start_from_data
from trkit_vlm.training.distributed import DistInfo, barrier, broadcast_object, init_distributed, on_main, shutdown
from trkit_vlm.training.init_adapters import check_init_adapters
from trkit_vlm.training.loop import Trainer
from trkit_vlm.training.run_folder import finished_metrics, lock_run_folder, resume_point, start_fresh
from trkit_vlm.training.seeding import seed_everything

__all__ = ["train", "prepare_data", "build_model"]


def load_run_data(cfg: RunConfig) -> ClassificationData:
    """The data a run trains and is scored on: ``cfg.data.dataset`` with ``cfg.data.task`` applied."""
    data = load_dataset(
        cfg.data.dataset,
        cfg.data.root,
        split_file=cfg.data.split_file,
        image_dir=cfg.data.image_dir,
        classnames=cfg.data.classnames,
    )
    return apply_task(data, cfg.data.task) if cfg.data.task is not None else data


def prepare_data(
    cfg: RunConfig, data: ClassificationData | None, info: DistInfo
) -> tuple[ClassificationData, ClassificationData]:
    """(few-shot data with all classes, the training subset). Rank 0 samples and caches the shots.

    ``data`` (all classes) replaces loading ``cfg.data``; it must already be the task ``cfg.data.task``
    describes (callers that train many runs on one task build it once with :func:`load_run_data`)."""
    if data is None:  # load_dataset checks the splits itself
        data = load_run_data(cfg)
    elif cfg.data.classnames is not None and list(cfg.data.classnames) != list(data.classnames):
        raise InputError("class-name mismatch between the data passed in and data.classnames in the config")
    else:
        check_usable(data)
    cache = fewshot_cache_path(cfg.output_dir, cfg.fewshot_key(), cfg.data.shots, cfg.seed)
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


def build_model(
    cfg: RunConfig, bundle: ClipBundle | None, device: torch.device
) -> tuple[ClipBundle, torch.nn.Module, AdapterConfig]:
    """Load (or take) the CLIP bundle and add the configured adapters (initialised from ``cfg.init_seed``,
    which defaults to ``cfg.seed``, or with the weights of ``cfg.init_adapters``)."""
    if bundle is None:
        if cfg.model_config is not None:
            register_model_config(cfg.model, cfg.model_config)
        bundle = load_clip(cfg.model, cfg.pretrained, device=str(device))
    elif get_adapters(bundle.model) is not None:
        raise InputError(
            "the model passed in already has adapters; pass a bundle without them (trkit_vlm.remove_adapters) "
            "and start from their weights with cfg.init_adapters = <adapter file or run folder>"
        )
    adapter_cfg = adapter_config_from_dict({"method": cfg.method, **cfg.adapter})
    torch.manual_seed(cfg.seed if cfg.init_seed is None else cfg.init_seed)
    model = add_adapters(bundle.model.to(device), adapter_cfg)
    if cfg.init_adapters is not None:
        try:
            load_initial_weights(model, cfg.init_adapters)
        except Exception:
            remove_adapters(model)  # a bundle passed in is left as it came
            raise
    return bundle, model, adapter_cfg


def train(
    cfg: RunConfig,
    bundle: ClipBundle | None = None,
    data: ClassificationData | None = None,
    progress: bool = True,
    resume: bool = False,
    stop_after_epoch: int | None = None,
    evaluator: Callable[[torch.nn.Module], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train adapters on ``cfg`` and evaluate them.

    Args:
        cfg: the run (see :class:`trkit_vlm.training.config.RunConfig`).
        bundle: an already-loaded :class:`~trkit_vlm.models.ClipBundle` (without adapters: a model with
            adapters is refused; to continue from adapter weights set ``cfg.init_adapters``); its model
            gets adapters for the run and has them removed again at the end, so it can be reused.
        data: in-memory :class:`ClassificationData` (all classes) instead of ``cfg.data.dataset``.
        progress: tqdm bars (rank 0 only).
        resume: continue from the run folder's checkpoint (see :func:`~trkit_vlm.training.run_folder.resume_point`);
            a finished run returns its ``metrics.json`` unchanged. Without it the folder starts afresh.
        stop_after_epoch: stop after that epoch (after its checkpoint), as a preempted job would.
        evaluator: ``f(model) -> {"base", "novel", "hm", "all", ...}`` scoring the trained model instead of
            the default evaluation of the test split (a benchmark's :class:`~trkit_vlm.evaluation.cached.
            PrefixEvaluator`, which scores the same images from a frozen prefix computed once).

    Returns:
        metrics: ``base``, ``novel``, ``hm``, ``all`` (%), ``n_trainable``, ``train_time_s``, ``run_dir``...
        (``{"stopped_after_epoch": e, ...}`` when stopped early).

    Raises:
        InputError: another run holds the run folder; the checkpoint belongs to another run or is lost.
        TrainingDiverged: a non-finite loss (unless ``optim.skip_nonfinite``); no metrics are written.
    """
    cfg.validate()
    check_init_adapters(cfg)
    info = init_distributed(cfg.device)
    own_bundle = bundle is None
    model, lock = None, None
    try:
        seed_everything(cfg.seed)
        run_dir = cfg.run_dir()
        if own_bundle and cfg.pretrained is None:  # a provided model's name stands for its cached weights
            cfg.pretrained = provided_model(cfg.model)
        if cfg.model_config is None:  # a custom model: its config goes into the run folder, to rebuild it
            cfg.model_config = registered_model_config(cfg.model)
        lock = on_main(lambda: lock_run_folder(run_dir), info)
        start = broadcast_object(
            on_main(lambda: resume_point(run_dir, fingerprint(cfg)) if resume else None, info), info
        )
        if start is None:
            on_main(lambda: start_fresh(run_dir), info)
        else:
            done = broadcast_object(on_main(lambda: finished_metrics(run_dir, start[1], cfg.optim.epochs), info), info)
            if done is not None:
                return done
        fs, train_data = prepare_data(cfg, data, info)
        bundle, model, adapter_cfg = build_model(cfg, bundle, info.device)
        if info.is_main:  # the folder exists: the lock file is in it
            save_config(cfg, run_dir / "config.json")
        trainer = Trainer(cfg, bundle, model, train_data, fs, info, run_dir, progress=progress, evaluator=evaluator)
        if start is not None:
            trainer.try_resume(start[0])
        elif cfg.init_adapters is None:
            start_from_data(trainer)  # an init that reads the training shots (AdaRing's "pca"); else nothing
        result = trainer.fit(stop_after_epoch)
        return broadcast_object(result, info)
    finally:
        if model is not None and not own_bundle:
            if get_adapters(model) is not None:
                remove_adapters(model)
        if lock is not None:
            lock.release()
        shutdown(info)
