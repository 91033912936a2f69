"""Adapters for open_clip CLIP models; each method is a package here that registers itself.

``add_adapters(model, config)`` wraps a model (``remove_adapters`` undoes it); ``registry.py`` knows the
methods by name; ``config.py`` / ``base.py`` hold the generic config and adapter set, ``paired.py`` the
paired text/image bottleneck family of MMA and AdaRing; ``io.py`` saves and loads adapters alone.
Names load on first use: importing the registry or a config does not import torch.
"""

from typing import TYPE_CHECKING

from trkit._lazy import lazy_exports

if TYPE_CHECKING:
    from trkit_vlm.adapters.adaring import AdaRingConfig as AdaRingConfig
    from trkit_vlm.adapters.adaring import adaring_param_count as adaring_param_count
    from trkit_vlm.adapters.base import AdapterSet as AdapterSet
    from trkit_vlm.adapters.base import adapter_parameters as adapter_parameters
    from trkit_vlm.adapters.base import adapter_regularization as adapter_regularization
    from trkit_vlm.adapters.base import adapter_state_dict as adapter_state_dict
    from trkit_vlm.adapters.base import adapters_disabled as adapters_disabled
    from trkit_vlm.adapters.base import add_adapters as add_adapters
    from trkit_vlm.adapters.base import count_trainable as count_trainable
    from trkit_vlm.adapters.base import get_adapters as get_adapters
    from trkit_vlm.adapters.base import remove_adapters as remove_adapters
    from trkit_vlm.adapters.base import trainable_summary as trainable_summary
    from trkit_vlm.adapters.config import AdapterConfig as AdapterConfig
    from trkit_vlm.adapters.io import import_mma_checkpoint as import_mma_checkpoint
    from trkit_vlm.adapters.io import load_adapters as load_adapters
    from trkit_vlm.adapters.io import save_adapters as save_adapters
    from trkit_vlm.adapters.linear_probe import LinearProbeConfig as LinearProbeConfig
    from trkit_vlm.adapters.linear_probe import linear_probe_param_count as linear_probe_param_count
    from trkit_vlm.adapters.lora import LoRAConfig as LoRAConfig
    from trkit_vlm.adapters.lora import lora_param_count as lora_param_count
    from trkit_vlm.adapters.mma import MMAConfig as MMAConfig
    from trkit_vlm.adapters.mma import mma_param_count as mma_param_count
    from trkit_vlm.adapters.paired import grad_scale as grad_scale
    from trkit_vlm.adapters.registry import adapter_config_from_dict as adapter_config_from_dict
    from trkit_vlm.adapters.registry import available_methods as available_methods
    from trkit_vlm.adapters.registry import get_method as get_method
    from trkit_vlm.adapters.registry import register_adapter_method as register_adapter_method

_EXPORTS = {
    **dict.fromkeys(
        ["register_adapter_method", "get_method", "available_methods", "adapter_config_from_dict"],
        "trkit_vlm.adapters.registry",
    ),
    "AdapterConfig": "trkit_vlm.adapters.config",
    **dict.fromkeys(
        [
            "AdapterSet",
            "add_adapters",
            "remove_adapters",
            "adapters_disabled",
            "adapter_parameters",
            "adapter_state_dict",
            "adapter_regularization",
            "count_trainable",
            "trainable_summary",
            "get_adapters",
        ],
        "trkit_vlm.adapters.base",
    ),
    "grad_scale": "trkit_vlm.adapters.paired",
    **dict.fromkeys(["save_adapters", "load_adapters", "import_mma_checkpoint"], "trkit_vlm.adapters.io"),
    # The built-in methods' configs, for convenience (methods are found through the registry).
    **dict.fromkeys(["MMAConfig", "mma_param_count"], "trkit_vlm.adapters.mma"),
    **dict.fromkeys(["LoRAConfig", "lora_param_count"], "trkit_vlm.adapters.lora"),
    **dict.fromkeys(["LinearProbeConfig", "linear_probe_param_count"], "trkit_vlm.adapters.linear_probe"),
    **dict.fromkeys(["AdaRingConfig", "adaring_param_count"], "trkit_vlm.adapters.adaring"),
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
