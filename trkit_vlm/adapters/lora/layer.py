"""The LoRA adapter set: a low-rank update on the attention projections of open_clip's blocks.

open_clip's blocks use ``nn.MultiheadAttention``, whose query, key and value weights are one packed
``(3d, d)`` parameter. The set replaces the forward of each adapted attention module (an instance
attribute, removed again on detach, so the state-dict keys and the frozen weights stay as they are) by
:func:`attention_forward`, which computes the packed projection with the frozen weights and adds the
low-rank updates to the query, key, value (and output) projections; the frozen weights are never copied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trkit.errors import InputError, InputTypeError
from trkit_vlm.adapters.base import AdapterSet
from trkit_vlm.adapters.lora.config import LoRAConfig

__all__ = ["LoRAAdapterSet", "LowRankUpdate", "attention_forward"]


class LowRankUpdate(nn.Module):
    """``x -> scaling · dropout(x) Aᵀ Bᵀ``, ``A`` ``(rank, d_in)``, ``B`` ``(d_out, rank)``; ``B`` starts at zero."""

    def __init__(self, d_in: int, d_out: int, rank: int, scaling: float, dropout: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # loralib / peft

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.dropout(x), self.A), self.B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``scaling · B A`` ``(d_out, d_in)`` (for tests and merging)."""
        return self.scaling * self.B @ self.A


def attention_forward(
    attn: nn.MultiheadAttention,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    updates: dict[str, nn.Module] | None = None,
) -> torch.Tensor:
    """Self-attention of ``attn`` on ``x`` with optional additive updates of its projections.

    Computes what ``attn(x, x, x, need_weights=False, attn_mask=attn_mask)[0]`` computes (packed input
    projection, scaled dot-product attention, output projection), plus ``updates[t](input of t)`` added to
    projection ``t`` in ``"q", "k", "v", "o"``.

    Args:
        x: ``(N, L, d)`` when ``attn.batch_first`` else ``(L, N, d)``.
        attn_mask: ``(L, L)`` float (added to the scores) or bool (True = not allowed), as for ``attn``.
    """
    if not attn.batch_first:
        x = x.transpose(0, 1)
    n, length, d = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    if updates:
        q = q + updates["q"](x) if "q" in updates else q
        k = k + updates["k"](x) if "k" in updates else k
        v = v + updates["v"](x) if "v" in updates else v
    q, k, v = (t.reshape(n, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = ~attn_mask  # nn.MultiheadAttention: True = masked; scaled_dot_product_attention: True = kept
    drop = attn.dropout if attn.training else 0.0
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
    o = o.transpose(1, 2).reshape(n, length, d)
    out = F.linear(o, attn.out_proj.weight, attn.out_proj.bias)
    if updates and "o" in updates:
        out = out + updates["o"](o)
    return out if attn.batch_first else out.transpose(0, 1)


class _PatchedAttention:
    """Instance-level ``forward`` of one adapted ``nn.MultiheadAttention``: the frozen module plus its updates.

    A callable object (not a closure) so ``copy.deepcopy(model)`` re-points it at the copy's modules.
    """

    def __init__(self, aset: LoRAAdapterSet, attn: nn.MultiheadAttention, key: str):
        self.aset, self.attn, self.key = aset, attn, key

    def __call__(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        attn = self.attn
        if not self.aset.enabled:
            return type(attn).forward(
                attn, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        if not (query is key is value) or key_padding_mask is not None or is_causal:
            raise InputError("LoRA supports self-attention without key padding masks (open_clip's blocks)")
        out = attention_forward(attn, query, attn_mask, self.aset.updates[self.key])
        return out, None


class _Unpatch:
    """Handle that removes the instance-level forward again (``AdapterSet.hold`` needs ``.remove()``)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


class LoRAAdapterSet(AdapterSet):
    """Low-rank updates of the attention projections (see :class:`LoRAConfig`).

    ``updates[f"{tower}{layer}"][t]`` is the :class:`LowRankUpdate` of projection ``t`` in that block.
    """

    config: LoRAConfig

    def __init__(self, config: LoRAConfig, info: dict[str, dict[str, int]]):
        super().__init__(config, info)
        self._layers = config.layers(info)
        scaling = float(config.alpha) / config.rank
        self.updates = nn.ModuleDict()
        for tower, layers in self._layers.items():
            d = info[tower]["width"]
            for layer in layers:
                self.updates[f"{tower}{layer}"] = nn.ModuleDict(
                    {t: LowRankUpdate(d, d, config.rank, scaling, config.dropout) for t in config.targets}
                )

    def adapted_layers(self, tower: str) -> list[int]:
        return list(self._layers.get(tower, []))

    def attach(self, model: nn.Module, towers: dict[str, nn.Module]) -> None:
        for tower, layers in self._layers.items():
            for layer in layers:
                attn = getattr(towers[tower].resblocks[layer - 1], "attn", None)
                if not isinstance(attn, nn.MultiheadAttention):
                    raise InputTypeError(
                        f"LoRA needs nn.MultiheadAttention in {tower} block {layer}, got {type(attn).__name__}"
                    )
                if not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
                    raise InputTypeError(f"LoRA needs the packed in_proj_weight ({tower} block {layer})")
                attn.forward = _PatchedAttention(self, attn, f"{tower}{layer}")
                self.hold(_Unpatch(attn))
