"""Few-shot sampling (K images per class, seeded, cached as JSON) and the base-to-novel class split.

Follows CoOp / Dassl: shots are drawn from every class of the training split (val: ``min(K, 4)``
per class), then the classes are split by label: base = the first ``ceil(n/2)``, novel = the rest,
labels remapped to ``0..`` within each subset.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from pathlib import Path

from trkit.errors import InputError
from trkit_vlm.data.datasets import ClassificationData, Record, display_path
from trkit_vlm.files import atomic_write_text

SUBSETS = ("all", "base", "novel")


def sample_few_shot(
    records: list[Record],
    shots: int,
    seed: int,
    classnames: list[str] | None = None,
    strict: bool = True,
    what: str = "train",
) -> list[int]:
    """Pick ``shots`` record indices per class, reproducibly.

    Args:
        records: ``(image_source, label)`` list.
        shots: images per class (K >= 1).
        seed: sampling seed; the same (records, K, seed) always gives the same indices.
        classnames: the class names in label order: every class must have ``shots`` images, those
            with none in ``records`` too (without it, only the labels present count); for messages.
        strict: a class with fewer than K images is an error; otherwise take all it has.
        what: the split's name, for error messages.

    Returns:
        Indices into ``records``, grouped by label (ascending), each group in sampled order.

    Raises:
        ValueError: ``shots < 1``, or (strict) a class with fewer than ``shots`` images.
    """
    if shots < 1:
        raise InputError(f"shots must be >= 1, got {shots}")
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(records):
        by_label[label].append(i)
    rng = random.Random(seed)
    out: list[int] = []
    # Every class counts, those without a single image of this split too (a base class with no training
    # image would otherwise drop out of training without a word).
    labels = range(len(classnames)) if classnames is not None else sorted(by_label)
    for label in labels:
        idxs = by_label.get(label, [])
        if len(idxs) < shots:
            if strict:
                cname = classnames[label] if classnames else str(label)
                raise InputError(
                    f"shots={shots} is larger than the {len(idxs)} {what} images of class {cname!r} (label {label})"
                )
            out += idxs
        else:
            out += rng.sample(idxs, shots)
    return out


def fewshot_cache_path(out_root: str | os.PathLike, dataset: str, shots: int, seed: int) -> Path:
    """Where the sampled file list lives: shared by every method run on the same data, shots and seed."""
    return Path(out_root) / dataset / "fewshot" / f"shots_{shots}-seed_{seed}.json"


def _entries(data: ClassificationData, split: str, idxs: list[int]) -> list[list]:
    recs = data.split(split)
    return [[i, display_path(recs[i][0], data.root), recs[i][1]] for i in idxs]


def _check_entries(data: ClassificationData, split: str, entries: list, path: Path) -> list[int]:
    recs = data.split(split)
    idxs = []
    for i, shown, label in entries:
        if not (0 <= i < len(recs)) or recs[i][1] != label or display_path(recs[i][0], data.root) != shown:
            here = display_path(recs[i][0], data.root) if 0 <= i < len(recs) else "nothing"
            raise InputError(
                f"few-shot cache {path} does not match the dataset ({split}[{i}] is {shown!r} "
                f"there and {here!r} here); delete it to resample"
            )
        idxs.append(i)
    return idxs


def few_shot_data(
    data: ClassificationData, shots: int, seed: int, cache_path: str | os.PathLike | None = None
) -> ClassificationData:
    """``data`` with ``train`` cut to ``shots`` per class and ``val`` to ``min(shots, 4)`` per class.

    When ``cache_path`` exists the indices are read from it (and checked against ``data``); otherwise
    they are sampled and written there atomically. ``shots <= 0`` returns ``data`` unchanged.
    """
    if shots <= 0:
        return data
    path = Path(cache_path) if cache_path is not None else None
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"few-shot cache {path} is not valid JSON ({err}); delete it to resample") from None
        if cached.get("shots") != shots or cached.get("seed") != seed:
            raise InputError(
                f"few-shot cache {path} is for shots={cached.get('shots')} "
                f"seed={cached.get('seed')}, not shots={shots} seed={seed}"
            )
        train_idx = _check_entries(data, "train", cached["train"], path)
        val_idx = _check_entries(data, "val", cached.get("val", []), path)
    else:
        train_idx = sample_few_shot(data.train, shots, seed, data.classnames)
        val_idx = (
            sample_few_shot(data.val, min(shots, 4), seed, data.classnames, strict=False, what="val")
            if data.val
            else []
        )
        if path is not None:
            payload = {
                "dataset": data.name,
                "shots": shots,
                "seed": seed,
                "train": _entries(data, "train", train_idx),
                "val": _entries(data, "val", val_idx),
            }
            atomic_write_text(path, json.dumps(payload, indent=0))
    return data.replace(train=[data.train[i] for i in train_idx], val=[data.val[i] for i in val_idx])


def base_novel_split(classnames: list[str]) -> tuple[list[int], list[int]]:
    """CoOp's class split: labels sorted; base = first ``ceil(n/2)``, novel = the rest.

    Returns:
        (base labels, novel labels), as original label indices.
    """
    n = len(classnames)
    m = math.ceil(n / 2)
    return list(range(m)), list(range(m, n))


def subsample_classes(data: ClassificationData, subset: str) -> ClassificationData:
    """Keep the classes of ``subset`` ("all", "base", "novel"), labels remapped to ``0..``."""
    if subset not in SUBSETS:
        raise InputError(f"unknown class subset {subset!r}; expected one of {SUBSETS}")
    if subset == "all":
        return data
    base, novel = base_novel_split(data.classnames)
    keep = base if subset == "base" else novel
    remap = {old: new for new, old in enumerate(keep)}

    def cut(records: list[Record]) -> list[Record]:
        return [(src, remap[y]) for src, y in records if y in remap]

    return data.replace(
        classnames=[data.classnames[i] for i in keep], train=cut(data.train), val=cut(data.val), test=cut(data.test)
    )
