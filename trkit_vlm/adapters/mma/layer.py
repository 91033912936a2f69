"""The MMA adapter set; parameter names match the official checkpoints
(``text_adapter.{i}.down.0.weight``, ``visual_adapter.{i}.up.bias``, ``shared_adapter.{i}.0.weight``; ``i`` the
1-based layer index), so an official state dict loads directly."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from trkit_vlm.adapters.paired import PairedAdapterSet

__all__ = ["MMAAdapterSet", "shared_key"]


def shared_key(text_layer: int, image_layer: int) -> str:
    """Key of the shared module pairing two layers (the layer index when both towers agree, as in MMA)."""
    return str(text_layer) if text_layer == image_layer else f"{text_layer}_{image_layer}"


def _tower_adapter(d: int, h: int) -> nn.Module:
    return nn.Sequential(OrderedDict([("down", nn.Sequential(nn.Linear(d, h), nn.ReLU())), ("up", nn.Linear(h, d))]))


class MMAAdapterSet(PairedAdapterSet):
    """Dense per-layer adapters of MMA (see ``MMAConfig``)."""

    def __init__(self, config, info):
        super().__init__(config, info)
        h = int(config.hidden)
        dt, dv = info["text"]["width"], info["image"]["width"]
        self.text_adapter = nn.ModuleDict({str(layer): _tower_adapter(dt, h) for layer in self.text_layers})
        self.visual_adapter = nn.ModuleDict({str(layer): _tower_adapter(dv, h) for layer in self.image_layers})
        self.shared_adapter = nn.ModuleDict(
            {
                shared_key(t, v): nn.Sequential(nn.Linear(h, h), nn.ReLU())
                for t, v in zip(self.text_layers, self.image_layers)
            }
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MMA's init: Kaiming normal (fan_out, relu) weights, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def branch(self, tower: str, k: int, h: torch.Tensor) -> torch.Tensor:
        t, v = self.text_layers[k], self.image_layers[k]
        a = self.text_adapter[str(t)] if tower == "text" else self.visual_adapter[str(v)]
        return a.up(self.shared_adapter[shared_key(t, v)](a.down(h)))

    def parts(self) -> dict[str, int]:
        return {
            n: sum(p.numel() for p in m.parameters())
            for n, m in (
                ("text_adapter", self.text_adapter),
                ("visual_adapter", self.visual_adapter),
                ("shared_adapter", self.shared_adapter),
            )
        }
