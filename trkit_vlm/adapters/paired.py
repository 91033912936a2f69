"""Paired text/image bottleneck adapters on the blocks' outputs: the family of MMA and AdaRing.

Pair ``k`` joins text layer ``text_layers[k]`` and image layer ``image_layers[k]`` (a shared module
links them). Each adapted ``ResidualAttentionBlock`` gets a forward hook that adds the adapter output
to the block output. The block computes ``x + attn(ln_1(x)) + mlp(ln_2(.))``, so the hook gives MMA's
``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)) + y`` exactly, with ``y = branch(ln_1(x)) * scale`` and
MMA's gradient-scaling rule.
"""

from __future__ import annotations

import torch
from torch import nn

from trkit.errors import InputTypeError
from trkit_vlm.adapters.base import TOWERS, AdapterSet
from trkit_vlm.adapters.config import PairedAdapterConfig, resolve_layers

__all__ = ["PairedAdapterSet", "grad_scale"]


class _GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged in the forward pass; its gradient multiplied by ``scale`` in the backward pass."""
    return _GradScale.apply(x, float(scale))


class PairedAdapterSet(AdapterSet):
    """Adapter sets made of text/image layer pairs, added to the outputs of the paired blocks.

    Subclasses implement ``branch(tower, k, h)``: the adapter body of pair ``k`` on ``h = ln_1(x)``.
    """

    config: PairedAdapterConfig

    def __init__(self, config: PairedAdapterConfig, info: dict[str, dict[str, int]]):
        super().__init__(config, info)
        self.text_layers, self.image_layers = resolve_layers(
            config.text_layers, config.image_layers, info["text"]["depth"], info["image"]["depth"]
        )
        self.input_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    @property
    def n_pairs(self) -> int:
        return len(self.text_layers)

    def layers(self, tower: str) -> list[int]:
        """The adapted 1-based layers of ``tower``, in pair order."""
        return self.text_layers if tower == "text" else self.image_layers

    def adapted_layers(self, tower: str) -> list[int]:
        return list(self.layers(tower))

    def branch(self, tower: str, k: int, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adapter_output(self, tower: str, k: int, x: torch.Tensor, ln_1: nn.Module) -> torch.Tensor:
        """``y = branch(ln_1(x)) * scale`` with MMA's gradient rule.

        The gradient into ``x`` through this branch is multiplied by ``scale`` and the gradient reaching
        the adapter output (before ``* scale``) by ``1/scale``, so the adapter weights learn as if
        ``scale = 1`` while the forward contribution is ``scale`` times smaller.
        """
        s = float(self.config.scale)
        if s == 0.0:
            return self.branch(tower, k, ln_1(x)) * 0.0
        h = self.input_dropout(ln_1(grad_scale(x, s)))
        return grad_scale(self.branch(tower, k, h) * s, 1.0 / s)

    def attach(self, model: nn.Module, towers: dict[str, nn.Module]) -> None:
        """One forward hook on each adapted block, adding the adapter output to the block's output."""
        for tower in TOWERS:
            blocks = towers[tower].resblocks
            for k, layer in enumerate(self.layers(tower)):
                blk = blocks[layer - 1]
                if not hasattr(blk, "ln_1"):
                    raise InputTypeError(
                        f"{tower} block {layer} ({type(blk).__name__}) has no ln_1; "
                        "expected open_clip ResidualAttentionBlock"
                    )
                self.hold(blk.register_forward_hook(_BlockHook(self, tower, k), with_kwargs=True))


class _BlockHook:
    """Forward hook adding the adapter output to a block's output.

    A callable object rather than a closure so ``copy.deepcopy(model)`` re-points it at the copy's adapters.
    """

    def __init__(self, adapters: PairedAdapterSet, tower: str, k: int):
        self.adapters, self.tower, self.k = adapters, tower, k

    def __call__(self, module, args, kwargs, output):
        a = self.adapters
        if not a.enabled:
            return None
        x = args[0] if args else kwargs.get("q_x", kwargs.get("x"))
        return output + a.adapter_output(self.tower, self.k, x, module.ln_1)
