"""``compress_run``: a trained MMA run folder in, an AdaRing run folder out (``trkit-vlm compress``).

The output folder is a run folder like any other (``trkit-vlm eval``, ``table`` and ``train
--init-adapters`` take it): ``config.json`` (the source run's model, data, task and prompts, method
``adaring`` with the compressed adapter's config; its ``optim`` is the heal recipe, the source run's with
Adam, ``HEAL_OPTIM``; its ``output_dir`` is ``<out>/heal``, where a run started from it goes),
``adapters.safetensors``,
``report.json`` (ranks and errors) and, once evaluated, ``metrics.json``. With ``heal_epochs`` the
compressed adapter is fine-tuned on the source run's few-shot data (``train`` with ``init_adapters``),
giving a second run folder under ``<out>/heal``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from trkit.errors import InputError
from trkit.files import check_output_path
from trkit_vlm.adapters.base import get_adapters, remove_adapters
from trkit_vlm.adapters.io import add_adapters_with_weights
from trkit_vlm.compression.calibration import Calibration, collect_calibration
from trkit_vlm.compression.compress import compress_mma
from trkit_vlm.compression.result import CompressionResult
from trkit_vlm.compression.source import MMASource, read_mma_source
from trkit_vlm.data import ClassificationData, few_shot_data, fewshot_cache_path, subsample_classes
from trkit_vlm.data.transforms import ImageDataset, build_transforms, preprocess_config
from trkit_vlm.evaluation.run import evaluate_run
from trkit_vlm.files import atomic_write_text
from trkit_vlm.models import ClipBundle, load_clip, register_model_config, registered_model_config, tower_info
from trkit_vlm.training.config import RunConfig, apply_overrides, config_from_dict, save_config
from trkit_vlm.training.seeding import seed_everything
from trkit_vlm.training.train import load_run_data, train

__all__ = ["compress_run", "check_out_dir", "DEFAULT_HEAL_EPOCHS"]

# Epochs of the heal recipe a compressed run's config.json holds when none was asked for.
DEFAULT_HEAL_EPOCHS = 10
# The heal optimiser. MMA's SGD recipe diverges on the compressed cores: the adapters' 1/scale gradient
# rule times the product of fitted cores makes steps far larger than the cores (quickstart task, budget
# 0.1, seeds 1-3: HM ~20 after 10 epochs at lr 0.05, 0.01 and 0.002). Adam's steps do not depend on the
# gradient's scale; lr 3e-4 kept the most on validation (seeds 1-2: 1e-3 and 3e-3 kept less).
HEAL_OPTIM = {"name": "adamw", "lr": 3e-4, "max_grad_norm": None}
# Calibration: at most this many few-shot images, and this many tokens per tower and layer.
CALIBRATION_IMAGES = 128
CALIBRATION_TOKENS = 2048


def check_out_dir(out: str | os.PathLike, source) -> Path:
    """Before any work: ``out`` can hold the run folder and is not the source (nor holds its file)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the compressed run")
    if isinstance(source, (str, os.PathLike)) and Path(source).exists():
        src = Path(source)
        src_dir = src if src.is_dir() else src.parent
        if out.exists() and os.path.samefile(out, src_dir):
            raise InputError(f"--out {out} is the folder of the source {source}; writing there would replace it")
    out.mkdir(parents=True, exist_ok=True)
    for name, suffix in (("adapters.safetensors", ".safetensors"), ("config.json", ".json")):
        check_output_path(
            out / name,
            suffixes=(suffix,),
            inputs=[source] if isinstance(source, (str, os.PathLike)) else [],
            what="--out",
        )
    return out


def label(src_method: str, budget: float | None, tol: float | None, heal_epochs: int = 0) -> str:
    """The run's name in tables: ``adaring (mma, budget 0.1)``, ``... heal 10 ep)``."""
    size = f"budget {budget:g}" if tol is None else f"tol {tol:g}"
    return f"adaring ({src_method}, {size}{f', heal {heal_epochs} ep' if heal_epochs else ''})"


def _few_shot_train(cfg: RunConfig, data: ClassificationData) -> ClassificationData:
    """The source run's training data: its few-shot draw (read from its cache when there, never written)."""
    cache = fewshot_cache_path(cfg.output_dir, cfg.fewshot_key(), cfg.data.shots, cfg.seed)
    fs = few_shot_data(data, cfg.data.shots, cfg.seed, cache if cache.is_file() else None)
    return subsample_classes(fs, cfg.data.subsample)


@torch.no_grad()
def run_calibration(bundle: ClipBundle, src: MMASource, cfg: RunConfig, data: ClassificationData) -> Calibration:
    """Calibration inputs of the source's MMA adapters: up to ``CALIBRATION_IMAGES`` of the run's few-shot
    images (eval view) and the prompts of its training classes (``CALIBRATION_TOKENS`` tokens kept per
    tower and layer, a fixed draw)."""
    train_data = _few_shot_train(cfg, data)
    model = bundle.model
    _, eval_tf = build_transforms(model, augment=False)
    records = train_data.train[:: max(1, len(train_data.train) // CALIBRATION_IMAGES)][:CALIBRATION_IMAGES]
    ds = ImageDataset(records, eval_tf, preprocess_config(model))
    device = next(model.parameters()).device
    images = torch.stack([ds[i][0] for i in range(len(ds))]).to(device)
    prompts = [cfg.data.template.format(c.replace("_", " ")) for c in train_data.classnames]
    text = bundle.tokenizer(prompts).to(device)
    add_adapters_with_weights(model, src.config, src.state_dict, src.description)
    try:
        cal = collect_calibration(model, images, text)
    finally:
        remove_adapters(model)
    return cal.subsample(CALIBRATION_TOKENS)


def compress_run(
    source,
    out: str | os.PathLike,
    budget: float | None = 0.1,
    tol: float | None = None,
    base_config: RunConfig | None = None,
    data_aware: bool = True,
    evaluate: bool = True,
    heal_epochs: int = 0,
    heal_overrides: list[str] | None = None,
    scale: float | None = None,
    ridge: float = 0.01,
    bundle: ClipBundle | None = None,
    data: ClassificationData | None = None,
    model_name: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Compress the MMA adapters of ``source`` into an AdaRing run folder ``out``.

    Args:
        source: an MMA run folder (preferred: model, data and prompts come from its config.json), or an
            adapter file / official checkpoint / state dict, with ``base_config`` for the model and data.
        out: the run folder to write (checked before any work).
        budget, tol, scale, ridge: as in :func:`~trkit_vlm.compression.compress_mma`.
        base_config: for a source that is not a run folder: the run config (model, data, prompts)
            the adapters belong to; None writes only ``adapters.safetensors`` and ``report.json``.
        data_aware: calibrate on the run's few-shot images and prompts (False: data-free).
        evaluate: score the compressed adapters (``metrics.json``; the same function as ``trkit-vlm eval``).
        heal_epochs: fine-tune the compressed adapter this many epochs on the run's few-shot data with the
            source run's recipe under ``HEAL_OPTIM`` (``heal_overrides``: ``KEY=VALUE`` changes to it),
            into ``out/heal/...``.
        bundle, data: an already loaded model (without adapters) and the run's data (``load_run_data``).
        model_name: without a run config, the open_clip model the adapters were trained on (tower depths).
    Returns:
        ``{"result": CompressionResult, "out": Path, "metrics": dict | None, "heal": dict | None}``.
    """
    out = check_out_dir(out, source)
    src = read_mma_source(source, scale)
    cfg = src.run_config if src.run_config is not None else base_config
    if heal_epochs and cfg is None:
        raise InputError("--heal-epochs needs the source run's data: compress a run folder, or give its config")
    if cfg is not None and cfg.model_config is not None:
        register_model_config(cfg.model, cfg.model_config)
    needs_model = cfg is not None and (data_aware or evaluate or heal_epochs)
    if needs_model and bundle is None:
        seed_everything(cfg.seed)  # as train and eval do: a random-weight backbone is the run's own
        bundle = load_clip(cfg.model, cfg.pretrained)
    if bundle is not None and get_adapters(bundle.model) is not None:
        raise InputError("the model passed in already has adapters; pass a bundle without them")
    calibration = None
    if needs_model and data_aware:
        data = data if data is not None else load_run_data(cfg)
        calibration = run_calibration(bundle, src, cfg, data)
    towers = tower_info(bundle.model) if bundle is not None else None
    if towers is None and cfg is not None:
        model_name = cfg.model
    result = compress_mma(src, budget, tol, towers=towers, model_name=model_name, calibration=calibration, ridge=ridge)
    result.write(out)
    report: dict[str, Any] = {"result": result, "out": out, "metrics": None, "heal": None}
    if cfg is None:
        return report
    run_cfg = compressed_config(cfg, result, out, heal_epochs or DEFAULT_HEAL_EPOCHS)
    save_config(run_cfg, out / "config.json")
    name = label(cfg.method, budget, tol)
    if evaluate:
        report["metrics"] = write_metrics(out, run_cfg, result, name)
    if heal_epochs:
        heal_cfg = apply_overrides(run_cfg, list(heal_overrides or []))
        heal_cfg = dataclasses.replace(heal_cfg, init_adapters=str(out))
        if data is None:
            data = load_run_data(cfg)
        metrics = train(heal_cfg, bundle=bundle, data=data, progress=progress)
        metrics = {**metrics, "method": label(cfg.method, budget, tol, heal_cfg.optim.epochs), **_sizes(result)}
        atomic_write_text(Path(metrics["run_dir"]) / "metrics.json", json.dumps(metrics, indent=2))
        report["heal"] = metrics
    return report


def compressed_config(cfg: RunConfig, result: CompressionResult, out: Path, heal_epochs: int) -> RunConfig:
    """The compressed run's config: the source's model, data and prompts; AdaRing with the compressed config;
    the source recipe with the heal optimiser (``HEAL_OPTIM``) for ``heal_epochs`` epochs; runs started from
    it go to ``out/heal``."""
    d = cfg.to_dict()
    adapter = result.config.to_dict()
    d["method"] = adapter.pop("method")
    d["adapter"] = adapter
    d["init_adapters"] = None
    d["output_dir"] = str(out / "heal")
    d["optim"].update(HEAL_OPTIM, epochs=int(heal_epochs))
    if d["model_config"] is None:
        d["model_config"] = registered_model_config(cfg.model)
    return config_from_dict(d)


def _sizes(result: CompressionResult) -> dict[str, Any]:
    return {
        "n_trainable": result.n_params,
        "mma_params": result.mma_params,
        "fraction": result.fraction,
        "budget": result.settings.get("budget"),
        "tol": result.settings.get("tol"),
    }


def write_metrics(out: Path, cfg: RunConfig, result: CompressionResult, name: str) -> dict[str, Any]:
    """Score the run folder with ``trkit-vlm eval``'s function and write ``metrics.json`` (table's keys)."""
    acc = evaluate_run(str(out))
    metrics = {
        "dataset": cfg.dataset_key(),
        "method": name,
        "shots": cfg.data.shots,
        "seed": cfg.seed,
        "model": cfg.model,
        "pretrained": cfg.pretrained,
        "subsample": cfg.data.subsample,
        **{k: acc[k] for k in ("base", "novel", "hm", "all") if k in acc},
        **{k: acc[k] for k in ("n_base", "n_novel") if k in acc},
        **_sizes(result),
        "source": result.settings["source"],
        "run_dir": str(out),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
