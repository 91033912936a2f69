"""AdaRing, cross-layer tensor-ring adapters: ``config.py`` (its fields), ``layer.py`` (its adapter set)."""

from trkit_vlm.adapters.adaring.config import AdaRingConfig, adaring_param_count
from trkit_vlm.adapters.registry import register_adapter_method

register_adapter_method(
    "adaring",
    AdaRingConfig,
    adapter_set="trkit_vlm.adapters.adaring.layer:AdaRingAdapterSet",
    summary="AdaRing: MMA's projections as cross-layer tensor rings, branches of different ranks",
    test_config={"hidden": 8, "ranks": [1, (1, 2, 2)], "bias": "all", "init": "kaiming", "scale": 0.5},
)

__all__ = ["AdaRingConfig", "adaring_param_count"]
