"""A plain ImageFolder tree as a :class:`ClassificationData`.

Two layouts:

- ``root/{train,val,test}/<class>/<image>`` (``val`` optional): the splits as given;
- ``root/<class>/<image>``: split per class 50% / 20% / 30% with a fixed seed (as CoOp does for DTD).

Class names are the folder names (sorted; labels follow that order); underscores become spaces only
when the prompt is written.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from trkit.errors import InputError
from trkit_vlm.data.datasets import ClassificationData, Record

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in os.scandir(folder) if d.is_dir() and not d.name.startswith("."))


def _images(folder: Path) -> list[str]:
    return sorted(
        str(folder / f)
        for f in os.listdir(folder)
        if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
    )


def load_image_folder(
    root: str | os.PathLike, name: str | None = None, split_seed: int = 0, fractions: tuple[float, float] = (0.5, 0.2)
) -> ClassificationData:
    """Read an ImageFolder tree.

    Args:
        root: the tree's top folder.
        name: dataset name (default: the folder name).
        split_seed: seed for the per-class split of the one-level layout.
        fractions: (train, val) fractions for that split; the rest is test.

    Raises:
        FileNotFoundError: ``root`` is missing. ValueError: no classes, or the splits disagree on classes.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    name = name or root.name
    if (root / "train").is_dir() and (root / "test").is_dir():
        classnames = _class_dirs(root / "train")
        splits: dict[str, list[Record]] = {}
        for split in ("train", "val", "test"):
            folder = root / split
            if not folder.is_dir():
                splits[split] = []
                continue
            found = _class_dirs(folder)
            if found != classnames:
                extra = sorted(set(found) ^ set(classnames))
                raise InputError(f"class-name mismatch: {folder} and {root / 'train'} differ in {extra[:5]}")
            splits[split] = [(p, label) for label, c in enumerate(classnames) for p in _images(folder / c)]
    else:
        classnames = _class_dirs(root)
        rng = random.Random(split_seed)
        splits = {"train": [], "val": [], "test": []}
        for label, c in enumerate(classnames):
            files = _images(root / c)
            rng.shuffle(files)
            n_train = round(len(files) * fractions[0])
            n_val = round(len(files) * fractions[1])
            splits["train"] += [(p, label) for p in files[:n_train]]
            splits["val"] += [(p, label) for p in files[n_train : n_train + n_val]]
            splits["test"] += [(p, label) for p in files[n_train + n_val :]]
    if not classnames:
        raise InputError(f"{root}: no class folders found")
    return ClassificationData(name, classnames, root=str(root), **splits)
