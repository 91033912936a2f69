"""Datasets in the CoOp / Dassl layout.

A dataset folder holds an image folder and ``split_zhou_<Name>.json``, a JSON object with ``train``,
``val`` and ``test`` lists of ``[relative_path, label, classname]`` (paths relative to the image
folder). ImageNet and FGVC-Aircraft have no split file in CoOp and are read from their own lists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trkit.errors import InputError
from trkit_vlm.data.datasets import COOP_DATASETS, ClassificationData, Record


def _classnames_from(items: dict[str, list], source: str) -> list[str]:
    """label -> classname from the split lists; every label 0..n-1 must occur with one name."""
    names: dict[int, tuple[str, str]] = {}
    for split, rows in items.items():
        for row in rows:
            _, label, cname = row
            label = int(label)
            if label in names and names[label][0] != cname:
                raise InputError(
                    f"{source}: class-name mismatch: label {label} is {names[label][0]!r} in "
                    f"{names[label][1]} and {cname!r} in {split}"
                )
            names.setdefault(label, (cname, split))
    if not names:
        raise InputError(f"{source}: every split is empty")
    n = max(names) + 1
    missing = sorted(set(range(n)) - set(names))
    if missing or min(names) < 0:
        raise InputError(f"{source}: labels must be 0..{n - 1}; missing {missing[:5]}")
    return [names[i][0] for i in range(n)]


def _read_split_json(split_path: Path) -> object:
    """The parsed JSON of a split file; FileNotFoundError / InputError naming the file."""
    if not split_path.is_file():
        raise FileNotFoundError(f"split file not found: {split_path}")
    try:
        return json.loads(split_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{split_path}: not valid JSON ({err})") from None


def read_split_file(
    split_path: str | os.PathLike, image_dir: str | os.PathLike, name: str | None = None
) -> ClassificationData:
    """Read a ``split_zhou_*.json`` file.

    Args:
        split_path: the JSON file.
        image_dir: folder the relative paths in it start from.
        name: dataset name (default: the file name without ``split_zhou_``).

    Returns:
        ClassificationData with absolute paths; classnames from the file (label order).

    Raises:
        FileNotFoundError: the split file is missing. ValueError: malformed rows, inconsistent names.
    """
    split_path = Path(split_path)
    raw = _read_split_json(split_path)
    if not isinstance(raw, dict) or "train" not in raw or "test" not in raw:
        raise InputError(f"{split_path}: expected an object with 'train', 'val' and 'test' lists")
    items = {s: raw.get(s) or [] for s in ("train", "val", "test")}
    for split, rows in items.items():
        for i, row in enumerate(rows):
            ok = isinstance(row, (list, tuple)) and len(row) == 3
            if not (ok and isinstance(row[0], str) and isinstance(row[1], int) and isinstance(row[2], str)):
                raise InputError(f"{split_path}: {split}[{i}] should be [relative_path, label, classname], got {row!r}")
    classnames = _classnames_from(items, str(split_path))
    image_dir = Path(image_dir)
    splits = {s: [(str(image_dir / rel), int(label)) for rel, label, _ in rows] for s, rows in items.items()}
    return ClassificationData(
        name=name or split_path.stem.replace("split_zhou_", ""), classnames=classnames, root=str(image_dir), **splits
    )


def _read_imagenet(dataset_dir: Path, image_dir: Path) -> ClassificationData:
    """CoOp's ImageNet: ``images/{train,val}/<wnid>/*`` and ``classnames.txt`` (``<wnid> <name>``);
    labels are the sorted folder order; the val folder is the test split (as in CoOp)."""
    text_file = dataset_dir / "classnames.txt"
    if not text_file.is_file():
        raise FileNotFoundError(f"ImageNet needs {text_file} ('<wnid> <class name>' per line)")
    wnid_to_name = {}
    for line in text_file.read_text().splitlines():
        parts = line.strip().split(" ")
        if parts and parts[0]:
            wnid_to_name[parts[0]] = " ".join(parts[1:])

    def read(split: str) -> list[Record]:
        folder = image_dir / split
        if not folder.is_dir():
            raise FileNotFoundError(f"ImageNet image folder not found: {folder}")
        wnids = sorted(d.name for d in os.scandir(folder) if d.is_dir())
        if wnids != sorted(wnid_to_name):
            raise InputError(
                f"class-name mismatch: {folder} has {len(wnids)} class folders, {text_file} names {len(wnid_to_name)}"
            )
        return [
            (str(folder / w / f), label)
            for label, w in enumerate(wnids)
            for f in sorted(os.listdir(folder / w))
            if not f.startswith(".")
        ]

    names = [wnid_to_name[w] for w in sorted(wnid_to_name)]
    test = read("val")
    return ClassificationData("imagenet", names, train=read("train"), val=test, test=test, root=str(image_dir))


def _read_fgvc(dataset_dir: Path, image_dir: Path) -> ClassificationData:
    """CoOp's FGVC-Aircraft: ``variants.txt`` (label order) and ``images_variant_<split>.txt``
    (``<image id> <variant>`` per line, image ``images/<id>.jpg``)."""
    variants = dataset_dir / "variants.txt"
    if not variants.is_file():
        raise FileNotFoundError(f"FGVC-Aircraft needs {variants}")
    names = [ln.strip() for ln in variants.read_text().splitlines() if ln.strip()]
    index = {c: i for i, c in enumerate(names)}

    def read(split: str) -> list[Record]:
        path = dataset_dir / f"images_variant_{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"FGVC-Aircraft split list not found: {path}")
        out = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            imname, *cname = line.strip().split(" ")
            cname = " ".join(cname)
            if cname not in index:
                raise InputError(f"class-name mismatch: {path} names {cname!r}, which {variants} lacks")
            out.append((str(image_dir / f"{imname}.jpg"), index[cname]))
        return out

    return ClassificationData(
        "fgvc_aircraft", names, train=read("train"), val=read("val"), test=read("test"), root=str(image_dir)
    )


def load_coop_dataset(name: str, root: str | os.PathLike) -> ClassificationData:
    """Load one of the 11 CoOp datasets (``name`` as in :data:`COOP_DATASETS`).

    ``root`` is CoOp's data root (holding e.g. ``oxford_pets/``) or the dataset folder itself.
    """
    spec = COOP_DATASETS[name]
    root = Path(root).expanduser()
    dataset_dir = root / spec.dataset_dir
    if not dataset_dir.is_dir() and (root / (spec.split_file or "")).is_file():
        dataset_dir = root
    elif not dataset_dir.is_dir() and spec.split_file is None and root.name == spec.dataset_dir:
        dataset_dir = root
    if not dataset_dir.is_dir():
        raise FileNotFoundError(
            f"{name}: dataset folder not found: {dataset_dir} (CoOp layout: "
            f"<root>/{spec.dataset_dir}/{spec.split_file or ''})"
        )
    image_dir = dataset_dir / spec.image_dir if spec.image_dir else dataset_dir
    if spec.reader == "imagenet":
        return _read_imagenet(dataset_dir, image_dir)
    if spec.reader == "fgvc":
        return _read_fgvc(dataset_dir, image_dir)
    data = read_split_file(dataset_dir / spec.split_file, image_dir, name=name)
    return data


def load_split_folder(
    root: str | os.PathLike, split_file: str | None = None, image_dir: str | None = None, name: str | None = None
) -> ClassificationData:
    """A user's own CoOp-layout folder: ``root`` holds one ``split_zhou_*.json`` (or name it with
    ``split_file``) and the images (under ``image_dir``, default: ``images/`` if the paths resolve
    there, else ``root``)."""
    root = Path(root).expanduser()
    if split_file is None:
        found = sorted(root.glob("split_zhou_*.json"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"{root}: expected exactly one split_zhou_*.json, found {len(found)}; pass split_file"
            )
        split_path = found[0]
    else:
        split_path = Path(split_file) if Path(split_file).is_absolute() else root / split_file
    if image_dir is None:  # "images" when the first listed path resolves there
        raw = _read_split_json(split_path)
        rows = next((rows for rows in raw.values() if rows), None) if isinstance(raw, dict) else None
        first = rows[0][0] if isinstance(rows, list) and isinstance(rows[0], (list, tuple)) and rows[0] else None
        image_dir = "images" if isinstance(first, str) and (root / "images" / first).exists() else ""
    data = read_split_file(split_path, root / image_dir if image_dir else root, name=name)
    return data
