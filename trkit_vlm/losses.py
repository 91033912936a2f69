"""Generalization-aware fine-tuning loss (as in KgCoOp / PromptSRC) and a frozen-text-feature cache.

``L = CE(logits, y) + lambda_text * mean(1 - cos(t, t_frozen)) + lambda_image * L1(f, f_frozen)``,
frozen features computed by the same model with its adapters switched off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trkit.errors import InputError
from trkit_vlm.adapters.base import adapters_disabled
from trkit_vlm.models import encode_text

__all__ = ["GeneralizationAwareLoss", "FrozenTextCache", "frozen_image_features"]


class GeneralizationAwareLoss(nn.Module):
    """Cross-entropy plus consistency with the frozen model.

    Args:
        lambda_text: weight of ``mean_c(1 - cos(t_c, t_frozen_c))`` over class text features (KgCoOp uses 8).
        lambda_image: weight of the mean absolute difference of image features (PromptSRC uses 10).
        label_smoothing: passed to cross-entropy.
    A weight of 0 switches its term off; its frozen features may then be None.
    """

    def __init__(self, lambda_text: float = 8.0, lambda_image: float = 10.0, label_smoothing: float = 0.0):
        super().__init__()
        for n, v in (("lambda_text", lambda_text), ("lambda_image", lambda_image)):
            if v < 0:
                raise InputError(f"{n} must be >= 0, got {v}")
        self.lambda_text, self.lambda_image = float(lambda_text), float(lambda_image)
        self.label_smoothing = float(label_smoothing)

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        text_feat: torch.Tensor | None = None,
        text_feat_frozen: torch.Tensor | None = None,
        image_feat: torch.Tensor | None = None,
        image_feat_frozen: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args: logits ``(B, C)``, labels ``(B,)``, text features ``(C, D)``, image features ``(B, D)``.

        Returns ``(total, parts)``; ``parts`` holds detached ``ce``, ``text``, ``image``, ``total``.
        """
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        total = ce
        zero = ce.detach() * 0
        parts = {"ce": ce.detach(), "text": zero, "image": zero}
        if self.lambda_text > 0:
            _need(text_feat, text_feat_frozen, "text", "lambda_text")
            t = (1.0 - F.cosine_similarity(text_feat, text_feat_frozen.detach(), dim=-1)).mean()
            total = total + self.lambda_text * t
            parts["text"] = t.detach()
        if self.lambda_image > 0:
            _need(image_feat, image_feat_frozen, "image", "lambda_image")
            v = F.l1_loss(image_feat, image_feat_frozen.detach())
            total = total + self.lambda_image * v
            parts["image"] = v.detach()
        parts["total"] = total.detach()
        return total, parts


def _need(a, b, what: str, weight: str) -> None:
    if a is None or b is None:
        raise InputError(f"{weight} > 0 needs both {what}_feat and {what}_feat_frozen (set {weight}=0 to skip)")
    if a.shape != b.shape:
        raise InputError(f"{what}_feat {tuple(a.shape)} and {what}_feat_frozen {tuple(b.shape)} differ in shape")


class FrozenTextCache:
    """Text features of the frozen model (adapters off), computed once per class list and template.

    ``cache(classnames) -> (C, D)`` L2-normalised, no gradient.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable, template: str = "a photo of a {}."):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self._store: dict[tuple, torch.Tensor] = {}

    def __call__(self, classnames: Sequence[str]) -> torch.Tensor:
        key = (tuple(classnames), self.template)
        if key not in self._store:
            with torch.no_grad(), adapters_disabled(self.model):
                self._store[key] = encode_text(self.model, self.tokenizer, list(classnames), self.template)
        return self._store[key]

    def clear(self) -> None:
        self._store.clear()


def frozen_image_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised image features ``(B, D)`` of the frozen model (adapters off), no gradient."""
    with torch.no_grad(), adapters_disabled(model):
        return model.encode_image(images, normalize=True)
