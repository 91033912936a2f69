"""trkit_vlm: AdaRing cross-layer tensor-ring adapters (and the MMA baseline) for open_clip CLIP models.

Packages by role: ``models``, ``adapters/`` (one package per method, found through a registry),
``losses``, ``data/`` and ``compression/`` are the library; ``training/`` and ``evaluation/`` run it;
``demo/`` is the offline quickstart; ``cli/`` is the ``trkit-vlm`` command line. The names below load
on first use, so the command line starts without importing torch.
"""

from typing import TYPE_CHECKING

from trkit._lazy import lazy_exports
from trkit_vlm._version import __version__

if TYPE_CHECKING:
    from trkit_vlm.adapters import AdaRingConfig as AdaRingConfig
    from trkit_vlm.adapters import MMAConfig as MMAConfig
    from trkit_vlm.adapters import adapters_disabled as adapters_disabled
    from trkit_vlm.adapters import add_adapters as add_adapters
    from trkit_vlm.adapters import available_methods as available_methods
    from trkit_vlm.adapters import register_adapter_method as register_adapter_method
    from trkit_vlm.adapters import remove_adapters as remove_adapters
    from trkit_vlm.adapters import trainable_summary as trainable_summary
    from trkit_vlm.compression import compress_mma as compress_mma
    from trkit_vlm.models import ClipBundle as ClipBundle
    from trkit_vlm.models import load_clip as load_clip
    from trkit_vlm.models import register_model_config as register_model_config

_EXPORTS = {
    **dict.fromkeys(["ClipBundle", "load_clip", "register_model_config"], "trkit_vlm.models"),
    **dict.fromkeys(
        [
            "add_adapters",
            "remove_adapters",
            "adapters_disabled",
            "trainable_summary",
            "available_methods",
            "register_adapter_method",
            "MMAConfig",
            "AdaRingConfig",
        ],
        "trkit_vlm.adapters",
    ),
    "compress_mma": "trkit_vlm.compression",
}
__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
