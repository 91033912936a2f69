"""Data: CoOp layout (the 11 datasets' folders and split files), ImageFolder, few-shot sampling and its
cache, base-to-novel split, transforms, run config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import CLASSES, make_coop_dataset, register_tiny
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trkit_vlm.data import (
    COOP_DATASETS,
    base_novel_split,
    few_shot_data,
    load_dataset,
    load_image_folder,
    sample_few_shot,
    subsample_classes,
)
from trkit_vlm.data.transforms import ImageDataset, build_transforms, check_files, load_image
from trkit_vlm.training.config import RunConfig, apply_overrides, config_from_dict, load_config


@pytest.fixture(scope="module")
def coop_root(tmp_path_factory) -> Path:
    return make_coop_dataset(tmp_path_factory.mktemp("coop"))


def test_coop_split_folder(coop_root):
    data = load_dataset("coop", coop_root)
    assert data.classnames == CLASSES
    assert (len(data.train), len(data.val), len(data.test)) == (16, 8, 12)
    assert all(Path(p).is_file() for p, _ in data.train + data.val + data.test)
    assert [y for _, y in data.test] == [y for y in range(4) for _ in range(3)]


@pytest.mark.parametrize("name", sorted(n for n, s in COOP_DATASETS.items() if s.split_file))
def test_each_coop_dataset_layout(tmp_path, name):
    """Each split-file dataset is found at <root>/<CoOp dir>/<split file> with images under its image dir."""
    spec = COOP_DATASETS[name]
    ddir = tmp_path / spec.dataset_dir
    img_dir = ddir / spec.image_dir if spec.image_dir else ddir
    (img_dir / "a").mkdir(parents=True)
    rows = []
    for label, cname in enumerate(["x_cls", "y_cls"]):
        Image.new("RGB", (8, 8), (label * 100, 0, 0)).save(img_dir / "a" / f"{label}.jpg")
        rows.append([f"a/{label}.jpg", label, cname])
    (ddir / spec.split_file).write_text(json.dumps({"train": rows, "val": rows, "test": rows}))
    data = load_dataset(name, tmp_path)
    assert data.classnames == ["x_cls", "y_cls"]
    assert data.train[1] == (str(img_dir / "a" / "1.jpg"), 1)
    assert load_dataset(name, ddir).classnames == data.classnames  # root may be the dataset folder itself


def test_coop_aliases_and_unknown(tmp_path):
    with pytest.raises(FileNotFoundError, match="oxford_pets"):
        load_dataset("OxfordPets", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("nope", tmp_path)


def test_imagenet_and_fgvc_readers(tmp_path):
    inet = tmp_path / "imagenet"
    for split in ("train", "val"):
        for wnid in ("n02", "n01"):
            (inet / "images" / split / wnid).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(inet / "images" / split / wnid / "a.JPEG")
    (inet / "classnames.txt").write_text("n01 tench fish\nn02 goldfish\n")
    data = load_dataset("imagenet", tmp_path)
    assert data.classnames == ["tench fish", "goldfish"]  # sorted wnid order, as CoOp
    assert data.test[0] == (str(inet / "images" / "val" / "n01" / "a.JPEG"), 0)

    fg = tmp_path / "fgvc_aircraft"
    (fg / "images").mkdir(parents=True)
    (fg / "variants.txt").write_text("707-320\nA300B4\n")
    for i, split in enumerate(("train", "val", "test")):
        Image.new("RGB", (8, 8)).save(fg / "images" / f"{i}.jpg")
        (fg / f"images_variant_{split}.txt").write_text(f"{i} A300B4\n")
    data = load_dataset("fgvc_aircraft", tmp_path)
    assert data.classnames == ["707-320", "A300B4"] and data.train == [(str(fg / "images" / "0.jpg"), 1)]


def test_image_folder_layouts(tmp_path):
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / "t" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8)).save(tmp_path / "t" / split / c / f"{i}.png")
    data = load_dataset("folder", tmp_path / "t")
    assert data.classnames == ["cat", "dog"] and len(data.train) == 4 and data.val == []
    for c in ("b", "a"):
        (tmp_path / "flat" / c).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8)).save(tmp_path / "flat" / c / f"{i}.jpg")
    flat = load_image_folder(tmp_path / "flat")
    assert flat.classnames == ["a", "b"] and (len(flat.train), len(flat.val), len(flat.test)) == (10, 4, 6)
    assert load_image_folder(tmp_path / "flat").train == flat.train  # the split is seeded


def test_bad_inputs_give_clear_errors(tmp_path, coop_root):
    split = json.loads((coop_root / "split_zhou_Tiny.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    split["test"][0][2] = "purple_thing"
    (bad / "split_zhou_X.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match="class-name mismatch.*purple_thing"):
        load_dataset("coop", bad, image_dir=str(coop_root / "images"))
    with pytest.raises(ValueError, match="class-name mismatch between the split and the config"):
        load_dataset("coop", coop_root, classnames=["red_thing", "blue_thing", "green_thing", "grey_thing"])
    split = json.loads((coop_root / "split_zhou_Tiny.json").read_text())
    split["test"] = []
    (bad / "split_zhou_X.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match="test split is empty"):
        load_dataset("coop", bad, image_dir=str(coop_root / "images"))
    data = load_dataset("coop", coop_root)
    missing = data.train[:1] + [(str(tmp_path / "gone.jpg"), 0)]
    with pytest.raises(FileNotFoundError, match="missing image file: .*gone.jpg"):
        check_files(missing, "train")
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        load_image(tmp_path / "gone.jpg")
    with pytest.raises(ValueError, match="shots=5 is larger than the 4 train images of class 'red_thing'"):
        sample_few_shot(data.train, 5, seed=1, classnames=data.classnames)


def test_few_shot_sampling_deterministic_and_cached(tmp_path, coop_root):
    data = load_dataset("coop", coop_root)
    a = sample_few_shot(data.train, 2, seed=1)
    assert a == sample_few_shot(data.train, 2, seed=1)
    assert any(sample_few_shot(data.train, 2, seed=s) != a for s in range(2, 6))
    labels = [data.train[i][1] for i in a]
    assert labels == [0, 0, 1, 1, 2, 2, 3, 3] and len(set(a)) == 8

    cache = tmp_path / "fs.json"
    fs = few_shot_data(data, 2, 3, cache)
    assert cache.is_file() and len(fs.train) == 8 and len(fs.val) == 8  # val: min(K, 4) per class
    again = few_shot_data(data, 2, 3, cache)
    assert again.train == fs.train and again.val == fs.val
    # The cache wins over resampling (another method reuses exactly these images).
    payload = json.loads(cache.read_text())
    payload["train"] = payload["train"][:2]
    cache.write_text(json.dumps(payload))
    assert len(few_shot_data(data, 2, 3, cache).train) == 2
    payload["train"][0][1] = "red_thing/other.jpg"
    cache.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="does not match the dataset"):
        few_shot_data(data, 2, 3, cache)
    with pytest.raises(ValueError, match="shots=2 seed=3.*not shots=2 seed=4"):
        few_shot_data(data, 2, 4, cache)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60))
def test_base_novel_split_property(n):
    names = [f"c{i}" for i in range(n)]
    base, novel = base_novel_split(names)
    assert base + novel == list(range(n)) and len(base) == math.ceil(n / 2)


def test_subsample_classes_remaps_labels(coop_root):
    data = load_dataset("coop", coop_root)
    novel = subsample_classes(data, "novel")
    assert novel.classnames == CLASSES[2:]
    assert sorted({y for _, y in novel.test}) == [0, 1]
    src = {p: y for p, y in data.test}
    assert all(src[p] == y + 2 for p, y in novel.test)
    with pytest.raises(ValueError, match="unknown class subset"):
        subsample_classes(data, "new")


def test_transforms_follow_the_model(coop_root):
    from trkit_vlm.models import load_clip

    bundle = load_clip(register_tiny())
    _, eval_tf = build_transforms(bundle.model, augment=False)
    img = Image.open(sorted((coop_root / "images" / "red_thing").glob("*.jpg"))[0]).convert("RGB")
    torch.testing.assert_close(eval_tf(img), bundle.preprocess_val(img))
    train_tf, _ = build_transforms(bundle.model, augment=True)
    assert train_tf(img).shape == (3, 32, 32)
    # In-memory uint8 arrays at the model's size take a vectorised path equal to the PIL path.
    rng = np.random.default_rng(0)
    recs = [(rng.integers(0, 256, (32, 32), dtype=np.uint8), 0) for _ in range(3)]
    from trkit_vlm.data.transforms import preprocess_config

    fast = ImageDataset(recs, eval_tf, preprocess_config(bundle.model))
    slow = ImageDataset(recs, eval_tf)
    assert fast.preloaded is not None and slow.preloaded is None
    torch.testing.assert_close(fast[2][0], slow[2][0], atol=1e-6, rtol=0)


def test_run_config_files_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("method: mma\noptim:\n  lr: 0.01\ndata:\n  shots: 4\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.method, cfg.optim.lr, cfg.data.shots, cfg.optim.epochs) == ("mma", 0.01, 4, 5)
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "c.json") == cfg
    cfg2 = apply_overrides(cfg, ["optim.lr=0.002", "adapter.hidden=16", "pretrained=null", "data.augment=false"])
    assert cfg2.optim.lr == 0.002 and cfg2.adapter == {"hidden": 16} and cfg2.data.augment is False
    assert cfg2.run_dir() == Path("output/caltech101/mma/shots_4/seed1")
    with pytest.raises(ValueError, match="unknown config key 'optim.lrr'"):
        apply_overrides(cfg, ["optim.lrr=1"])
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['optimiser'\]"):
        config_from_dict({"optimiser": {}})
    with pytest.raises(ValueError, match="unknown method 'dora'"):
        RunConfig(method="dora").validate()
