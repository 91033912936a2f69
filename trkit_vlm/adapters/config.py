"""Adapter configs: the base every method's config derives from, and where in the towers adapters go.

A config is a dataclass of plain values (it round-trips through JSON with ``to_dict`` and
``trkit_vlm.adapters.adapter_config_from_dict``). This module does not import torch, so the command
line can read method names and config fields without loading it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from trkit.errors import InputError
from trkit_vlm.typecheck import check_field_types

if TYPE_CHECKING:
    from trkit_vlm.adapters.base import AdapterSet

__all__ = ["ALL_LAYERS", "AdapterConfig", "PairedAdapterConfig", "LayerSpec", "default_layers", "resolve_layers"]

LayerSpec = Any  # None | (start, end) 1-based inclusive | "5-12" | "5..12" | "all"
ALL_LAYERS = "all"  # every layer of the tower, whatever its depth


def normalise_layer_spec(spec: LayerSpec, name: str) -> list[int] | str | None:
    """``None``, ``"all"`` or ``[start, end]`` (1-based, inclusive) from any accepted spelling; InputError
    otherwise."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec.strip().lower() == ALL_LAYERS:
            return ALL_LAYERS
        m = re.fullmatch(r"\s*(\d+)\s*(?:-|\.\.|:)\s*(\d+)\s*", spec)
        if not m:
            raise InputError(f"{name}={spec!r}: expected 'START-END' or 'START..END' (1-based, inclusive) or 'all'")
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
        rng = normalise_layer_spec(spec, f"{tower}_layers")
        if rng is None:
            out.append(dflt)
            continue
        a, b = (1, depth) if rng == ALL_LAYERS else rng
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
    """Base of every adapter method's config.

    A subclass is a dataclass whose fields are the method's hyper-parameters (plain JSON values) and
    whose class attribute ``method`` is the name it is registered under
    (:func:`trkit_vlm.adapters.register_adapter_method`).
    """

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_field_types(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict with the ``method`` name; ``adapter_config_from_dict`` inverts it."""
        return {**dataclasses.asdict(self), "method": self.method}

    def build(self, info: dict[str, dict[str, int]]) -> AdapterSet:
        """The method's adapter module for towers described by ``info`` (``trkit_vlm.models.tower_info``)."""
        from trkit_vlm.adapters.registry import get_method  # the registry imports this module

        return get_method(self.method).adapter_set_class()(self, info)


@dataclass
class PairedAdapterConfig(AdapterConfig):
    """Fields of the paired text/image bottleneck adapters (MMA and AdaRing).

    Args:
        hidden: bottleneck width (32 in MMA).
        text_layers, image_layers: 1-based inclusive ranges of equal length (``"3-6"``, ``(3, 6)``), ``"all"``
            for every layer of the tower, or None for MMA's placement scaled to depth (layers 5..12 of
            12-layer towers).
        scale: output scale with MMA's gradient-scaling rule (0.001 in MMA).
        dropout: dropout on the adapter's input ``ln_1(x)`` during training, as LoRA's on its update's input
            (0, MMA's and the default, switches it off).
    """

    hidden: int = 32
    text_layers: LayerSpec = None
    image_layers: LayerSpec = None
    scale: float = 0.001
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.text_layers = normalise_layer_spec(self.text_layers, "text_layers")
        self.image_layers = normalise_layer_spec(self.image_layers, "image_layers")
        super().__post_init__()
        if self.hidden < 1:
            raise InputError(f"hidden must be >= 1, got {self.hidden}")
        if self.scale < 0:
            raise InputError(f"scale must be >= 0, got {self.scale}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
