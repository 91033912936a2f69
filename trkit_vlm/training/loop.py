"""The epoch loop behind :func:`trkit_vlm.training.train.train`: batches (images or cached prefix tokens),
the DDP-wrapped forward, optimiser / cosine schedule / AMP, JSONL logging, checkpoints, evaluation."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from trkit.errors import InputError
from trkit_vlm.adapters import (
    adapter_parameters,
    adapter_regularization,
    count_trainable,
    get_adapters,
    save_adapters,
)
from trkit_vlm.data import ClassificationData
from trkit_vlm.data.transforms import ImageDataset, build_transforms, preprocess_config
from trkit_vlm.evaluation.evaluate import evaluate_base_novel
from trkit_vlm.files import atomic_write_text
from trkit_vlm.losses import GeneralizationAwareLoss, frozen_image_features, frozen_text_features
from trkit_vlm.models import ClipBundle
from trkit_vlm.training import prefix_cache as pc
from trkit_vlm.training.checkpoint import fingerprint, load_checkpoint, save_checkpoint, trim_log
from trkit_vlm.training.conditioning import StepConditioning
from trkit_vlm.training.config import RunConfig
from trkit_vlm.training.distributed import DistInfo, all_reduce_sum, barrier
from trkit_vlm.training.divergence import diverged, finite_or_none, grads_finite, nonfinite_anywhere
from trkit_vlm.training.forward import TrainForward, amp_dtype, cosine_with_warmup
from trkit_vlm.training.seeding import rng_state, seed_everything, set_rng_state


class Trainer:
    """State of one run. Built by ``train()``; not meant to be used on its own."""

    def __init__(
        self,
        cfg: RunConfig,
        bundle: ClipBundle,
        model: nn.Module,
        train_data: ClassificationData,
        eval_data: ClassificationData,
        info: DistInfo,
        run_dir: Path,
        progress: bool = True,
        evaluator: Callable[[nn.Module], dict[str, float]] | None = None,
    ):
        self.cfg, self.bundle, self.model, self.info, self.run_dir = cfg, bundle, model, info, run_dir
        self.evaluator = evaluator  # scores the model instead of evaluate_base_novel (a benchmark's cached images)
        self.train_data, self.eval_data = train_data, eval_data
        self.amp, self.fp = amp_dtype(cfg, info.device), fingerprint(cfg)
        self.progress = progress and info.is_main
        dev = info.device
        records = train_data.train
        self.labels = torch.tensor([y for _, y in records])
        if cfg.optim.batch_size % info.world_size:
            raise InputError(
                f"optim.batch_size={cfg.optim.batch_size} must be divisible by the {info.world_size} processes"
            )
        self.local_bs = cfg.optim.batch_size // info.world_size
        lc = cfg.loss
        self.loss_fn = GeneralizationAwareLoss(
            lc.lambda_text, lc.lambda_image, lambda_text_l1=lc.lambda_text_l1, lambda_logits=lc.lambda_logits
        )
        self.timing: dict[str, float] = {}

        # Text side: prompts never change, so the frozen text prefix is computed once.
        t0 = time.perf_counter()
        prompts = [cfg.prompt_template().format(c.replace("_", " ")) for c in train_data.classnames]
        text_ids = bundle.tokenizer(prompts).to(dev)
        use_cache = cfg.prefix_cache != "off"
        n_text = pc.first_adapted_layer(model, "text") - 1
        self.text_frozen = None
        if self.loss_fn.needs_frozen_text:
            templates = cfg.frozen_text_templates()
            self.text_frozen = frozen_text_features(model, bundle.tokenizer, train_data.classnames, templates)
        text_states = None
        split_text = pc.text_prefix_supported(model) is None
        if split_text:
            # Cut the padding after the longest prompt's EOT: dead work under the causal mask (see
            # pooled_length), with or without the cache. With it, the blocks before the first adapter
            # run once for these fixed prompts.
            text_ids = text_ids[:, : pc.pooled_length(model, text_ids)]
            if use_cache:
                with torch.no_grad():
                    text_states = pc.text_prefix(model, text_ids, n_text)

        # Image side: with fixed views the frozen prefix of every view is computed once.
        fixed = (not cfg.data.augment) or cfg.data.cached_views > 0
        self.n_image = pc.first_adapted_layer(model, "image") - 1
        reason = pc.image_prefix_supported(model)
        if cfg.prefix_cache in ("memory", "disk") and not fixed:
            raise InputError("prefix_cache needs fixed image views: set data.augment=false or data.cached_views=N")
        if cfg.prefix_cache in ("memory", "disk") and reason:
            raise InputError(f"prefix_cache={cfg.prefix_cache!r} is not possible here: {reason}")
        self.cached = use_cache and fixed and reason is None and self.n_image > 0
        self.store = None
        if self.cached:
            fn, n_views, desc = pc.view_transform(cfg, model, records)
            disk = None
            if cfg.prefix_cache == "disk":
                disk = cfg.cache_dir or str(Path(cfg.output_dir) / "cache")
            self.store = pc.build_image_cache(
                model,
                records,
                fn,
                n_views,
                self.n_image,
                frozen_features=self.loss_fn.needs_frozen_image,
                batch_size=cfg.optim.eval_batch_size,
                disk_dir=disk,
                describe=desc,
            )
        else:
            train_tf, _ = build_transforms(model, augment=cfg.data.augment)
            self.dataset = ImageDataset(records, train_tf, None if cfg.data.augment else preprocess_config(model))
        self.timing["cache_build_s"] = time.perf_counter() - t0

        self.sampler = DistributedSampler(
            range(len(records)),
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=False,
        )
        self.micro_per_epoch = math.ceil(len(self.sampler) / self.local_bs)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.optim.grad_accum)
        params = adapter_parameters(model)
        o = cfg.optim
        if o.name == "sgd":
            self.opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        else:
            self.opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        total = o.epochs * self.steps_per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, cosine_with_warmup(total, round(o.warmup_epochs * self.steps_per_epoch))
        )
        self.scaler = torch.amp.GradScaler(dev.type, enabled=(self.amp == torch.float16))
        # After the optimiser: a rank allocator attaches its masks (buffers) to the adapters here.
        self.conditioning = StepConditioning(get_adapters(model), o, total)
        self.forward = TrainForward(model, text_ids, text_states, n_text, self.n_image, split_text)
        self.ddp = None
        if info.distributed:
            self.ddp = DistributedDataParallel(
                self.forward, device_ids=[dev.index] if dev.type == "cuda" else None, broadcast_buffers=False
            )
        self.start_epoch, self.step = 0, 0
        # What metrics.json reports about training; checkpointed, so a resumed run reports the whole run.
        self.history: dict[str, Any] = {"epoch_time_s": [], "train_time_s": 0.0, "last_epoch": {}, "skipped_steps": 0}

    # ----------------------------------------------------------------------------------- batches
    def _epoch_seed(self, epoch: int) -> int:
        return (self.cfg.seed * 1_000_003 + epoch) * 101 + self.info.rank

    def batches(self, epoch: int):
        """``(inputs, labels, frozen image features or None)`` micro-batches of this rank for ``epoch``."""
        self.sampler.set_epoch(epoch)
        g = torch.Generator().manual_seed(self._epoch_seed(epoch))
        dev = self.info.device
        if self.cached:
            idx = torch.tensor(list(self.sampler), dtype=torch.long)
            n_views = self.store["tokens"].shape[1]
            views = torch.randint(n_views, (len(idx),), generator=g) if n_views > 1 else torch.zeros_like(idx)
            for s in range(0, len(idx), self.local_bs):
                i, v = idx[s : s + self.local_bs], views[s : s + self.local_bs]
                frozen = self.store["frozen"][i, v].to(dev) if "frozen" in self.store else None
                yield self.store["tokens"][i, v].to(dev, non_blocking=True), self.labels[i].to(dev), frozen
            return
        loader = DataLoader(
            self.dataset,
            batch_size=self.local_bs,
            sampler=self.sampler,
            num_workers=self.cfg.data.num_workers if self.dataset.preloaded is None else 0,
            generator=g,
            pin_memory=dev.type == "cuda",
        )
        for x, y, _ in loader:
            x = x.to(dev, non_blocking=True)
            frozen = None
            if self.loss_fn.needs_frozen_image:
                with self._autocast():
                    frozen = frozen_image_features(self.model, x).float()
            yield x, y.to(dev), frozen

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.info.device.type, dtype=self.amp)

    # ---------------------------------------------------------------------------------- training
    def _log(self, record: dict) -> None:
        if self.info.is_main:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(finite_or_none(record), allow_nan=False) + "\n")

    def try_resume(self, path: Path) -> None:
        """Continue after the epoch of checkpoint ``path`` (chosen by ``run_folder.resume_point``)."""
        state = load_checkpoint(path, self.fp)
        get_adapters(self.model).load_state_dict(state["adapters"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.conditioning.load_state_dict(state.get("conditioning", {}))
        self.start_epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history.update(state.get("history", {}))
        if self.info.is_main:
            trim_log(self.run_dir / "log.jsonl", self.start_epoch)
        barrier(self.info)

    def _checkpoint(self, epoch: int) -> None:
        if not self.info.is_main:
            return
        state = {
            "fingerprint": self.fp,
            "epoch": epoch,
            "step": self.step,
            "adapters": get_adapters(self.model).state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "conditioning": self.conditioning.state_dict(),
            "rng": rng_state(),
            "history": self.history,
        }
        save_checkpoint(state, self.run_dir / "checkpoint.pt")

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, accum = self.cfg, self.cfg.optim.grad_accum
        seed_everything(self._epoch_seed(epoch))
        fwd = self.ddp or self.forward
        self.model.train()
        sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n (micro-batches with a finite loss)
        bad, skipped = False, 0  # a non-finite loss in this optimiser step; steps skipped for one
        bar = tqdm(
            total=self.micro_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for i, (x, y, frozen) in enumerate(self.batches(epoch)):
            last = (i + 1) % accum == 0 or i + 1 == self.micro_per_epoch
            sync = self.ddp.no_sync() if (self.ddp is not None and not last) else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    logits, img, txt = fwd(x, self.cached)
                scale = self.model.logit_scale.exp().detach()
                loss, parts = self.loss_fn(logits.float(), y, txt.float(), self.text_frozen, img.float(), frozen, scale)
                loss = loss + adapter_regularization(self.model)
                self.scaler.scale(loss / accum).backward()
            loss_value = loss.item()
            bad = bad or not math.isfinite(loss_value)
            if last:
                skip = self._bad_step(bad, epoch, loss_value)
                if not skip:
                    self.scaler.unscale_(self.opt)
                    # grad norm, rank scores, preconditioning, core step limit, clipping
                    self.conditioning.before_step(self.opt.param_groups[0]["lr"])
                    self.scaler.step(self.opt)
                    self.scaler.update()
                skipped, bad = skipped + skip, False
                self.opt.zero_grad(set_to_none=True)
                self.sched.step()
                self.step += 1
                self.conditioning.after_step(self.step)
            n = len(y)
            correct = (logits.argmax(1) == y).sum().item()
            if math.isfinite(loss_value):
                sums += torch.tensor([loss_value * n, correct, n], dtype=torch.float64)
            if last and self.step % max(1, cfg.log_every) == 0:
                self._log(
                    {
                        "type": "step",
                        "epoch": epoch + 1,
                        "step": self.step,
                        "loss": loss_value,
                        **{k: v.item() for k, v in parts.items() if k != "total"},
                        "acc": 100.0 * correct / n,
                        "lr": self.sched.get_last_lr()[0],
                    }
                )
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.4f}", acc=f"{100 * sums[1] / sums[2]:.1f}")
            bar.update(1)
        bar.close()
        sums = all_reduce_sum(sums, self.info)
        grads = self.conditioning.epoch_stats()
        if sums[2] == 0:  # every step skipped
            return {"loss": None, "acc": None, "skipped_steps": skipped, **grads}
        stats = {"loss": float(sums[0] / sums[2]), "acc": float(100 * sums[1] / sums[2]), **grads}
        return {**stats, "skipped_steps": skipped} if cfg.optim.skip_nonfinite else stats

    def _bad_step(self, bad: bool, epoch: int, loss_value: float) -> bool:
        """Whether to skip this optimiser step: its loss (or, when skipping, a gradient) is not finite on
        some rank. Raises ``TrainingDiverged`` unless ``optim.skip_nonfinite``."""
        skip_mode = self.cfg.optim.skip_nonfinite
        if skip_mode and not bad and not self.scaler.is_enabled():  # fp16: the scaler handles inf gradients
            bad = not grads_finite(adapter_parameters(self.model))
        if not nonfinite_anywhere(bad, self.info):
            return False
        lr = self.sched.get_last_lr()[0]
        if skip_mode:
            self.history["skipped_steps"] += 1
            return True
        what = (
            f"the loss is {loss_value}" if not math.isfinite(loss_value) else "the loss is not finite on another rank"
        )
        self._log({"type": "error", "epoch": epoch + 1, "step": self.step + 1, "lr": lr, "error": what})
        raise diverged(what, epoch + 1, self.step + 1, lr)

    def evaluate(self) -> dict[str, float]:
        if self.evaluator is not None:
            return self.evaluator(self.model)
        return evaluate_base_novel(
            self.model,
            self.bundle.tokenizer,
            self.eval_data,
            self.cfg.prompt_template(),
            batch_size=self.cfg.optim.eval_batch_size,
            num_workers=self.cfg.data.num_workers,
            amp_dtype=self.amp,
        )

    def fit(self, stop_after_epoch: int | None = None) -> dict[str, Any]:
        """Train the remaining epochs (checkpoint after each), then save the adapters and evaluate."""
        cfg, history = self.cfg, self.history
        t_start, time_before = time.perf_counter(), history["train_time_s"]
        for epoch in range(self.start_epoch, cfg.optim.epochs):
            t0 = time.perf_counter()
            stats = self.train_epoch(epoch)
            history["epoch_time_s"].append(time.perf_counter() - t0)
            history["last_epoch"] = stats
            rec = {
                "type": "epoch",
                "epoch": epoch + 1,
                "step": self.step,
                **stats,
                "time_s": history["epoch_time_s"][-1],
            }
            if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.optim.epochs:
                rec["eval"] = self.evaluate() if self.info.is_main else None
            self._log(rec)
            history["train_time_s"] = time_before + time.perf_counter() - t_start
            if cfg.checkpoint:
                self._checkpoint(epoch + 1)
            barrier(self.info)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.optim.epochs:
                return {"stopped_after_epoch": epoch + 1, "run_dir": str(self.run_dir)}
        train_time = time_before + time.perf_counter() - t_start
        if not all(bool(torch.isfinite(p).all()) for p in adapter_parameters(self.model)):
            raise diverged(
                "the adapter weights are not finite", cfg.optim.epochs, self.step, self.sched.get_last_lr()[0]
            )
        stats = history["last_epoch"]
        ranks = self.conditioning.finish()  # rank adaptation: the adapters shrink to their final shapes
        metrics: dict[str, Any] = {}
        if self.info.is_main:
            save_adapters(self.model, self.run_dir / "adapters.safetensors")
            t0 = time.perf_counter()
            acc = self.evaluate()
            metrics = {
                "dataset": self.cfg.dataset_key(),
                "method": cfg.method,
                "shots": cfg.data.shots,
                "seed": cfg.seed,
                "model": cfg.model,
                "pretrained": cfg.pretrained,
                "subsample": cfg.data.subsample,
                **acc,
                "n_trainable": count_trainable(self.model),
                **self.conditioning.describe(),
                "rank_adaptation": ranks,
                "epochs": cfg.optim.epochs,
                "steps": self.step,
                "final_train_loss": stats.get("loss"),
                "final_train_acc": stats.get("acc"),
                "train_time_s": train_time,
                "epoch_time_s": history["epoch_time_s"],
                "eval_time_s": time.perf_counter() - t0,
                "prefix_cache": {
                    "image": self.cached,
                    "image_prefix_layers": self.n_image if self.cached else 0,
                    "text": self.forward.text_states is not None,
                    "text_prefix_layers": self.forward.n_text if self.forward.text_states is not None else 0,
                    "text_context": int(self.forward.text_ids.shape[1]),
                    **self.timing,
                },
                "world_size": self.info.world_size,
                "run_dir": str(self.run_dir),
            }
            if cfg.optim.skip_nonfinite:
                metrics["skipped_steps"] = history["skipped_steps"]
            atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))
        barrier(self.info)
        return metrics
