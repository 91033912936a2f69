"""Generalization-aware fine-tuning losses (KgCoOp, PromptSRC) and the frozen model's features they compare with.

``L = CE(logits, y)``
``  + lambda_text    * mean_c(1 - cos(t_c, t0_c))``       KgCoOp's text consistency
``  + lambda_text_l1 * mean |t - t0|``                      PromptSRC's text L1 (its weight: 25)
``  + lambda_image   * mean |f - f0|``                      PromptSRC's image L1 (its weight: 10)
``  + lambda_logits  * KL(softmax(z0 / T) || softmax(z / T)) T^2``   PromptSRC's logit consistency (weight 1)

``t``, ``f``, ``z``: the adapted model's L2-normalised class text features, image features and logits;
``t0``, ``f0``: the same model with its adapters switched off (``adapters_disabled``), text features
averaged over prompt templates (:func:`frozen_text_features`: PromptSRC averages the raw features of
many templates, then normalises); ``z0 = logit_scale * f0 @ t0^T`` the frozen model's logits. The KL
sum is divided by ``B * C`` (PromptSRC's normalisation). A weight of 0 switches a term off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trkit.errors import InputError
from trkit_vlm.adapters.base import adapters_disabled

__all__ = [
    "GeneralizationAwareLoss",
    "FrozenTextCache",
    "logit_kl",
    "frozen_text_features",
    "frozen_image_features",
]


class GeneralizationAwareLoss(nn.Module):
    """Cross-entropy plus consistency with the frozen model (module docs).

    Args:
        lambda_text: weight of KgCoOp's ``mean_c(1 - cos(t_c, t0_c))`` (KgCoOp uses 8).
        lambda_image: weight of PromptSRC's image-feature L1 (PromptSRC uses 10).
        lambda_text_l1: weight of PromptSRC's text-feature L1 (PromptSRC uses 25).
        lambda_logits: weight of PromptSRC's KL from the frozen logits (PromptSRC uses 1).
        temperature: ``T`` of the KL term.
        label_smoothing: passed to cross-entropy.
    A weight of 0 switches its term off; the frozen features it needs may then be None.
    """

    def __init__(
        self,
        lambda_text: float = 8.0,
        lambda_image: float = 10.0,
        label_smoothing: float = 0.0,
        lambda_text_l1: float = 0.0,
        lambda_logits: float = 0.0,
        temperature: float = 1.0,
    ):
        super().__init__()
        weights = {
            "lambda_text": lambda_text,
            "lambda_image": lambda_image,
            "lambda_text_l1": lambda_text_l1,
            "lambda_logits": lambda_logits,
        }
        for n, v in weights.items():
            if v < 0:
                raise InputError(f"{n} must be >= 0, got {v}")
        if not temperature > 0:
            raise InputError(f"temperature must be > 0, got {temperature}")
        self.lambda_text, self.lambda_image = float(lambda_text), float(lambda_image)
        self.lambda_text_l1, self.lambda_logits = float(lambda_text_l1), float(lambda_logits)
        self.temperature, self.label_smoothing = float(temperature), float(label_smoothing)

    @property
    def needs_frozen_text(self) -> bool:
        return self.lambda_text > 0 or self.lambda_text_l1 > 0 or self.lambda_logits > 0

    @property
    def needs_frozen_image(self) -> bool:
        return self.lambda_image > 0 or self.lambda_logits > 0

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        text_feat: torch.Tensor | None = None,
        text_feat_frozen: torch.Tensor | None = None,
        image_feat: torch.Tensor | None = None,
        image_feat_frozen: torch.Tensor | None = None,
        logit_scale: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args: logits ``(B, C)``, labels ``(B,)``, text features ``(C, D)``, image features ``(B, D)``,
        ``logit_scale`` the (exponentiated) scale of the frozen logits (needed by ``lambda_logits``).

        Returns ``(total, parts)``; ``parts`` holds the detached unweighted terms ``ce``, ``text``,
        ``text_l1``, ``image``, ``logits`` and the weighted ``total``.
        """
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        zero = ce.detach() * 0
        parts = {"ce": ce.detach(), "text": zero, "text_l1": zero, "image": zero, "logits": zero}
        terms = []
        if self.lambda_text > 0:
            t, t0 = _need(text_feat, text_feat_frozen, "text", "lambda_text")
            terms.append(("text", self.lambda_text, (1.0 - F.cosine_similarity(t, t0, dim=-1)).mean()))
        if self.lambda_text_l1 > 0:
            t, t0 = _need(text_feat, text_feat_frozen, "text", "lambda_text_l1")
            terms.append(("text_l1", self.lambda_text_l1, F.l1_loss(t, t0)))
        if self.lambda_image > 0:
            f, f0 = _need(image_feat, image_feat_frozen, "image", "lambda_image")
            terms.append(("image", self.lambda_image, F.l1_loss(f, f0)))
        if self.lambda_logits > 0:
            _need(image_feat_frozen, image_feat_frozen, "image", "lambda_logits")
            _need(text_feat_frozen, text_feat_frozen, "text", "lambda_logits")
            if logit_scale is None:
                raise InputError("lambda_logits > 0 needs logit_scale (the frozen model's exp(logit_scale))")
            z0 = logit_scale * image_feat_frozen.detach() @ text_feat_frozen.detach().t()
            if z0.shape != logits.shape:
                raise InputError(f"frozen logits {tuple(z0.shape)} and logits {tuple(logits.shape)} differ in shape")
            terms.append(("logits", self.lambda_logits, logit_kl(logits, z0, self.temperature)))
        total = ce
        for name, weight, value in terms:
            total = total + weight * value
            parts[name] = value.detach()
        parts["total"] = total.detach()
        return total, parts


def logit_kl(logits: torch.Tensor, frozen_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """PromptSRC's ``sum KL(softmax(z0 / T) || softmax(z / T)) * T^2 / (B * C)`` for logits ``(B, C)``."""
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(logits / t, dim=-1),
        F.log_softmax(frozen_logits.detach() / t, dim=-1),
        reduction="sum",
        log_target=True,
    )
    return kl * (t * t) / logits.numel()


def _need(a, b, what: str, weight: str) -> tuple[torch.Tensor, torch.Tensor]:
    if a is None or b is None:
        raise InputError(f"{weight} > 0 needs both {what}_feat and {what}_feat_frozen (set {weight}=0 to skip)")
    if a.shape != b.shape:
        raise InputError(f"{what}_feat {tuple(a.shape)} and {what}_feat_frozen {tuple(b.shape)} differ in shape")
    return a, b.detach()


@torch.no_grad()
def frozen_text_features(
    model: nn.Module, tokenizer: Callable, classnames: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """Class text features ``(C, D)`` of the frozen model (adapters off): the raw text features of every
    template averaged, then L2-normalised (PromptSRC's ensemble; one template gives the usual features)."""
    if isinstance(classnames, str):
        raise InputError("classnames must be a list of strings, not one string")
    device = next(model.parameters()).device
    total = None
    with adapters_disabled(model):
        for template in templates:
            tokens = tokenizer([template.format(c.replace("_", " ")) for c in classnames]).to(device)
            feat = model.encode_text(tokens, normalize=False).float()
            total = feat if total is None else total + feat
    return F.normalize(total / len(templates), dim=-1)


class FrozenTextCache:
    """Text features of the frozen model (adapters off), computed once per class list.

    ``cache(classnames) -> (C, D)`` L2-normalised, no gradient; ``templates`` (several: averaged as in
    :func:`frozen_text_features`) defaults to ``[template]``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable,
        template: str = "a photo of a {}.",
        templates: Sequence[str] | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.templates = tuple(templates) if templates is not None else (template,)
        self._store: dict[tuple, torch.Tensor] = {}

    def __call__(self, classnames: Sequence[str]) -> torch.Tensor:
        key = tuple(classnames)
        if key not in self._store:
            self._store[key] = frozen_text_features(self.model, self.tokenizer, list(classnames), self.templates)
        return self._store[key]

    def clear(self) -> None:
        self._store.clear()


def frozen_image_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised image features ``(B, D)`` of the frozen model (adapters off), no gradient."""
    with torch.no_grad(), adapters_disabled(model):
        return model.encode_image(images, normalize=True)
