"""MMA, the Multi-Modal Adapter baseline: ``config.py`` (its fields), ``layer.py`` (its adapter set)."""

from trkit_vlm.adapters.mma.config import MMAConfig, mma_param_count
from trkit_vlm.adapters.registry import register_adapter_method

register_adapter_method(
    "mma",
    MMAConfig,
    adapter_set="trkit_vlm.adapters.mma.layer:MMAAdapterSet",
    summary="MMA's dense per-layer bottleneck adapters (the baseline)",
    test_config={"hidden": 8, "scale": 0.5},
)

__all__ = ["MMAConfig", "mma_param_count"]
