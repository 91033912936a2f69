"""The dataset record type shared by every loader, and the names of the 11 CoOp benchmark datasets.

A dataset is a :class:`ClassificationData`: class names plus ``train``/``val``/``test`` lists of
``(image_source, label)`` records, where ``image_source`` is a file path or an in-memory image
(``PIL.Image`` or a uint8 array ``(H, W)`` / ``(H, W, C)``). Labels are ``0..n_classes-1``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from trkit.errors import InputError

Record = tuple[Any, int]


@dataclass
class ClassificationData:
    """Class names and the three splits of one image-classification dataset.

    Attributes:
        name: dataset name (used for output paths and cache keys).
        classnames: ``n_classes`` names; ``classnames[label]`` is the name of ``label``.
        train, val, test: lists of ``(image_source, label)``.
        root: folder that relative record paths are shown against (cache files store paths relative to it).
    """

    name: str
    classnames: list[str]
    train: list[Record] = field(default_factory=list)
    val: list[Record] = field(default_factory=list)
    test: list[Record] = field(default_factory=list)
    root: str | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> list[Record]:
        """The records of split ``name`` ("train", "val" or "test")."""
        if name not in ("train", "val", "test"):
            raise InputError(f"unknown split {name!r}; expected 'train', 'val' or 'test'")
        return getattr(self, name)

    def replace(self, **changes: Any) -> ClassificationData:
        """A copy with some fields changed (the record lists are shared, not copied)."""
        return dataclasses.replace(self, **changes)

    def validate(self) -> ClassificationData:
        """Check labels are ints in range; raises ValueError naming the first bad record."""
        n = len(self.classnames)
        if n == 0:
            raise InputError(f"dataset {self.name!r} has no classes")
        for split in ("train", "val", "test"):
            for i, rec in enumerate(getattr(self, split)):
                if len(rec) != 2:
                    raise InputError(f"{self.name} {split}[{i}]: a record is (image_source, label), got {rec!r}")
                label = rec[1]
                if not isinstance(label, int) or not 0 <= label < n:
                    raise InputError(f"{self.name} {split}[{i}]: label {label!r} is not in 0..{n - 1}")
        return self


class CoOpSpec(NamedTuple):
    """Where CoOp (KaiyangZhou/CoOp, datasets/*.py) keeps one dataset under its data root."""

    dataset_dir: str  # folder under the data root
    image_dir: str  # image folder under dataset_dir ("" = dataset_dir itself)
    split_file: str | None  # split_zhou_*.json under dataset_dir; None = dataset-specific reader
    reader: str = "split"  # "split", "imagenet" (images/{train,val}/<wnid>/ + classnames.txt),
    # "fgvc" (images_variant_{train,val,test}.txt + variants.txt)


# The 11 base-to-novel datasets, as CoOp's datasets/*.py lay them out.
COOP_DATASETS: dict[str, CoOpSpec] = {
    "imagenet": CoOpSpec("imagenet", "images", None, "imagenet"),
    "caltech101": CoOpSpec("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": CoOpSpec("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": CoOpSpec("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": CoOpSpec("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": CoOpSpec("food-101", "images", "split_zhou_Food101.json"),
    "fgvc_aircraft": CoOpSpec("fgvc_aircraft", "images", None, "fgvc"),
    "sun397": CoOpSpec("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": CoOpSpec("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": CoOpSpec("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": CoOpSpec("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}

# CoOp's class names for the same datasets (its config files), lower-cased, mapped to ours.
ALIASES: dict[str, str] = {
    "caltech-101": "caltech101",
    "oxfordpets": "oxford_pets",
    "pets": "oxford_pets",
    "stanfordcars": "stanford_cars",
    "cars": "stanford_cars",
    "oxfordflowers": "oxford_flowers",
    "flowers102": "oxford_flowers",
    "flowers": "oxford_flowers",
    "food-101": "food101",
    "fgvcaircraft": "fgvc_aircraft",
    "aircraft": "fgvc_aircraft",
    "describabletextures": "dtd",
    "ucf-101": "ucf101",
    "fashion-mnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "imagefolder": "folder",
}

# Non-CoOp sources load_dataset also understands.
OTHER_DATASETS = ("folder", "coop", "fashion_mnist")


def canonical_name(name: str) -> str:
    """Our name for a dataset (accepts CoOp's class names such as "OxfordPets", case-insensitive)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in COOP_DATASETS and key not in OTHER_DATASETS:
        known = ", ".join(sorted(COOP_DATASETS) + list(OTHER_DATASETS))
        raise InputError(f"unknown dataset {name!r}; known: {known}")
    return key


def display_path(source: Any, root: str | None) -> str:
    """A short printable name for an image source (path relative to ``root`` when under it)."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if root is not None:
            try:
                return p.relative_to(root).as_posix()
            except ValueError:
                pass
        return p.as_posix()
    return f"<in-memory {type(source).__name__}>"
