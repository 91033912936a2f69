"""One dataclass describes a training run; it is read from YAML or JSON and edited with overrides.

>>> cfg = RunConfig(method="mma")
>>> cfg = apply_overrides(cfg, ["optim.lr=0.002", "data.shots=4"])
>>> cfg.optim.lr, cfg.data.shots
(0.002, 4)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trkit.errors import InputError
from trkit_vlm.adapters.registry import adapter_config_from_dict, available_methods
from trkit_vlm.data.datasets import canonical_name
from trkit_vlm.data.tasks import TaskSpec
from trkit_vlm.files import atomic_write_text
from trkit_vlm.templates import check_templates, resolve_templates
from trkit_vlm.typecheck import check_field_types

PRECONDITIONERS = ("none", "gauss_newton", "scaled_gd")


@dataclass
class DataConfig:
    """Which images, how many, and how they are fed."""

    dataset: str = "caltech101"  # CoOp name, "coop" (own split JSON), "folder" or "fashion_mnist"
    root: str | None = "data"  # CoOp data root / dataset folder / ImageFolder tree
    split_file: str | None = None  # "coop" only: the split_zhou_*.json (auto when None)
    image_dir: str | None = None  # "coop" only: image folder under root (auto when None)
    classnames: list[str] | None = None  # expected class names; a split that differs is an error
    shots: int = 16  # images per class (<= 0: the whole train split)
    subsample: str = "base"  # classes trained on: "base" (base-to-novel) or "all"
    template: str = "a photo of a {}."
    augment: bool = True  # random resized crop + flip (CoOp); False = fixed eval view
    cached_views: int = 0  # > 0: that many fixed augmented views per image (prefix-cacheable)
    num_workers: int = 0
    task: dict[str, Any] | None = None  # a TaskSpec as a dict (trkit_vlm.data.tasks): shift, hold-out, eval images


@dataclass
class OptimConfig:
    """Optimiser and schedule (MMA's ViT-B/16 recipe by default)."""

    name: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.0015
    weight_decay: float = 5e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 5
    batch_size: int = 16  # global batch (split over processes under torchrun)
    eval_batch_size: int = 100
    warmup_epochs: float = 0.0  # linear warm-up, then cosine to 0, stepped per optimiser step
    grad_accum: int = 1  # micro-batches per optimiser step
    max_grad_norm: float | None = None  # clip the (preconditioned) gradient's norm; None: no clipping
    precondition: str = "none"  # tensor-ring cores: "none", "gauss_newton" or "scaled_gd" (trkit.nn.RingPreconditioner)
    # Its damping in gain units (no direction moves past 1/damping x plain SGD); 0.1 was chosen on validation
    # over 1e-3 and 1 (benchmarks/adaring_validation.py --study precondition).
    precondition_damping: float = 0.1
    # A step on a tensor-ring core moves it by at most this fraction of its norm (lr x update, after
    # preconditioning; trkit.nn.precondition.limit_relative_steps); None: no limit.
    core_step_ratio: float | None = None
    skip_nonfinite: bool = False  # skip optimiser steps whose loss is NaN/inf (counted) instead of stopping the run


@dataclass
class LossConfig:
    """Generalisation-aware loss weights (0 switches a term off; see ``trkit_vlm.losses``)."""

    lambda_text: float = 0.0  # KgCoOp: lambda * mean(1 - cos(text_adapted, text_frozen))
    lambda_image: float = 0.0  # PromptSRC: lambda * L1(image_adapted, image_frozen)
    lambda_text_l1: float = 0.0  # PromptSRC: lambda * L1(text_adapted, text_frozen)
    lambda_logits: float = 0.0  # PromptSRC: lambda * KL(frozen logits || adapted logits)
    frozen_templates: str | list[str] | None = None  # frozen text averaged over these (None: the run's prompt)


@dataclass
class RunConfig:
    """Everything that defines a run; the output folder is ``output_dir/<dataset>/<method>/shots_<K>/seed<S>``."""

    model: str = "ViT-B-16"
    pretrained: str | None = None  # local checkpoint file; None = random weights (warned)
    model_config: dict[str, Any] | None = None  # open_clip config registered under `model` (custom models)
    method: str = "adaring"  # a registered adapter method: trkit_vlm.adapters.available_methods()
    adapter: dict[str, Any] = field(default_factory=dict)  # fields of that method's config (MMAConfig, ...)
    init_adapters: str | None = None  # start from saved adapters: a file or run folder of this method and config
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 1
    init_seed: int | None = None  # seed of the adapters' initial weights (None: seed); data and order keep seed
    amp: str = "auto"  # "auto" (bf16 on CUDA, off on CPU), "bf16", "fp16", "off"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    output_dir: str = "output"
    prefix_cache: str = "auto"  # "auto" (on when views are fixed), "memory", "disk", "off"
    cache_dir: str | None = None  # disk prefix cache folder (default: <output_dir>/cache)
    log_every: int = 10  # JSONL step-log interval (optimiser steps)
    eval_every: int = 0  # > 0: evaluate every that many epochs as well as at the end
    checkpoint: bool = True  # checkpoint.pt after every epoch (for resume); False: only the final adapters

    def run_dir(self) -> Path:
        """``output_dir/<dataset>/<method>/shots_<K>/seed<S>``."""
        return (
            Path(self.output_dir) / self.dataset_key() / self.method / f"shots_{self.data.shots}" / f"seed{self.seed}"
        )

    def dataset_key(self) -> str:
        """The dataset's folder name under ``output_dir`` (a user folder's own name for "folder"/"coop")."""
        name = canonical_name(self.data.dataset)
        if name in ("folder", "coop") and self.data.root:
            name = Path(self.data.root).name
        return name

    def fewshot_key(self) -> str:
        """The folder of the few-shot draws under ``output_dir``: the dataset's key, plus a hash of the task
        when there is one (its hold-out changes which images can be drawn)."""
        if self.data.task is None:
            return self.dataset_key()
        blob = json.dumps(TaskSpec.from_dict(self.data.task).to_dict(), sort_keys=True)
        return f"{self.dataset_key()}-task-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"

    def prompt_template(self) -> str:
        """The prompt template of the run: the task's when it sets one, else ``data.template``."""
        if self.data.task is not None and self.data.task.get("template") is not None:
            return self.data.task["template"]
        return self.data.template

    def frozen_text_templates(self) -> list[str]:
        """The templates of the GA loss's frozen text features: ``loss.frozen_templates``, else the run's prompt.

        The prompt is the task's template when it sets one: anchoring to another prompt would hand the loss
        prompts that the run (and zero-shot CLIP on the task) does not have."""
        return resolve_templates(self.loss.frozen_templates, self.prompt_template())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> RunConfig:
        """Clear InputErrors for values the run cannot use (wrong types first, then wrong values)."""
        check_field_types(self)
        for name in _SECTIONS:
            check_field_types(getattr(self, name), f"{name}.")
        if self.method not in available_methods():
            raise InputError(f"unknown method {self.method!r}; expected one of {available_methods()}")
        if not isinstance(self.adapter, dict):
            raise InputError(f"adapter must be a mapping of {self.method} config fields, got {self.adapter!r}")
        if self.data.task is not None:
            task = TaskSpec.from_dict(self.data.task)
            if task.template is not None and self.data.template not in (task.template, DataConfig.template):
                raise InputError(
                    f"data.template {self.data.template!r} and data.task.template {task.template!r} disagree; "
                    "the task's template is the prompt (leave data.template at its default)"
                )
        try:  # field errors now, not mid-run
            adapter_config_from_dict({"method": self.method, **self.adapter})
        except InputError as err:
            raise InputError(f"adapter: {err}") from None
        if self.optim.name not in ("sgd", "adamw"):
            raise InputError(f"unknown optimiser {self.optim.name!r}; expected 'sgd' or 'adamw'")
        if self.optim.precondition not in PRECONDITIONERS:
            raise InputError(f"optim.precondition must be one of {PRECONDITIONERS}, got {self.optim.precondition!r}")
        check_templates(self.loss.frozen_templates, "loss.frozen_templates")
        if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", self.device):
            raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (or 'mps', 'xpu'), got {self.device!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise InputError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {self.amp!r}")
        if self.prefix_cache not in ("auto", "memory", "disk", "off"):
            raise InputError(f"prefix_cache must be 'auto', 'memory', 'disk' or 'off', got {self.prefix_cache!r}")
        if self.data.subsample not in ("base", "all"):
            raise InputError(f"data.subsample must be 'base' or 'all', got {self.data.subsample!r}")
        for name, v in (
            ("optim.epochs", self.optim.epochs),
            ("optim.batch_size", self.optim.batch_size),
            ("optim.grad_accum", self.optim.grad_accum),
            ("optim.eval_batch_size", self.optim.eval_batch_size),
        ):
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        _check_numbers(self)
        if self.data.cached_views < 0:
            raise InputError(f"data.cached_views must be >= 0, got {self.data.cached_views}")
        if self.eval_every < 0:
            raise InputError(f"eval_every must be >= 0 (0: at the end only), got {self.eval_every}")
        if "{}" not in self.data.template:
            raise InputError(f"data.template must contain '{{}}' for the class name, got {self.data.template!r}")
        return self


_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "loss": LossConfig}


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-3`` is a number (YAML 1.2 reads it so; PyYAML's 1.1 rules want
    ``1.0e-3`` and would hand ``optim.lr`` a string)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def _check_numbers(cfg: RunConfig) -> None:
    """InputError for a number outside its range; NaN and infinities are outside every range."""
    o = cfg.optim
    checks = [
        ("optim.lr", o.lr, 0.0, math.inf, "> 0", False),
        ("optim.weight_decay", o.weight_decay, 0.0, math.inf, ">= 0", True),
        ("optim.momentum", o.momentum, 0.0, 1.0, "in [0, 1)", True),
        ("optim.betas[0]", o.betas[0], 0.0, 1.0, "in [0, 1)", True),
        ("optim.betas[1]", o.betas[1], 0.0, 1.0, "in [0, 1)", True),
        ("optim.warmup_epochs", o.warmup_epochs, 0.0, math.inf, ">= 0", True),
        ("optim.precondition_damping", o.precondition_damping, 0.0, math.inf, "> 0", False),
        ("loss.lambda_text", cfg.loss.lambda_text, 0.0, math.inf, ">= 0", True),
        ("loss.lambda_image", cfg.loss.lambda_image, 0.0, math.inf, ">= 0", True),
        ("loss.lambda_text_l1", cfg.loss.lambda_text_l1, 0.0, math.inf, ">= 0", True),
        ("loss.lambda_logits", cfg.loss.lambda_logits, 0.0, math.inf, ">= 0", True),
    ]
    if o.core_step_ratio is not None:
        checks.append(("optim.core_step_ratio", o.core_step_ratio, 0.0, math.inf, "> 0 (or null: no limit)", False))
    if o.max_grad_norm is not None:
        checks.append(("optim.max_grad_norm", o.max_grad_norm, 0.0, math.inf, "> 0 (or null)", False))
    for name, value, low, high, expected, low_included in checks:
        ok = math.isfinite(value) and (value >= low if low_included else value > low) and value < high
        if not ok:
            raise InputError(f"{name} must be a finite number {expected}, got {value!r}")


def _check_keys(d: dict, cls: type, prefix: str = "") -> None:
    """InputError listing the keys of ``d`` that are not fields of dataclass ``cls`` (typos, old names)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"unknown config key(s) {[prefix + k for k in unknown]}; known: {sorted(known)}")


def config_from_dict(d: dict) -> RunConfig:
    """Build a RunConfig from a nested dict; unknown keys are errors (typos should not pass silently)."""
    if not isinstance(d, dict):
        raise InputError(f"a run config is a mapping, got {type(d).__name__}")
    _check_keys(d, RunConfig)
    kwargs = dict(d)
    for name, cls in _SECTIONS.items():
        sub = kwargs.get(name) or {}
        if isinstance(sub, cls):
            continue
        if not isinstance(sub, dict):
            raise InputError(f"config section {name!r} must be a mapping, got {sub!r}")
        _check_keys(sub, cls, f"{name}.")
        if isinstance(sub.get("betas"), list):
            sub = {**sub, "betas": tuple(sub["betas"])}
        kwargs[name] = cls(**sub)
    adapter = kwargs.get("adapter") or {}
    kwargs["adapter"] = dict(adapter) if isinstance(adapter, dict) else adapter  # else: validate() says so
    return RunConfig(**kwargs)


def read_config_file(path: Path, kind: str) -> Any:
    """The contents of a ``.yaml``/``.yml`` or ``.json`` file; errors name the file and ``kind``."""
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (a YAML or JSON {kind})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            return yaml.load(text, Loader=_YamlLoader) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path}: invalid YAML ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: invalid JSON ({err})") from None


def load_config(path: str | os.PathLike, validate: bool = False) -> RunConfig:
    """Read a RunConfig from a ``.yaml``/``.yml`` or ``.json`` file (and :meth:`~RunConfig.validate` it).

    Errors in the file's contents name the file."""
    path = Path(path)
    d = read_config_file(path, "run config")
    try:
        cfg = config_from_dict(d)
        return cfg.validate() if validate else cfg
    except InputError as err:
        raise InputError(f"{path}: {err}") from None


def _parse_value(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of ``cfg`` with ``section.key=value`` overrides applied (values parsed as YAML).

    ``adapter.<field>=...`` sets a field of the adapter config; ``pretrained=null`` clears a value.
    """
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} is not KEY=VALUE (e.g. optim.lr=0.002)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise InputError(f"unknown config key {key!r}")
            node = node[p]
        if parts[0] != "adapter" and parts[-1] not in node:
            raise InputError(f"unknown config key {key!r}")
        node[parts[-1]] = _parse_value(value)
    return config_from_dict(d)


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the config as JSON (atomically)."""
    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2))
