"""Image transforms taken from the loaded open_clip model, image loading, and the torch Dataset.

Evaluation: resize the short side to the model's resolution (bicubic), centre crop, normalise with
the model's mean/std — what open_clip's ``preprocess_val`` does. Training augmentation (CoOp):
random resized crop (scale 0.08..1, bicubic) and horizontal flip.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from trkit.errors import InputError, InputTypeError
from trkit_vlm.data.datasets import Record

_INTERP = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def preprocess_config(model: torch.nn.Module) -> dict:
    """The model's image settings: ``size`` (H, W), ``mean``, ``std``, ``interpolation``."""
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    size = (size, size) if isinstance(size, int) else tuple(size)
    return {
        "size": size,
        "mean": tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "std": tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
        "interpolation": cfg.get("interpolation", "bicubic"),
    }


def build_transforms(model: torch.nn.Module, augment: bool = True) -> tuple[Callable, Callable]:
    """(train transform, eval transform), each PIL image -> float tensor ``(3, H, W)``."""
    pc = preprocess_config(model)
    interp = _INTERP[pc["interpolation"]]
    norm = [T.ToTensor(), T.Normalize(pc["mean"], pc["std"])]
    evaluate = T.Compose(
        [
            T.Resize(pc["size"][0] if pc["size"][0] == pc["size"][1] else pc["size"], interpolation=interp),
            T.CenterCrop(pc["size"]),
            *norm,
        ]
    )
    if not augment:
        return evaluate, evaluate
    train = T.Compose(
        [T.RandomResizedCrop(pc["size"], scale=(0.08, 1.0), interpolation=interp), T.RandomHorizontalFlip(), *norm]
    )
    return train, evaluate


def load_image(source: Any) -> Image.Image:
    """An RGB PIL image from a path, a PIL image, or a uint8 array/tensor ``(H, W)`` or ``(H, W, C)``.

    Raises:
        FileNotFoundError: a path that does not exist (named in the message).
        ValueError: an unreadable file or an array of the wrong type/shape.
    """
    if isinstance(source, (str, Path)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"missing image file: {source}")
        try:
            with Image.open(source) as im:
                return im.convert("RGB")
        except OSError as err:
            raise InputError(f"cannot read image file {source}: {err}") from None
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, torch.Tensor):
        source = source.cpu().numpy()
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise InputError(f"an in-memory image must be uint8 (H, W) or (H, W, C), got {source.dtype} {source.shape}")
        return Image.fromarray(source).convert("RGB")
    raise InputTypeError(f"unsupported image source {type(source).__name__}; expected a path, PIL image or uint8 array")


def _fast_tensor(records: list[Record], model_cfg: dict) -> torch.Tensor | None:
    """All records as one normalised tensor when they are uint8 arrays already at the model's size
    (then resize and centre crop are the identity), else None. Saves a PIL round trip per image."""
    if not records or not all(isinstance(s, np.ndarray) and s.dtype == np.uint8 for s, _ in records):
        return None
    shapes = {s.shape for s, _ in records}
    if len(shapes) != 1:
        return None
    shape = next(iter(shapes))
    if tuple(shape[:2]) != tuple(model_cfg["size"]) or (len(shape) == 3 and shape[2] not in (1, 3)):
        return None
    x = torch.from_numpy(np.stack([s for s, _ in records])).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(model_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model_cfg["std"]).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


class ImageDataset(torch.utils.data.Dataset):
    """``(image tensor (3, H, W), label, index)`` items from ``(image_source, label)`` records.

    With ``preload_size`` (the eval transform of uint8 arrays at the model size) the whole split is
    converted once; otherwise images are loaded and transformed per item.
    """

    def __init__(self, records: list[Record], transform: Callable, model_cfg: dict | None = None):
        self.records = records
        self.transform = transform
        self.preloaded = _fast_tensor(records, model_cfg) if model_cfg is not None else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if self.preloaded is not None:
            return self.preloaded[i], self.records[i][1], i
        source, label = self.records[i]
        return self.transform(load_image(source)), label, i


def check_files(records: list[Record], what: str) -> None:
    """Raise FileNotFoundError naming the first record whose image file is missing."""
    for source, _ in records:
        if isinstance(source, (str, Path)) and not os.path.isfile(source):
            raise FileNotFoundError(f"missing image file: {source} (in {what})")
