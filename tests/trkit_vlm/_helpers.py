"""Shared test fixtures: the tiny CLIP every trkit_vlm test uses, a tiny CoOp-layout dataset on disk,
and a tiny run config; and the tiny small-CLIP recipe config of the Fashion-MNIST demo tests."""

from __future__ import annotations

import gzip
import json
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from trkit_vlm.models import TINY_CONFIG

TINY = "trkit-test-tiny"
CLASSES = ["red_thing", "green_thing", "blue_thing", "grey_thing"]
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (128, 128, 128)]

# The small CLIP's architecture at 28x28 (Fashion-MNIST), shrunk so a few pre-training steps run in seconds.
TINY_SMALL_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 28, "patch_size": 7, "width": 32, "layers": 3, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
}


def register_tiny() -> str:
    """Register ``trkit_vlm.models.TINY_CONFIG`` (4 layers, 32x32 images) as ``TINY``; returns the name."""
    from trkit_vlm.models import register_model_config

    register_model_config(TINY, TINY_CONFIG)
    return TINY


def tiny_bundle(name: str | None = None, seed: int = 0):
    """A ``ClipBundle`` of the tiny CLIP (or model ``name``) with random weights drawn from ``seed``, quietly."""
    import torch

    from trkit_vlm.models import load_clip

    name = name or register_tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "RANDOM weights" warning is expected here
        torch.manual_seed(seed)
        return load_clip(name)


def tiny_model(name: str | None = None, seed: int = 0):
    """The CLIP module of :func:`tiny_bundle`."""
    return tiny_bundle(name, seed).model


def make_coop_dataset(
    root: Path, n_train: int = 4, n_val: int = 2, n_test: int = 3, size: int = 40, seed: int = 0
) -> Path:
    """``root/images/<class>/<split>_<i>.{jpg,png}`` plus ``root/split_zhou_Tiny.json`` (real image files)."""
    rng = np.random.default_rng(seed)
    split = {"train": [], "val": [], "test": []}
    for label, (cname, colour) in enumerate(zip(CLASSES, COLOURS)):
        (root / "images" / cname).mkdir(parents=True, exist_ok=True)
        for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            for i in range(n):
                arr = np.clip(np.array(colour)[None, None] + rng.normal(0, 25, (size, size, 3)), 0, 255)
                ext = "jpg" if i % 2 == 0 else "png"
                rel = f"{cname}/{name}_{i}.{ext}"
                Image.fromarray(arr.astype(np.uint8)).save(root / "images" / rel)
                split[name].append([rel, label, cname])
    (root / "split_zhou_Tiny.json").write_text(json.dumps(split))
    return root


def tiny_config(tmp: Path, data_root: Path, method: str = "mma", **overrides):
    """A RunConfig for the tiny model on the tiny dataset (1 epoch, no augmentation, batch 2)."""
    from trkit_vlm.training.config import RunConfig, apply_overrides

    cfg = RunConfig(model=register_tiny(), method=method, output_dir=str(tmp / "out"), seed=1)
    cfg.data.dataset, cfg.data.root, cfg.data.shots = "coop", str(data_root), 2
    cfg.data.augment = False
    cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr, cfg.optim.eval_batch_size = 1, 2, 0.01, 16
    cfg.adapter = {"hidden": 8} if method == "mma" else {}
    return apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def write_idx(path, arr: np.ndarray, compress: bool = True) -> None:
    """Hand-written idx encoder (independent of the reader): magic 0x0000 0x08 ndim, big-endian dims."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def fake_fashion_mnist(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0):
    """Random 28x28 images with cycling labels as Fashion-MNIST idx files in ``root``; returns the arrays."""
    rng = np.random.default_rng(seed)
    xtr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ytr = np.arange(n_train, dtype=np.uint8) % 10
    xte = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    yte = np.arange(n_test, dtype=np.uint8)[::-1] % 10
    write_idx(root / "train-images-idx3-ubyte.gz", xtr)
    write_idx(root / "train-labels-idx1-ubyte.gz", ytr)
    write_idx(root / "t10k-images-idx3-ubyte", xte, compress=False)  # plain files are read too
    write_idx(root / "t10k-labels-idx1-ubyte", yte, compress=False)
    return xtr, ytr, xte, yte
