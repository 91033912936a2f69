"""The quickstart's downstream task: few-shot base-to-novel on Fashion-MNIST under a fixed contrast shift.

On the images it was pre-trained on, the small CLIP (``trkit_vlm.demo.small_clip``) is already good, and an
adapter gains nothing there. Under a milder picture quality - lower contrast, lifted black level -
its zero-shot accuracy drops but stays well above chance, and 16 labelled pictures per class show the
model what the new domain looks like. That leaves real room for adaptation on both the base classes
(trained on) and the novel classes (never seen in training, only sharing the domain).

- Shift: ``x' = (1 - s) * x + s / 2`` on [0, 1] grey values (contrast ``1 - s``, mid-grey kept);
  the strength ``s`` was chosen by :func:`shift_sweep` on a validation split carved from the
  Fashion-MNIST *training* images (held out from pre-training); the test set played no part.
- Split: CoOp's base-to-novel rule - classes sorted by label, base = first ceil(n/2):
  t-shirt, trouser, pullover, dress, coat; novel = sandal, shirt, sneaker, bag, ankle boot.
  Each half is scored 5-way, HM = 2BN/(B+N).
- Shots: K per base class drawn (seeded) from the pre-training images; evaluation on the official
  10,000 test images (or a fixed per-class subset of them), shifted the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from trkit.errors import InputError
from trkit_vlm.data.datasets import ClassificationData
from trkit_vlm.data.fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist_data, load_fashion_mnist
from trkit_vlm.data.tasks import TaskSpec, apply_task, contrast_shift, split_train_val, subset_per_class
from trkit_vlm.demo.small_clip import PRETRAIN_TEMPLATES, PretrainRecipe, images_to_tensor

# Chosen on the validation split by shift_sweep (benchmarks/results/small_clip_shift_sweep.json).
DEFAULT_SHIFT_STRENGTH = 0.6


def contrast_task(
    strength: float = DEFAULT_SHIFT_STRENGTH,
    eval_split: str = "test",
    eval_per_class: int | None = None,
    recipe: PretrainRecipe | None = None,
    eval_seed: int = 0,
) -> TaskSpec:
    """The quickstart task as a :class:`~trkit_vlm.data.tasks.TaskSpec`: the contrast shift of ``strength``,
    shots drawn outside ``recipe``'s pre-training hold-out, evaluation on ``eval_split``."""
    recipe = recipe or PretrainRecipe()
    return TaskSpec(
        shift="contrast",
        params={"strength": float(strength)},
        holdout_per_class=recipe.val_per_class,
        holdout_seed=recipe.seed,
        eval_split=eval_split,
        eval_per_class=eval_per_class,
        eval_seed=eval_seed,
    )


def base_novel_classes(n_classes: int = len(FASHION_MNIST_CLASSES)) -> tuple[list[int], list[int]]:
    """CoOp's rule: labels sorted, base = first ceil(n/2), novel = the rest."""
    m = math.ceil(n_classes / 2)
    return list(range(m)), list(range(m, n_classes))


@dataclass
class Split:
    """Images (uint8 ``(N, H, W)``, already shifted) with labels local to a class group (``0..len(classes)-1``)."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[int]

    @property
    def classnames(self) -> list[str]:
        return [FASHION_MNIST_CLASSES[c] for c in self.classes]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (N, 3, H, W) float normalised, labels (N,) int64)``."""
        return images_to_tensor(self.images), torch.from_numpy(self.labels.astype(np.int64))


@dataclass
class FewShotTask:
    """One seed of the base-to-novel task: shots of the base classes and the two evaluation groups."""

    shots: Split
    eval_base: Split
    eval_novel: Split
    strength: float
    seed: int
    eval_split: str


def _subset(images, labels, classes, per_class, rng) -> Split:
    idx = subset_per_class(labels, classes, per_class, rng)
    local = {c: i for i, c in enumerate(classes)}
    return Split(images[idx], np.array([local[int(y)] for y in labels[idx]], dtype=np.int64), list(classes))


class ImagePools(NamedTuple):
    """Unshifted Fashion-MNIST images: the pre-training ones (shots are drawn from them) and the ones
    evaluated on (the test set, or the validation images held out from pre-training)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray
    eval_split: str


def image_pools(eval_split: str = "test", recipe: PretrainRecipe | None = None, data=None) -> ImagePools:
    """The image pools for ``eval_split`` ("test" or "val"), respecting ``recipe``'s validation hold-out.

    ``data``: ``load_fashion_mnist()``'s 4-tuple (loaded when None).
    """
    if eval_split not in ("test", "val"):
        raise InputError(f"eval_split must be 'test' or 'val', got {eval_split!r}")
    recipe = recipe or PretrainRecipe()
    x_tr, y_tr, x_te, y_te = data if data is not None else load_fashion_mnist()
    train_idx, val_idx = split_train_val(y_tr, recipe.val_per_class, seed=recipe.seed)
    x_ev, y_ev = (x_te, y_te) if eval_split == "test" else (x_tr[val_idx], y_tr[val_idx])
    return ImagePools(x_tr[train_idx], y_tr[train_idx], x_ev, y_ev, eval_split)


def make_task(
    pools: ImagePools,
    shots: int = 16,
    seed: int = 1,
    strength: float = DEFAULT_SHIFT_STRENGTH,
    eval_per_class: int | None = None,
    eval_seed: int = 0,
) -> FewShotTask:
    """Build the shifted few-shot task from :func:`image_pools`.

    Args:
        pools: the images (pre-training ones for the shots; test or validation ones for evaluation).
        shots: K images per base class for training, drawn with ``seed`` from the pre-training images.
        seed: few-shot sampling seed (1, 2, 3 in the quickstart).
        strength: contrast-shift strength (see :func:`apply_shift`).
        eval_per_class: evaluate on a fixed random subset of this many images per class (None = all).
        eval_seed: seed of the evaluation subset (fixed so every method sees the same images).
    """
    if shots < 1:
        raise InputError(f"shots must be >= 1, got {shots}")
    base, novel = base_novel_classes()
    shot_split = _subset(pools.train_images, pools.train_labels, base, shots, np.random.default_rng(seed))
    ev_rng = np.random.default_rng(10_000 + eval_seed)
    eval_base = _subset(pools.eval_images, pools.eval_labels, base, eval_per_class, ev_rng)
    eval_novel = _subset(pools.eval_images, pools.eval_labels, novel, eval_per_class, ev_rng)
    for s in (shot_split, eval_base, eval_novel):
        s.images = contrast_shift(s.images, strength)
    return FewShotTask(shot_split, eval_base, eval_novel, strength, seed, pools.eval_split)


def shifted_data(
    strength: float = DEFAULT_SHIFT_STRENGTH,
    eval_split: str = "test",
    eval_per_class: int | None = None,
    recipe: PretrainRecipe | None = None,
    data=None,
    eval_seed: int = 0,
) -> ClassificationData:
    """The task as a ``ClassificationData`` for ``trkit_vlm.training.train.train`` (all 10 classes, shifted):
    :func:`contrast_task` applied to Fashion-MNIST (``data``: ``load_fashion_mnist()``'s 4-tuple, loaded
    when None).

    ``train``: the pre-training images (few-shot sampling draws from them); ``test``: the test images
    (``eval_split="test"``) or the held-out validation images (``"val"``), optionally a fixed subset of
    ``eval_per_class`` per class; ``val`` is empty. Records are ``(uint8 (28, 28) array, label)``.
    """
    spec = contrast_task(strength, eval_split, eval_per_class, recipe, eval_seed)
    return apply_task(fashion_mnist_data(data), spec)


@torch.no_grad()
def _features(model, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat(
        [F.normalize(model.encode_image(images[i : i + batch]), dim=-1) for i in range(0, len(images), batch)]
    )


def linear_probe_accuracy(train_f, train_y, test_f, test_y, n_classes: int, steps: int = 300) -> float:
    """Test accuracy (%) of a multinomial logistic regression on frozen unit-norm features (``(n, d)``,
    labels ``0..n_classes-1``); weight decay chosen small and fixed."""
    w = torch.zeros(train_f.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        # Features are unit-norm: a fixed gain of 10 plays CLIP's temperature role.
        loss = F.cross_entropy(10 * train_f @ w + b, train_y) + 1e-3 * (w**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return accuracy(10 * test_f @ w + b, test_y)


def shift_sweep(
    bundle,
    strengths=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
    shots: int = 16,
    seeds=(1, 2, 3),
    eval_per_class: int = 200,
    data=None,
    recipe: PretrainRecipe | None = None,
    progress: bool = True,
) -> dict:
    """Zero-shot accuracy and a few-shot reference for each shift strength, on VALIDATION images only.

    For each strength and class group (base, novel): zero-shot 5-way accuracy; a K-shot linear probe on
    the frozen image features (K shots of that group's classes, mean over seeds); and the zero-shot
    accuracy on the same images unshifted. The chosen strength maximises
    ``min over groups of min(zero-shot - chance, ceiling - zero-shot)``, ceiling = max(probe, unshifted
    zero-shot): the task whose zero-shot sits furthest from both chance and the ceiling.

    Returns:
        ``{"rows": [per-strength dict], "chosen_strength": s, ...}`` (JSON-serialisable).
    """
    model, tok = bundle.model.eval(), bundle.tokenizer
    recipe = recipe or PretrainRecipe()
    pools = image_pools("val", recipe, data)
    clean = make_task(pools, shots, seeds[0], 0.0, eval_per_class)
    rows = []
    for s in strengths:
        task = make_task(pools, shots, seeds[0], s, eval_per_class)
        row = {"strength": s, "contrast": round(1 - s, 4), "offset": round(s / 2, 4)}
        for group in ("base", "novel"):
            ev = getattr(task, f"eval_{group}")
            x, y = ev.tensors()
            with torch.no_grad():
                prompts = tok([PRETRAIN_TEMPLATES[0].format(c) for c in ev.classnames])
                text = F.normalize(model.encode_text(prompts), dim=-1)
            f = _features(model, x)
            f_clean = _features(model, getattr(clean, f"eval_{group}").tensors()[0])
            row[f"zs_{group}"] = accuracy(f @ text.t(), y)
            row[f"zs_clean_{group}"] = accuracy(f_clean @ text.t(), y)
            probes = []
            for seed in seeds:
                sx, sy = _group_shots(pools, ev.classes, shots, seed, s).tensors()
                probes.append(linear_probe_accuracy(_features(model, sx), sy, f, y, len(ev.classes)))
            row[f"probe_{group}"] = float(np.mean(probes))
            ceiling = max(row[f"probe_{group}"], row[f"zs_clean_{group}"])
            row[f"ceiling_{group}"] = ceiling
            row[f"margin_{group}"] = min(row[f"zs_{group}"] - 100.0 / len(ev.classes), ceiling - row[f"zs_{group}"])
        row["margin"] = min(row["margin_base"], row["margin_novel"])
        rows.append(row)
        if progress:
            print(
                "  s={strength:.2f}: zero-shot base {zs_base:.1f} novel {zs_novel:.1f} | probe base "
                "{probe_base:.1f} novel {probe_novel:.1f} | unshifted base {zs_clean_base:.1f} novel "
                "{zs_clean_novel:.1f} | margin {margin:.1f}".format(**row),
                flush=True,
            )
    best = max(rows, key=lambda r: r["margin"])
    return {
        "rows": rows,
        "chosen_strength": best["strength"],
        "rule": "max over strengths of min over {base, novel} of min(zero-shot - chance, "
        "max(linear probe, unshifted zero-shot) - zero-shot)",
        "split": "validation: images held out from the Fashion-MNIST training set (never pre-trained on)",
        "shots": shots,
        "seeds": list(seeds),
        "eval_per_class": eval_per_class,
    }


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of rows of ``logits`` ``(n, C)`` whose argmax is the label."""
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def _group_shots(pools: ImagePools, classes: list[int], shots: int, seed: int, strength: float) -> Split:
    """K shifted shots of each class in ``classes`` from the pre-training images (probe reference)."""
    sp = _subset(pools.train_images, pools.train_labels, classes, shots, np.random.default_rng(seed))
    sp.images = contrast_shift(sp.images, strength)
    return sp
