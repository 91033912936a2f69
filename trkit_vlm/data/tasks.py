"""Tasks as data: a named, parametrised change of an in-memory image dataset, recorded in the run config.

A run's ``data.task`` (a :class:`TaskSpec` as a dict) says how the dataset of ``data.dataset`` becomes
the task the run trains and is evaluated on, so a run folder holds everything needed to rebuild it
(``trkit-vlm eval RUN`` reads the same spec):

- ``shift``: a registered image shift (:func:`register_shift`) applied to every image, with ``params``
  (built in: ``none``, ``contrast``, ``noise``, ``blur``, ``lowres``, ``edges``; see ``trkit_vlm.data.shifts``);
- the text side: ``classnames`` (the class names the prompts use, in the dataset's label order: names
  the text tower maps poorly make a task where the text side has to adapt) and ``template`` (the prompt
  template, which then replaces ``data.template``);
- ``class_order``: a permutation of the labels; label ``j`` of the task is class ``class_order[j]`` of the
  dataset, so base = the first half of it (another base/novel partition);
- ``holdout_per_class`` / ``holdout_seed``: training images held out per class (never drawn as shots;
  with ``eval_split="val"`` they are the images scored, so choices can be made without the test set);
- ``eval_split`` ("test" or "val"), ``eval_per_class`` (a fixed random subset per class, None = all)
  and ``eval_seed``: which images are scored (fixed, so every method sees the same ones).

Tasks work on datasets whose records hold uint8 grey images in memory (Fashion-MNIST); a shift is a
function ``f(images (N, H, W) uint8, **params) -> (N, H, W) uint8``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trkit.errors import InputError, InputTypeError
from trkit_vlm.data.datasets import ClassificationData
from trkit_vlm.data.shifts import edge_rendering, gaussian_blur, gaussian_noise, low_resolution

__all__ = [
    "TaskSpec",
    "register_shift",
    "available_shifts",
    "apply_shift",
    "contrast_shift",
    "split_train_val",
    "subset_per_class",
    "apply_task",
    "TaskPools",
    "task_pools",
    "scored_data",
]

Shift = Callable[..., np.ndarray]
_SHIFTS: dict[str, Shift] = {}


def register_shift(name: str, fn: Shift) -> Shift:
    """Make ``fn(images, **params)`` available as ``TaskSpec(shift=name, params=...)``; returns ``fn``."""
    if name in _SHIFTS and _SHIFTS[name] is not fn:
        raise InputError(f"an image shift named {name!r} is already registered")
    _SHIFTS[name] = fn
    return fn


def available_shifts() -> list[str]:
    """Names of the registered image shifts."""
    return sorted(_SHIFTS)


def apply_shift(images: np.ndarray, name: str, params: dict[str, Any] | None = None) -> np.ndarray:
    """The registered shift ``name`` applied to uint8 images ``(N, H, W)`` (a new array)."""
    if name not in _SHIFTS:
        raise InputError(f"unknown image shift {name!r}; registered: {available_shifts()}")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise InputError(f"image shifts take uint8 arrays, got {getattr(images, 'dtype', type(images).__name__)}")
    try:
        return _SHIFTS[name](images, **(params or {}))
    except TypeError as err:  # a parameter the shift does not take
        raise InputError(f"image shift {name!r}: {err}") from None


def _identity(images: np.ndarray) -> np.ndarray:
    return images.copy()


def contrast_shift(images: np.ndarray, strength: float) -> np.ndarray:
    """Lower contrast, mid-grey kept: ``x' = (1 - s) x + s/2`` on [0, 1] grey values, re-quantised.

    Raises:
        InputError: ``strength`` outside [0, 1).
    """
    if not 0.0 <= strength < 1.0:
        raise InputError(f"contrast shift strength must be in [0, 1), got {strength}")
    x = images.astype(np.float32) / 255.0
    x = (1.0 - strength) * x + strength / 2.0
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


register_shift("none", _identity)
register_shift("contrast", contrast_shift)
register_shift("noise", gaussian_noise)
register_shift("blur", gaussian_blur)
register_shift("lowres", low_resolution)
register_shift("edges", edge_rendering)


@dataclass
class TaskSpec:
    """How a dataset becomes a task (see the module docstring). ``TaskSpec.from_dict(d).to_dict()`` is ``d``
    with defaults filled in."""

    shift: str = "none"
    params: dict[str, Any] = field(default_factory=dict)
    holdout_per_class: int = 0
    holdout_seed: int = 0
    eval_split: str = "test"
    eval_per_class: int | None = None
    eval_seed: int = 0
    classnames: list[str] | None = None
    template: str | None = None
    class_order: list[int] | None = None

    def __post_init__(self) -> None:
        if self.shift not in _SHIFTS:
            raise InputError(f"data.task.shift: unknown image shift {self.shift!r}; registered: {available_shifts()}")
        if not isinstance(self.params, dict):
            raise InputTypeError(f"data.task.params must be a mapping, got {type(self.params).__name__}")
        if self.eval_split not in ("test", "val"):
            raise InputError(f"data.task.eval_split must be 'test' or 'val', got {self.eval_split!r}")
        if self.eval_split == "val" and self.holdout_per_class < 1:
            raise InputError("data.task.eval_split='val' scores the held-out images: set holdout_per_class >= 1")
        for name in ("holdout_per_class", "holdout_seed", "eval_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"data.task.{name} must be an integer >= 0, got {v!r}")
        if self.eval_per_class is not None and (not isinstance(self.eval_per_class, int) or self.eval_per_class < 1):
            raise InputError(f"data.task.eval_per_class must be None or an integer >= 1, got {self.eval_per_class!r}")
        if self.classnames is not None and (
            not isinstance(self.classnames, list) or not all(isinstance(c, str) and c for c in self.classnames)
        ):
            raise InputError(f"data.task.classnames must be a list of non-empty strings, got {self.classnames!r}")
        if self.template is not None and (not isinstance(self.template, str) or self.template.count("{}") != 1):
            raise InputError(f"data.task.template must contain '{{}}' once for the class name, got {self.template!r}")
        order = self.class_order
        if order is not None and (
            not isinstance(order, list)
            or not all(isinstance(i, int) for i in order)
            or sorted(order) != list(range(len(order)))
        ):
            raise InputError(f"data.task.class_order must be a permutation of 0..n-1, got {order!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        if not isinstance(d, dict):
            raise InputTypeError(f"data.task must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown data.task key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_train_val(labels: np.ndarray, val_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` into ``labels``: ``val_per_class`` per class held out (seeded), the rest train.

    Raises:
        InputError: a class has fewer than ``val_per_class`` images.
    """
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if val_per_class > len(idx):
            raise InputError(f"val_per_class={val_per_class} exceeds the {len(idx)} images of class {c}")
        val.append(rng.choice(idx, size=val_per_class, replace=False))
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def subset_per_class(
    labels: np.ndarray, classes: list[int], per_class: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Indices of ``per_class`` images of each class in ``classes`` (all when None or fewer), class by class,
    each class's indices sorted."""
    idx = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if per_class is not None and per_class < len(pool):
            pool = np.sort(rng.choice(pool, size=per_class, replace=False))
        idx.append(pool)
    return np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)


def _images_and_labels(records: list, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not records:
        return np.zeros((0, 1, 1), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    first = records[0][0]
    if not isinstance(first, np.ndarray) or first.dtype != np.uint8 or first.ndim != 2:
        raise InputError(
            f"data.task needs a dataset of in-memory uint8 grey images (such as fashion_mnist); "
            f"{name} {split} holds {type(first).__name__} records"
        )
    return np.stack([r[0] for r in records]), np.array([r[1] for r in records], dtype=np.int64)


@dataclass
class TaskPools:
    """A task's images before the scored subset is picked: the shot pool and the whole scored pool, shifted.

    Attributes:
        train_images, train_labels: the training images minus the hold-out (shots are drawn from them).
        eval_images, eval_labels: every image of ``eval_split`` (test split or hold-out), in dataset order.
        classnames: the dataset's class names (in its label order) as the task's prompts say them.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray
    classnames: list[str]


def task_pools(data: ClassificationData, spec: TaskSpec | dict[str, Any]) -> TaskPools:
    """Shift the shot pool and the whole scored pool of ``data`` for ``spec`` (the costly part of a task).

    Build it once per task and call :func:`scored_data` per evaluation subset: the shifts work image by
    image, so that gives exactly what :func:`apply_task` gives for each subset.
    """
    spec = spec if isinstance(spec, TaskSpec) else TaskSpec.from_dict(spec)
    x_tr, y_tr = _images_and_labels(data.train, "train", data.name)
    train_idx, val_idx = split_train_val(y_tr, spec.holdout_per_class, seed=spec.holdout_seed)
    if spec.eval_split == "test":
        x_ev, y_ev = _images_and_labels(data.test, "test", data.name)
    else:
        x_ev, y_ev = x_tr[val_idx], y_tr[val_idx]
    names = list(spec.classnames) if spec.classnames is not None else list(data.classnames)
    if len(names) != data.n_classes:
        raise InputError(f"data.task.classnames has {len(names)} names; dataset {data.name!r} has {data.n_classes}")
    if spec.class_order is not None and len(spec.class_order) != data.n_classes:
        raise InputError(f"data.task.class_order must order the {data.n_classes} classes of {data.name!r}")
    return TaskPools(
        apply_shift(x_tr[train_idx], spec.shift, spec.params),
        y_tr[train_idx],
        apply_shift(x_ev, spec.shift, spec.params),
        y_ev,
        names,
    )


def scored_data(pools: TaskPools, spec: TaskSpec | dict[str, Any], name: str = "fashion_mnist") -> ClassificationData:
    """The task as a :class:`ClassificationData`: ``train`` = the shot pool, ``test`` = the scored subset of
    ``spec`` (``eval_per_class`` per class drawn with ``eval_seed``), labels and names in ``class_order``."""
    spec = spec if isinstance(spec, TaskSpec) else TaskSpec.from_dict(spec)
    n = len(pools.classnames)
    order = spec.class_order if spec.class_order is not None else list(range(n))
    new_label = np.empty(n, dtype=np.int64)
    new_label[order] = np.arange(n)  # dataset class order[j] becomes label j
    ev = subset_per_class(
        pools.eval_labels, list(range(n)), spec.eval_per_class, np.random.default_rng(10_000 + spec.eval_seed)
    )
    train = [(img, int(new_label[y])) for img, y in zip(pools.train_images, pools.train_labels)]
    test = [(pools.eval_images[i], int(new_label[pools.eval_labels[i]])) for i in ev]
    return ClassificationData(name, [pools.classnames[c] for c in order], train=train, val=[], test=test)


def apply_task(data: ClassificationData, spec: TaskSpec | dict[str, Any]) -> ClassificationData:
    """``data`` turned into the task ``spec``: shots come from ``train`` minus the hold-out; ``test`` holds
    the scored images (the test split or the hold-out, optionally a per-class subset), every image shifted,
    with the task's class names and class order.

    Returns a new :class:`ClassificationData` (same name, ``val`` empty).
    """
    return scored_data(task_pools(data, spec), spec, data.name)
