"""A linear probe on the frozen image features, started at zero-shot: ``config.py``, ``layer.py``."""

from trkit_vlm.adapters.linear_probe.config import LinearProbeConfig, linear_probe_param_count
from trkit_vlm.adapters.registry import register_adapter_method

register_adapter_method(
    "linear_probe",
    LinearProbeConfig,
    adapter_set="trkit_vlm.adapters.linear_probe.layer:LinearProbeSet",
    summary="linear probe: a residual linear map on the frozen image features (zero-shot at the start)",
)

__all__ = ["LinearProbeConfig", "linear_probe_param_count"]
