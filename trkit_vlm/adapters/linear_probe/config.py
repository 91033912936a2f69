"""LinearProbeConfig: a linear map on the frozen image features, started at zero-shot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trkit_vlm.adapters.config import AdapterConfig

__all__ = ["LinearProbeConfig", "linear_probe_param_count"]


@dataclass
class LinearProbeConfig(AdapterConfig):
    """A linear probe for CLIP that starts at zero-shot: a residual linear map ``z -> z + W z + b`` on the
    image tower's final normalised tokens (``ln_post``'s output, before the projection), with ``W`` and
    ``b`` zero at the start; the backbone is frozen and the classifier is the frozen text features.

    It is logistic regression on the frozen image features with the class weights tied to the zero-shot
    text weights: class ``c`` scores ``<P(z + W z + b), t_c>`` (``P`` the projection, features normalised),
    i.e. weights ``(I + W)ᵀ Pᵀ t_c`` shared through one map. Novel classes, never trained on, are scored
    through the same map with their own zero-shot text features (and weight decay pulls ``W`` back
    towards zero-shot).

    No fields: its size is fixed by the image tower's width (``width² + width`` parameters).
    """

    method: ClassVar[str] = "linear_probe"


def linear_probe_param_count(info: dict[str, dict[str, int]]) -> int:
    """``width² + width`` of the image tower."""
    w = info["image"]["width"]
    return w * w + w
