"""Choosing benchmark tasks on validation images: how far zero-shot sits from chance and from a few-shot ceiling.

A task leaves room for adaptation when the small CLIP's zero-shot accuracy is clearly above chance and
clearly below what a few labelled pictures can reach, on the base classes and on the novel ones. For each
candidate task (a :class:`~trkit_vlm.data.tasks.TaskSpec` dict: an image shift, or prompts that say the
class names differently) :func:`task_sweep` measures, per class group (base, novel; 5-way each):

- ``zs``: zero-shot accuracy with the task's prompts on the task's pictures;
- ``probe``: a K-shot linear probe on the frozen image features of the task's pictures (mean over seeds);
- ``zs_clean``: zero-shot accuracy on the unshifted pictures with the standard prompts;
- ``margin = min(zs - chance, max(probe, zs_clean) - zs)``, and the task's margin is the smaller of the
  two groups'. The rule picks, per kind of task, the candidate with the largest margin.

Only held-out training images are scored (``eval_split="val"``); the test set plays no part.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trkit_vlm.data.fashion_mnist import fashion_mnist_data
from trkit_vlm.data.tasks import TaskSpec, scored_data, subset_per_class, task_pools
from trkit_vlm.demo.small_clip import PRETRAIN_TEMPLATES, PretrainRecipe, images_to_tensor
from trkit_vlm.demo.tasks import accuracy, linear_probe_accuracy

__all__ = ["task_sweep", "validation_spec", "margin_rule"]

RULE = (
    "per class group (base, novel): min(zero-shot - chance, max(linear probe, unshifted zero-shot) - zero-shot); "
    "a task's margin is the smaller of its two groups'; per kind, the candidate with the largest margin"
)


def validation_spec(spec: dict[str, Any], recipe: PretrainRecipe, eval_per_class: int | None) -> dict[str, Any]:
    """``spec`` scored on the images the small CLIP never saw in pre-training (its hold-out)."""
    return TaskSpec.from_dict(
        {
            **spec,
            "holdout_per_class": recipe.val_per_class,
            "holdout_seed": recipe.seed,
            "eval_split": "val",
            "eval_per_class": eval_per_class,
            "eval_seed": 0,
        }
    ).to_dict()


def margin_rule(zs: float, probe: float, zs_clean: float, chance: float) -> float:
    """``min(zs - chance, max(probe, zs_clean) - zs)``: the distance to the nearer of chance and ceiling."""
    return min(zs - chance, max(probe, zs_clean) - zs)


@torch.no_grad()
def _image_features(model, images: np.ndarray, batch: int = 500) -> torch.Tensor:
    return torch.cat(
        [
            F.normalize(model.encode_image(images_to_tensor(images[i : i + batch])), dim=-1)
            for i in range(0, len(images), batch)
        ]
    )


@torch.no_grad()
def _text_features(model, tokenizer, names: list[str], template: str) -> torch.Tensor:
    return F.normalize(model.encode_text(tokenizer([template.format(n) for n in names])), dim=-1)


def task_sweep(
    bundle,
    candidates: dict[str, dict[str, Any]],
    shots: int = 16,
    seeds: tuple[int, ...] = (1, 2, 3),
    eval_per_class: int = 200,
    recipe: PretrainRecipe | None = None,
    data=None,
    log=print,
) -> dict[str, Any]:
    """Zero-shot, probe and margin of every candidate task, on validation images (see the module docstring).

    Args:
        bundle: the small CLIP (``load_small_clip()``).
        candidates: label -> TaskSpec dict (shift/params or classnames/template; the scored images are set here).
        shots, seeds: the probe's K shots per class and its draws.
        eval_per_class: validation images scored per class.
        data: ``load_fashion_mnist()``'s 4-tuple (tests use a small fake one).

    Returns:
        ``{"rows": [{"label", "task", "zs_base", "probe_base", "zs_clean_base", "margin_base", ... "margin"}],
        "rule", ...}`` (JSON-serialisable).
    """
    model, tok = bundle.model.eval(), bundle.tokenizer
    recipe = recipe or PretrainRecipe()
    fm = fashion_mnist_data(data)
    names = list(fm.classnames)
    n = len(names)
    groups = {"base": list(range((n + 1) // 2)), "novel": list(range((n + 1) // 2, n))}
    clean = scored_data(
        task_pools(fm, validation_spec({}, recipe, eval_per_class)), validation_spec({}, recipe, eval_per_class)
    )
    clean_f = _image_features(model, np.stack([r[0] for r in clean.test]))
    clean_y = torch.tensor([r[1] for r in clean.test])
    clean_t = _text_features(model, tok, names, PRETRAIN_TEMPLATES[0])
    features: dict[str, tuple] = {}  # candidates with the same pictures share their image features
    rows = []
    for label, cand in candidates.items():
        spec = validation_spec(cand, recipe, eval_per_class)
        key = json.dumps([spec["shift"], spec["params"], spec["class_order"]], sort_keys=True)
        if key not in features:
            pools = task_pools(fm, spec)
            task = scored_data(pools, spec)
            train_y = np.array([r[1] for r in task.train])  # the task's labels (class_order applied)
            shot_f = {}
            for s in seeds:
                idx = subset_per_class(train_y, list(range(n)), shots, np.random.default_rng(s))
                shot_f[s] = (_image_features(model, pools.train_images[idx]), torch.from_numpy(train_y[idx]))
            test_y = torch.tensor([r[1] for r in task.test])
            features[key] = (_image_features(model, np.stack([r[0] for r in task.test])), test_y, shot_f)
        f, labels, shot_f = features[key]
        task_names = spec["classnames"] or names
        order = spec["class_order"] or list(range(n))
        text = _text_features(model, tok, [task_names[c] for c in order], spec["template"] or PRETRAIN_TEMPLATES[0])
        ref_y = torch.from_numpy(np.argsort(order))[clean_y]  # the unshifted reference in the task's partition
        ref_t = clean_t[order]
        row: dict[str, Any] = {"label": label, "task": cand}
        for g, cl in groups.items():
            mask = (labels >= cl[0]) & (labels <= cl[-1])
            y = labels[mask] - cl[0]
            row[f"zs_{g}"] = accuracy(f[mask] @ text[cl].t(), y)
            ref = (ref_y >= cl[0]) & (ref_y <= cl[-1])
            row[f"zs_clean_{g}"] = accuracy(clean_f[ref] @ ref_t[cl].t(), ref_y[ref] - cl[0])
            probes = []
            for s in seeds:
                sf, sy = shot_f[s]
                m = (sy >= cl[0]) & (sy <= cl[-1])
                probes.append(linear_probe_accuracy(sf[m], sy[m] - cl[0], f[mask], y, len(cl)))
            row[f"probe_{g}"] = float(np.mean(probes))
            row[f"margin_{g}"] = margin_rule(row[f"zs_{g}"], row[f"probe_{g}"], row[f"zs_clean_{g}"], 100.0 / len(cl))
        row["margin"] = min(row["margin_base"], row["margin_novel"])
        rows.append(row)
        if log is not None:
            zs, probe = (
                f"{row['zs_base']:5.1f} / {row['zs_novel']:5.1f}",
                f"{row['probe_base']:5.1f} / {row['probe_novel']:5.1f}",
            )
            log(f"  {label:<28} zero-shot {zs}   probe {probe}   margin {row['margin']:5.1f}")
    return {
        "rows": rows,
        "rule": RULE,
        "split": "validation: images held out from the Fashion-MNIST training set (never pre-trained on)",
        "shots": shots,
        "seeds": list(seeds),
        "eval_per_class": eval_per_class,
        "chance": {g: 100.0 / len(cl) for g, cl in groups.items()},
    }
