"""LoRA on the attention projections (CLIP-LoRA's recipe): ``config.py`` (fields), ``layer.py`` (adapter set)."""

from trkit_vlm.adapters.lora.config import LoRAConfig, lora_param_count
from trkit_vlm.adapters.registry import register_adapter_method

register_adapter_method(
    "lora",
    LoRAConfig,
    adapter_set="trkit_vlm.adapters.lora.layer:LoRAAdapterSet",
    summary="LoRA: low-rank updates of the attention's query, key, value (and output) projections",
    test_config={"rank": 2, "dropout": 0.0, "targets": ["q", "k", "v", "o"]},
)

__all__ = ["LoRAConfig", "lora_param_count"]
