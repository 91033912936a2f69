"""Scoring many models on one fixed set of images, with the frozen image prefix computed once.

A benchmark scores every method and seed of a task on the same test images. The image blocks before a
model's first adapted block do not depend on its adapters, so their output (the prefix tokens) is
computed once per image set and each model runs only the rest of its image tower. The images are
batched exactly as :func:`~trkit_vlm.evaluation.evaluate.evaluate_base_novel` batches them and each
batch goes through the same operations, so the features, and the accuracies, are the ones it gives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from trkit.errors import InputError
from trkit_vlm.data.datasets import ClassificationData
from trkit_vlm.data.transforms import ImageDataset, build_transforms, preprocess_config
from trkit_vlm.evaluation.evaluate import base_novel_scores, evaluate_base_novel, text_features
from trkit_vlm.training import prefix_cache as pc

__all__ = ["PrefixEvaluator"]


class PrefixEvaluator:
    """``evaluator(model)`` gives base / novel / HM / all accuracy (%) of ``model`` on ``data``'s scored images.

    Args:
        model: the frozen backbone every scored model shares (adapters, if any, only after ``n_layers``).
        tokenizer, template: for the class prompts (``data.classnames``).
        data: the task; its ``split`` records are scored.
        n_layers: image blocks in the shared prefix (the first adapted block of the methods, minus one).
        batch_size: images per batch (``optim.eval_batch_size`` of the runs, for identical features).

    A model whose image tower cannot be split (a hook outside the blocks that the split forward does not
    run) is scored by ``evaluate_base_novel`` itself; one adapted at or before ``n_layers`` is refused.
    Deeper frozen prefixes (zero-shot, a head on the features) are computed once from the shared one.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable,
        data: ClassificationData,
        template: str,
        n_layers: int,
        batch_size: int = 100,
        split: str = "test",
    ):
        self.tokenizer, self.data, self.template, self.split, self.batch_size = (
            tokenizer,
            data,
            template,
            split,
            batch_size,
        )
        self.n_layers = int(n_layers)
        self._backbone = next(model.visual.parameters())  # scored models must share it (same frozen prefix)
        records = data.split(split)
        if not records:
            raise InputError(f"cannot evaluate an empty {split} split")
        _, transform = build_transforms(model, augment=False)
        ds = ImageDataset(records, transform, preprocess_config(model))
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
        device = self._backbone.device
        was_training = model.training
        model.eval()
        tokens, labels = [], []
        try:
            with torch.no_grad():
                for x, y, _ in loader:
                    tokens.append(pc.image_prefix(model, x.to(device), self.n_layers))
                    labels.append(y)
        finally:
            model.train(was_training)
        self.labels = torch.cat(labels)
        self._tokens: dict[int, list[torch.Tensor]] = {self.n_layers: tokens}

    def _prefix(self, model: nn.Module, n: int) -> list[torch.Tensor]:
        """Per-batch tokens after ``n`` frozen blocks (blocks beyond the shared prefix run once, then kept)."""
        if n not in self._tokens:
            base = self._tokens[self.n_layers]
            with torch.no_grad():
                self._tokens[n] = [pc.run_blocks(model, "image", t, self.n_layers, n) for t in base]
        return self._tokens[n]

    def __call__(self, model: nn.Module) -> dict[str, float]:
        if next(model.visual.parameters()) is not self._backbone:
            raise InputError("PrefixEvaluator scores models of the backbone it was built with; this is another one")
        if pc.image_prefix_supported(model) is not None:  # e.g. a head on model.visual: the full forward
            return evaluate_base_novel(
                model, self.tokenizer, self.data, self.template, batch_size=self.batch_size, split=self.split
            )
        n = pc.first_adapted_layer(model, "image") - 1
        if n < self.n_layers:
            raise InputError(
                f"the model adapts image block {n + 1}, inside the cached prefix of {self.n_layers} blocks"
            )
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                img = torch.cat([pc.image_suffix(model, t, n).float() for t in self._prefix(model, n)])
            txt = text_features(model, self.tokenizer, self.data.classnames, self.template)
        finally:
            model.train(was_training)
        return base_novel_scores(img, self.labels, txt)
