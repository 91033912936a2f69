"""Adapters for open_clip CLIP models: the MMA baseline and AdaRing (cross-layer tensor-ring adapters).

One entry point wraps a model (``add_adapters``); ``remove_adapters`` undoes it.
"""

from trkit.errors import InputError
from trkit_vlm.adapters.adaring.config import AdaRingConfig, adaring_param_count
from trkit_vlm.adapters.base import (
    AdapterConfig,
    adapter_parameters,
    adapter_regularization,
    adapter_state_dict,
    adapters_disabled,
    add_adapters,
    count_trainable,
    get_adapters,
    grad_scale,
    remove_adapters,
    trainable_summary,
)
from trkit_vlm.adapters.io import import_mma_checkpoint, load_adapters, save_adapters
from trkit_vlm.adapters.mma.config import MMAConfig, mma_param_count

__all__ = [
    "AdapterConfig",
    "MMAConfig",
    "AdaRingConfig",
    "adapter_config_from_dict",
    "add_adapters",
    "remove_adapters",
    "adapters_disabled",
    "adapter_parameters",
    "adapter_state_dict",
    "adapter_regularization",
    "count_trainable",
    "trainable_summary",
    "get_adapters",
    "grad_scale",
    "mma_param_count",
    "adaring_param_count",
    "save_adapters",
    "load_adapters",
    "import_mma_checkpoint",
]

_CONFIGS = {"mma": MMAConfig, "adaring": AdaRingConfig}


def adapter_config_from_dict(d: dict) -> AdapterConfig:
    """Inverse of ``config.to_dict()``: picks the class from ``d["method"]``."""
    if not isinstance(d, dict) or d.get("method") not in _CONFIGS:
        raise InputError(
            f"adapter config needs 'method' in {sorted(_CONFIGS)}, got "
            f"{d.get('method') if isinstance(d, dict) else type(d).__name__!r}"
        )
    d = dict(d)
    cls = _CONFIGS[d.pop("method")]
    known = {f for f in cls.__dataclass_fields__ if f != "method"}
    unknown = set(d) - known
    if unknown:
        raise InputError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    return cls(**d)
