"""Few-shot image-classification data for CLIP adaptation.

``load_dataset(name, root)`` returns a :class:`ClassificationData` for one of the 11 CoOp datasets
(CoOp/Dassl layout), a user's own CoOp-layout folder (``"coop"``), an ImageFolder tree
(``"folder"``) or Fashion-MNIST from its idx files (``"fashion_mnist"``).
"""

from __future__ import annotations

import os

from trkit.errors import InputError
from trkit_vlm.data.coop import load_coop_dataset, load_split_folder, read_split_file
from trkit_vlm.data.datasets import COOP_DATASETS, ClassificationData, CoOpSpec, Record, canonical_name, display_path
from trkit_vlm.data.fashion_mnist import fashion_mnist_data
from trkit_vlm.data.fewshot import (
    base_novel_split,
    few_shot_data,
    fewshot_cache_path,
    sample_few_shot,
    subsample_classes,
)
from trkit_vlm.data.folder import load_image_folder

__all__ = [
    "COOP_DATASETS",
    "ClassificationData",
    "CoOpSpec",
    "Record",
    "base_novel_split",
    "canonical_name",
    "display_path",
    "few_shot_data",
    "fewshot_cache_path",
    "load_coop_dataset",
    "load_dataset",
    "load_image_folder",
    "load_split_folder",
    "read_split_file",
    "sample_few_shot",
    "subsample_classes",
]


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    split_file: str | None = None,
    image_dir: str | None = None,
    classnames: list[str] | None = None,
) -> ClassificationData:
    """Load a dataset by name.

    Args:
        name: a CoOp dataset ("caltech101", "OxfordPets", ...), "coop" (your own folder with a
            split_zhou_*.json), "folder" (ImageFolder tree) or "fashion_mnist".
        root: CoOp data root / dataset folder / tree root (fashion_mnist: idx folder or None).
        split_file, image_dir: for "coop": which split JSON and image folder (auto-detected if None).
        classnames: expected class names (label order); a different list is an error.

    Raises:
        ValueError: unknown name, class-name mismatch, empty test split. FileNotFoundError: missing folders.
    """
    key = canonical_name(name)
    if key == "fashion_mnist":
        data = fashion_mnist_data(root=None if root is None else str(root))
    elif root is None:
        raise InputError(f"dataset {name!r} needs a root folder (data.root)")
    elif key == "folder":
        data = load_image_folder(root)
    elif key == "coop":
        data = load_split_folder(root, split_file=split_file, image_dir=image_dir)
    else:
        data = load_coop_dataset(key, root)
    if classnames is not None and list(classnames) != list(data.classnames):
        diff = next(
            (i for i, (a, b) in enumerate(zip(classnames, data.classnames)) if a != b),
            min(len(classnames), len(data.classnames)),
        )
        got = data.classnames[diff] if diff < len(data.classnames) else "nothing"
        want = classnames[diff] if diff < len(classnames) else "nothing"
        raise InputError(
            f"class-name mismatch between the split and the config: label {diff} is {got!r} "
            f"in {data.name} and {want!r} in the config"
        )
    return check_usable(data)


def check_usable(data: ClassificationData) -> ClassificationData:
    """``data`` with non-empty train and test splits and valid labels; ValueError naming the problem."""
    if not data.test:
        raise InputError(f"dataset {data.name!r}: the test split is empty")
    if not data.train:
        raise InputError(f"dataset {data.name!r}: the train split is empty")
    return data.validate()
