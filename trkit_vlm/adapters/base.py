"""Wrapping an open_clip CLIP with adapters: placement, freezing, the gradient-scaling rule, hooks.

Adapters are attached peft-style without forking open_clip: the adapter parameters live in one
submodule ``model.trkit_adapters`` and each chosen ``ResidualAttentionBlock`` gets a forward hook that
adds the adapter output to the block output. The block computes ``x + attn(ln_1(x)) + mlp(ln_2(.))``,
so the hook gives MMA's ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)) + y`` exactly, and the
backbone's state-dict keys stay unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trkit.errors import InputError, InputTypeError
from trkit_vlm.models import tower_info

__all__ = [
    "ADAPTER_ATTR",
    "AdapterConfig",
    "AdapterSet",
    "grad_scale",
    "default_layers",
    "resolve_layers",
    "add_adapters",
    "remove_adapters",
    "adapters_disabled",
    "get_adapters",
    "adapter_parameters",
    "adapter_state_dict",
    "count_trainable",
    "trainable_summary",
    "adapter_regularization",
]

ADAPTER_ATTR = "trkit_adapters"
TOWERS = ("text", "image")


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


# ----------------------------------------------------------------------------------- configuration

LayerSpec = Any  # None | (start, end) 1-based inclusive | "5-12" | "5..12"


def _normalise_spec(spec: LayerSpec, name: str) -> list[int] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-|\.\.|:)\s*(\d+)\s*", spec)
        if not m:
            raise InputError(f"{name}={spec!r}: expected 'START-END' or 'START..END' (1-based, inclusive)")
        return [int(m.group(1)), int(m.group(2))]
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(isinstance(v, int) for v in spec):
        return [int(spec[0]), int(spec[1])]
    raise InputError(f"{name}={spec!r}: expected None or a 1-based inclusive range (start, end)")


def default_layers(depth_text: int, depth_image: int) -> tuple[list[int], list[int]]:
    """MMA placement scaled to depth: the last ``round(2/3 * min depth)`` layers of each tower.

    12-layer towers give layers 5..12 (MMA). Both towers get the same count because MMA's shared
    module pairs one text layer with one image layer.
    """
    n = max(1, round(2 * min(depth_text, depth_image) / 3))
    return (list(range(depth_text - n + 1, depth_text + 1)), list(range(depth_image - n + 1, depth_image + 1)))


def resolve_layers(
    text_spec: LayerSpec, image_spec: LayerSpec, depth_text: int, depth_image: int
) -> tuple[list[int], list[int]]:
    """1-based layer lists for both towers from the config's specs; clear errors when out of range."""
    dt, di = default_layers(depth_text, depth_image)
    out = []
    for tower, spec, depth, dflt in (("text", text_spec, depth_text, dt), ("image", image_spec, depth_image, di)):
        rng = _normalise_spec(spec, f"{tower}_layers")
        if rng is None:
            out.append(dflt)
            continue
        a, b = rng
        if not 1 <= a <= b <= depth:
            raise InputError(
                f"{tower}_layers {a}..{b} is outside the {tower} tower's {depth} layers "
                f"(valid: 1 <= start <= end <= {depth}, 1-based)"
            )
        out.append(list(range(a, b + 1)))
    if len(out[0]) != len(out[1]):
        raise InputError(
            f"text_layers ({len(out[0])} layers) and image_layers ({len(out[1])} layers) must have "
            "the same length: the shared module pairs one text layer with one image layer"
        )
    return out[0], out[1]


@dataclass
class AdapterConfig:
    """Fields common to every adapter method (placement, hidden width, output scale)."""

    hidden: int = 32
    text_layers: LayerSpec = None
    image_layers: LayerSpec = None
    scale: float = 0.001

    method: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.text_layers = _normalise_spec(self.text_layers, "text_layers")
        self.image_layers = _normalise_spec(self.image_layers, "image_layers")
        if int(self.hidden) < 1:
            raise InputError(f"hidden must be >= 1, got {self.hidden}")
        if not isinstance(self.scale, (int, float)) or self.scale < 0:
            raise InputError(f"scale must be a number >= 0, got {self.scale!r}")

    def to_dict(self) -> dict:
        """JSON-friendly dict; ``adapter_config_from_dict`` inverts it."""
        return dataclasses.asdict(self)

    def build(self, info: dict[str, dict[str, int]]) -> AdapterSet:
        """The adapter module for towers described by ``info`` (see ``trkit_vlm.models.tower_info``)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------- adapter modules


class AdapterSet(nn.Module):
    """Base of all adapter sets: layer pairs and the MMA input/scale/gradient rule.

    Subclasses implement ``branch(tower, k, h)``: the adapter body for pair ``k`` on ``h = ln_1(x)``.
    """

    def __init__(self, config: AdapterConfig, info: dict[str, dict[str, int]]):
        super().__init__()
        self.config = config
        self.info = {t: dict(v) for t, v in info.items()}
        self.text_layers, self.image_layers = resolve_layers(
            config.text_layers, config.image_layers, info["text"]["depth"], info["image"]["depth"]
        )
        self.enabled = True
        self._handles: list = []
        self._orig_requires_grad: dict[str, bool] = {}

    @property
    def n_pairs(self) -> int:
        return len(self.text_layers)

    def layers(self, tower: str) -> list[int]:
        return self.text_layers if tower == "text" else self.image_layers

    def branch(self, tower: str, k: int, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adapter_output(self, tower: str, k: int, x: torch.Tensor, ln_1: nn.Module) -> torch.Tensor:
        """``y = up(shared(down(ln_1(x)))) * scale`` with MMA's gradient rule.

        The gradient into ``x`` through this branch is multiplied by ``scale`` and the gradient reaching
        the adapter output (before ``* scale``) by ``1/scale``, so the adapter weights learn as if
        ``scale = 1`` while the forward contribution is ``scale`` times smaller.
        """
        s = float(self.config.scale)
        if s == 0.0:
            return self.branch(tower, k, ln_1(x)) * 0.0
        h = ln_1(grad_scale(x, s))
        return grad_scale(self.branch(tower, k, h) * s, 1.0 / s)

    def tower_pre_forward(self, tower: str) -> None:
        """Called before each forward pass of a tower while adapters are enabled (per-pass caches)."""

    def tower_post_forward(self, tower: str) -> None:
        """Called after each forward pass of a tower (drop per-pass caches)."""

    def regularization(self) -> torch.Tensor:
        """Extra loss term of the method (0 when it has none)."""
        p = next(self.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)

    def parts(self) -> dict[str, int]:
        """Parameter count per named part, for ``trainable_summary``."""
        out: dict[str, int] = {}
        for name, p in self.named_parameters():
            key = name.split(".")[0]
            out[key] = out.get(key, 0) + p.numel()
        return out


class _TowerHook:
    """Forward pre-hook on a tower's transformer: lets the adapter set prepare per-pass state."""

    def __init__(self, adapters: AdapterSet, tower: str):
        self.adapters, self.tower = adapters, tower

    def __call__(self, module, args, *output):
        if output:  # registered as forward hook too: the pass is over
            self.adapters.tower_post_forward(self.tower)
        elif self.adapters.enabled:
            self.adapters.tower_pre_forward(self.tower)


class _BlockHook:
    """Forward hook adding the adapter output to a block's output.

    A callable object rather than a closure so ``copy.deepcopy(model)`` re-points it at the copy's adapters.
    """

    def __init__(self, adapters: AdapterSet, tower: str, k: int):
        self.adapters, self.tower, self.k = adapters, tower, k

    def __call__(self, module, args, kwargs, output):
        a = self.adapters
        if not a.enabled:
            return None
        x = args[0] if args else kwargs.get("q_x", kwargs.get("x"))
        return output + a.adapter_output(self.tower, self.k, x, module.ln_1)


# ------------------------------------------------------------------------------------- entry points


def get_adapters(model: nn.Module) -> AdapterSet | None:
    """The model's adapter set, or None."""
    return getattr(model, ADAPTER_ATTR, None)


def _require(model: nn.Module) -> AdapterSet:
    a = get_adapters(model)
    if a is None:
        raise InputError("model has no trkit adapters; call trkit_vlm.add_adapters(model, config) first")
    return a


def add_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Insert adapters into both towers' residual blocks and freeze everything else (in place).

    Args:
        model: an open_clip ViT-style CLIP.
        config: ``MMAConfig`` or ``AdaRingConfig``.
    Returns:
        the same model, with ``model.trkit_adapters`` holding the only trainable parameters.
    """
    from trkit_vlm.models import clip_towers

    if not isinstance(config, AdapterConfig):
        raise InputTypeError(f"config must be an MMAConfig or AdaRingConfig, got {type(config).__name__}")
    if get_adapters(model) is not None:
        raise InputError("model already has adapters; call trkit_vlm.remove_adapters(model) first")
    towers = clip_towers(model)
    aset = config.build(tower_info(model))
    ref = next(iter(towers["image"].resblocks[0].parameters()))
    aset.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    aset._orig_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    model.add_module(ADAPTER_ATTR, aset)
    for p in aset.parameters():
        p.requires_grad_(True)
    for tower in TOWERS:
        aset._handles.append(towers[tower].register_forward_pre_hook(_TowerHook(aset, tower)))
        aset._handles.append(towers[tower].register_forward_hook(_TowerHook(aset, tower)))
        blocks = towers[tower].resblocks
        for k, layer in enumerate(aset.layers(tower)):
            blk = blocks[layer - 1]
            if not hasattr(blk, "ln_1"):
                raise InputTypeError(
                    f"{tower} block {layer} ({type(blk).__name__}) has no ln_1; "
                    "expected open_clip ResidualAttentionBlock"
                )
            aset._handles.append(blk.register_forward_hook(_BlockHook(aset, tower, k), with_kwargs=True))
    return model


def remove_adapters(model: nn.Module) -> nn.Module:
    """Undo ``add_adapters``: hooks and adapter parameters removed, requires_grad flags restored."""
    aset = _require(model)
    for h in aset._handles:
        h.remove()
    aset._handles = []
    delattr(model, ADAPTER_ATTR)
    for n, p in model.named_parameters():
        p.requires_grad_(aset._orig_requires_grad.get(n, True))
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside this context the adapted model computes exactly the frozen backbone."""
    aset = get_adapters(model)
    if aset is None:
        yield model
        return
    prev = aset.enabled
    aset.enabled = False
    try:
        yield model
    finally:
        aset.enabled = prev


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (what the optimiser should get)."""
    return list(_require(model).parameters())


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors only (detached copies), keyed as inside ``model.trkit_adapters``."""
    return {k: v.detach().clone() for k, v in _require(model).state_dict().items()}


def adapter_regularization(model: nn.Module) -> torch.Tensor:
    """The method's regulariser from the latest forward pass (AdaRing diversity; 0 otherwise)."""
    return _require(model).regularization()


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


_TEXT_PREFIXES = ("transformer.", "text.", "token_embedding", "positional_embedding", "ln_final", "text_projection")


def trainable_summary(model: nn.Module, print_it: bool = False) -> str:
    """Trainable / total parameters per part (text tower, image tower, adapters, other) as a table."""
    rows: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        if name.startswith(ADAPTER_ATTR + "."):
            part = "adapters"
        elif name.startswith("visual."):
            part = "image tower"
        elif name.startswith(_TEXT_PREFIXES):
            part = "text tower"
        else:
            part = "other"
        r = rows.setdefault(part, [0, 0])
        r[0] += p.numel() if p.requires_grad else 0
        r[1] += p.numel()
    lines = [f"{'part':<26}{'trainable':>12}{'total':>14}"]
    order = [k for k in ("text tower", "image tower", "other", "adapters") if k in rows]
    for part in order:
        lines.append(f"{part:<26}{rows[part][0]:>12,}{rows[part][1]:>14,}")
        if part == "adapters":
            for sub, n in get_adapters(model).parts().items():
                lines.append(f"{'  ' + sub:<26}{n:>12,}")
    tt = sum(r[0] for r in rows.values())
    tot = sum(r[1] for r in rows.values())
    lines.append(f"{'total':<26}{tt:>12,}{tot:>14,}  ({100.0 * tt / max(tot, 1):.4f}% trainable)")
    text = "\n".join(lines)
    if print_it:
        print(text)
    return text
