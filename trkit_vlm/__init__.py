"""trkit_vlm: AdaRing cross-layer tensor-ring adapters (and the MMA baseline) for open_clip CLIP models."""

from trkit_vlm._version import __version__
from trkit_vlm.adapters import (
    AdaRingConfig,
    MMAConfig,
    adapters_disabled,
    add_adapters,
    remove_adapters,
    trainable_summary,
)
from trkit_vlm.models import ClipBundle, load_clip, register_model_config

__all__ = [
    "__version__",
    "ClipBundle",
    "load_clip",
    "register_model_config",
    "add_adapters",
    "remove_adapters",
    "adapters_disabled",
    "trainable_summary",
    "MMAConfig",
    "AdaRingConfig",
    "compress_mma",
]


def __getattr__(name):
    # compress pulls in the decomposition code; load it only when asked for.
    if name == "compress_mma":
        from trkit_vlm.compress import compress_mma

        return compress_mma
    raise AttributeError(f"module 'trkit_vlm' has no attribute {name!r}")
