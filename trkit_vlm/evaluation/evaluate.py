"""Zero-shot-style evaluation of a (possibly adapted) CLIP: accuracy, base-to-novel and HM.

Text features are computed once per class list; image features once per test split, then scored
against each class list (base, novel, all), so a base-to-novel evaluation reads every test image once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from trkit.errors import InputError
from trkit_vlm.data.datasets import ClassificationData, Record
from trkit_vlm.data.fewshot import base_novel_split
from trkit_vlm.data.transforms import ImageDataset, build_transforms, preprocess_config
from trkit_vlm.models import encode_text


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2·B·N / (B + N) (0 when both are 0)."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def text_features(
    model: nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    template: str = "a photo of a {}.",
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """L2-normalised class text features ``(C, D)`` (float32)."""
    device = _device(model)
    with _autocast(device, amp_dtype):
        return encode_text(model, tokenizer, list(classnames), template=template, device=device).float()


@torch.no_grad()
def image_features(
    model: nn.Module,
    records: list[Record],
    transform: Callable | None = None,
    batch_size: int = 100,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image features ``(N, D)`` (float32) and labels ``(N,)`` of ``records``."""
    device = _device(model)
    if transform is None:
        transform = build_transforms(model, augment=False)[1]
    ds = ImageDataset(records, transform, preprocess_config(model))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=0 if ds.preloaded is not None else num_workers
    )
    feats, labels = [], []
    for x, y, _ in loader:
        with _autocast(device, amp_dtype):
            feats.append(model.encode_image(x.to(device), normalize=True).float().cpu())
        labels.append(y)
    if not feats:
        raise InputError("cannot evaluate an empty split")
    return torch.cat(feats), torch.cat(labels)


def accuracy_from_features(img: torch.Tensor, labels: torch.Tensor, txt: torch.Tensor) -> float:
    """Top-1 accuracy in percent of cosine-similarity classification (``img`` ``(N, D)``, ``txt`` ``(C, D)``)."""
    pred = (img @ txt.to(img.device, img.dtype).t()).argmax(dim=1)
    return 100.0 * (pred == labels.to(pred.device)).float().mean().item()


def evaluate(
    model: nn.Module,
    tokenizer: Callable,
    data_split: list[Record],
    classnames: Sequence[str],
    template: str = "a photo of a {}.",
    batch_size: int = 100,
    transform: Callable | None = None,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Top-1 accuracy (%) of ``model`` on ``data_split`` (labels index ``classnames``)."""
    was_training = model.training
    model.eval()
    try:
        txt = text_features(model, tokenizer, classnames, template, amp_dtype)
        img, labels = image_features(model, data_split, transform, batch_size, num_workers, amp_dtype)
    finally:
        model.train(was_training)
    return accuracy_from_features(img, labels, txt)


def evaluate_base_novel(
    model: nn.Module,
    tokenizer: Callable,
    data: ClassificationData,
    template: str = "a photo of a {}.",
    batch_size: int = 100,
    split: str = "test",
    transform: Callable | None = None,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Base, novel, HM and all-class accuracy (%) on ``data`` with all its classes.

    Base/novel follow CoOp: base = labels ``< ceil(n/2)``, each subset classified among its own
    classes only; ``all`` classifies every test image among all ``n`` classes.
    """
    was_training = model.training
    model.eval()
    try:
        img, labels = image_features(model, data.split(split), transform, batch_size, num_workers, amp_dtype)
        txt = text_features(model, tokenizer, data.classnames, template, amp_dtype)
    finally:
        model.train(was_training)
    return base_novel_scores(img, labels, txt)


def base_novel_scores(img: torch.Tensor, labels: torch.Tensor, txt: torch.Tensor) -> dict[str, float]:
    """Base, novel, HM and all-class accuracy (%) from features: ``img`` ``(N, D)``, ``labels`` ``(N,)``,
    ``txt`` ``(C, D)`` (one row per class, in label order; base = the first ``ceil(C/2)``)."""
    base, novel = base_novel_split([str(c) for c in range(len(txt))])
    out = {"all": accuracy_from_features(img, labels, txt)}
    for name, labs in (("base", base), ("novel", novel)):
        mask = labels < len(base) if name == "base" else labels >= len(base)
        if not labs or not bool(mask.any()):
            continue
        # Scoring against the subset's own text features = CoOp's relabelled subset evaluation.
        out[name] = accuracy_from_features(img[mask], labels[mask] - labs[0], txt[labs[0] : labs[-1] + 1])
        out[f"n_{name}"] = int(mask.sum())
    if "base" in out and "novel" in out:
        out["hm"] = harmonic_mean(out["base"], out["novel"])
    return out
