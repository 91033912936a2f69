"""The linear-probe adapter set: a residual linear map hooked on the image tower's ``ln_post``."""

from __future__ import annotations

import torch
from torch import nn

from trkit.errors import InputTypeError
from trkit_vlm.adapters.base import AdapterSet
from trkit_vlm.adapters.linear_probe.config import LinearProbeConfig

__all__ = ["LinearProbeSet"]


class _ProbeHook:
    """Forward hook on ``visual.ln_post``: ``z -> z + map(z)`` while the set is enabled.

    A callable object (not a closure) so ``copy.deepcopy(model)`` re-points it at the copy's set.
    """

    def __init__(self, aset: LinearProbeSet):
        self.aset = aset

    def __call__(self, module: nn.Module, args, output: torch.Tensor):
        return output + self.aset.map(output) if self.aset.enabled else None


class LinearProbeSet(AdapterSet):
    """``map``: a ``width x width`` linear layer, zero at the start (see :class:`LinearProbeConfig`).

    The hook sits on ``ln_post``, which both the model's forward and the prefix cache's split forward
    run (in ``VisionTransformer._pool``), so the frozen blocks are cached in full and a training step
    costs the map alone. No block is adapted (``adapted_layers`` is empty for both towers).
    """

    config: LinearProbeConfig

    def __init__(self, config: LinearProbeConfig, info: dict[str, dict[str, int]]):
        super().__init__(config, info)
        w = info["image"]["width"]
        self.map = nn.Linear(w, w)
        nn.init.zeros_(self.map.weight)
        nn.init.zeros_(self.map.bias)

    def attach(self, model: nn.Module, towers: dict[str, nn.Module]) -> None:
        ln_post = getattr(getattr(model, "visual", None), "ln_post", None)
        if not isinstance(ln_post, nn.Module):
            raise InputTypeError("the linear probe needs an open_clip VisionTransformer (visual.ln_post)")
        self.hold(ln_post.register_forward_hook(_ProbeHook(self)))
