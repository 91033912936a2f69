"""MMAConfig: the Multi-Modal Adapter baseline (ZjjConan/Multi-Modal-Adapter, CVPR 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trkit_vlm.adapters.config import PairedAdapterConfig

__all__ = ["MMAConfig", "mma_param_count"]


@dataclass
class MMAConfig(PairedAdapterConfig):
    """MMA exactly as released: per adapted layer ``down_text d_t->hidden``+ReLU, ``down_image d_v->hidden``
    +ReLU, one ``shared hidden->hidden``+ReLU used by both towers, ``up_text``, ``up_image``.

    Args:
        hidden: bottleneck width (32 in MMA).
        text_layers, image_layers: 1-based inclusive ranges, "all", or None for MMA's placement scaled to depth
            (layers 5..12 of 12-layer towers).
        scale: output scale with the gradient-scaling rule (0.001 in MMA).
    """

    method: ClassVar[str] = "mma"


def mma_param_count(d_text: int, d_image: int, hidden: int, n_layers: int) -> int:
    """Closed form: ``n_layers * [(d_t+1)h + (d_v+1)h + (h+1)h + (h+1)d_t + (h+1)d_v]`` (biases included).

    ViT-B-16 (512, 768, 32, 8 layers): 84,320 per layer, 674,560 in total.
    """
    h = hidden
    per = (d_text + 1) * h + (d_image + 1) * h + (h + 1) * h + (h + 1) * d_text + (h + 1) * d_image
    return n_layers * per
