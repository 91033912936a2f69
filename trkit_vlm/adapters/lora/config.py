"""LoRAConfig: low-rank updates of the attention projections (CLIP-LoRA's recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from trkit.errors import InputError
from trkit_vlm.adapters.config import AdapterConfig, LayerSpec, normalise_layer_spec, resolve_layers

__all__ = ["LoRAConfig", "lora_param_count", "LORA_TARGETS"]

LORA_TARGETS = ("q", "k", "v", "o")
_TOWERS = ("text", "image")


@dataclass
class LoRAConfig(AdapterConfig):
    """LoRA on the attention of the adapted blocks: ``W_t x`` becomes ``W_t x + (alpha / rank) B_t A_t dropout(x)``
    for each target projection ``t`` (query, key, value of the packed ``in_proj``, and optionally the
    output projection), in both towers (CLIP-LoRA, Zanella & Ben Ayed 2024: rank 2, alpha 1, dropout 0.25,
    q/k/v of every layer of both encoders).

    ``A`` is drawn as in loralib (Kaiming uniform) and ``B`` is zero, so the adapted model starts exactly at
    the frozen one. The frozen weights are used as they are: the update is computed from ``x`` through ``A``
    and ``B`` (``O(rank · d)`` per token), never as a dense ``d x d`` matrix.

    Args:
        rank: the rank ``r`` of every update.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout on the update's input during training (0 switches it off).
        targets: which projections: any of ``"q", "k", "v", "o"``.
        towers: which towers: ``"text"``, ``"image"`` or both.
        text_layers, image_layers: 1-based inclusive ranges, "all", or None for the placement MMA uses (the last
            two thirds of the layers; CLIP-LoRA adapts every layer: set ``"all"`` for that).
    """

    method: ClassVar[str] = "lora"
    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v"])
    towers: list[str] = field(default_factory=lambda: ["text", "image"])
    text_layers: LayerSpec = None
    image_layers: LayerSpec = None

    def __post_init__(self) -> None:
        self.text_layers = normalise_layer_spec(self.text_layers, "text_layers")
        self.image_layers = normalise_layer_spec(self.image_layers, "image_layers")
        super().__post_init__()
        if self.rank < 1:
            raise InputError(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise InputError(f"targets must be distinct names from {LORA_TARGETS}, got {self.targets}")
        bad = [t for t in self.towers if t not in _TOWERS]
        if bad or not self.towers or len(set(self.towers)) != len(self.towers):
            raise InputError(f"towers must be distinct names from {_TOWERS}, got {self.towers}")

    def layers(self, info: dict[str, dict[str, int]]) -> dict[str, list[int]]:
        """The adapted 1-based layers of each tower named in ``towers``."""
        text, image = resolve_layers(self.text_layers, self.image_layers, info["text"]["depth"], info["image"]["depth"])
        return {t: ls for t, ls in (("text", text), ("image", image)) if t in self.towers}


def lora_param_count(config: LoRAConfig, info: dict[str, dict[str, int]]) -> int:
    """Closed form: ``rank · 2 · width`` per target, adapted layer and tower (no biases)."""
    return sum(
        config.rank * 2 * info[tower]["width"] * len(config.targets) * len(layers)
        for tower, layers in config.layers(info).items()
    )
