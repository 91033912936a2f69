"""What one training step computes: the forward of the adapted model as one module (logits and features,
from images or cached prefix tokens), the AMP dtype and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from trkit_vlm.training import prefix_cache as pc
from trkit_vlm.training.config import RunConfig

__all__ = ["TrainForward", "amp_dtype", "cosine_with_warmup"]


class TrainForward(nn.Module):
    """Inputs -> (logits, image features, text features) as one module, so DDP sees one forward."""

    def __init__(
        self,
        model: nn.Module,
        text_ids: torch.Tensor,
        text_states: torch.Tensor | None,
        n_text: int,
        n_image: int,
        split_text: bool,
    ):
        super().__init__()
        self.model = model
        self.text_ids, self.text_states, self.n_text, self.n_image = text_ids, text_states, n_text, n_image
        self.split_text = split_text  # the text tower runs block by block (prompts cut after the EOT)

    def forward(self, x: torch.Tensor, cached: bool):
        m = self.model
        if self.text_states is not None:
            txt = pc.text_suffix(m, self.text_states, self.text_ids, self.n_text)
        elif self.split_text:  # the cut prompts (see Trainer), all blocks each step
            txt = pc.text_suffix(m, pc.text_prefix(m, self.text_ids, 0), self.text_ids, 0)
        else:
            txt = m.encode_text(self.text_ids, normalize=True)
        img = pc.image_suffix(m, x, self.n_image) if cached else m.encode_image(x, normalize=True)
        return m.logit_scale.exp() * img @ txt.t(), img, txt


def amp_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    """bf16/fp16 autocast on CUDA; None (fp32) on CPU whatever the config says."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    return torch.bfloat16 if cfg.amp == "bf16" or torch.cuda.is_bf16_supported() else torch.float16


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_steps``, then cosine from 1 to 0 at ``total_steps``."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        p = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))

    return f
