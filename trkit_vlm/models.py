"""Building open_clip CLIP models in one place, and the few feature helpers everything else uses.

``load_clip(name, pretrained)`` takes a model name plus either nothing (random weights, with a loud
warning), a local checkpoint file (an open_clip state dict or OpenAI's released TorchScript file) or a
hub tag (needs internet; offline it fails fast with a clear message).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trkit.errors import InputError, InputTypeError

__all__ = [
    "TINY_CONFIG",
    "ClipBundle",
    "load_clip",
    "register_model_config",
    "registered_model_configs",
    "provided_model",
    "encode_text",
    "encode_image",
    "clip_logits",
    "clip_towers",
    "tower_info",
    "tower_info_from_config",
]

log = logging.getLogger(__name__)

# open_clip is imported inside the functions that build models or read their configs: importing it
# takes seconds (torchvision, hub clients), and the adapters only need a model that already exists.

# A 4-layer, narrow CLIP (text width 48, image width 64) for tests and examples; random weights only.
TINY_CONFIG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 4},
}

# Configs added with register_model_config; re-inserted before every build because
# open_clip.add_model_config rebuilds its registry from files and would drop them.
_CUSTOM_CONFIGS: dict[str, dict] = {}

# Models the project provides itself, by name: the module whose ``provide_model(name)`` registers the
# config and returns the default weights file. Imported on first use: the demo imports this module.
_PROVIDED_MODELS = {"trkit-small-clip-28": "trkit_vlm.demo.small_clip"}


def provided_model(name: str, weights: bool = True) -> str | None:
    """For a model the project provides (``"trkit-small-clip-28"``, the small CLIP of the quickstart):
    register its config and, with ``weights``, return its default weights file (the cached pre-trained
    weights). ``None`` for any other name.

    Raises:
        FileNotFoundError: ``weights`` asked and not made yet (``trkit-vlm pretrain-small`` makes them).
    """
    module = _PROVIDED_MODELS.get(name)
    if module is None:
        return None
    import importlib

    return importlib.import_module(module).provide_model(name, weights)


@dataclass
class ClipBundle:
    """A model with what is needed to feed it."""

    model: nn.Module
    preprocess_train: Callable
    preprocess_val: Callable
    tokenizer: Callable
    name: str
    pretrained: str | None


def register_model_config(name: str, config: dict) -> None:
    """Add an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) under ``name``.

    After this ``load_clip(name)`` and ``open_clip.create_model(name)`` build it.
    """
    if not isinstance(name, str) or not name:
        raise InputError("model config name must be a non-empty string")
    if not isinstance(config, dict):
        raise InputTypeError(f"config must be a dict, got {type(config).__name__}")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
    if missing:
        raise InputError(
            f"model config {name!r} lacks {missing}; an open_clip config needs 'embed_dim', 'vision_cfg' and 'text_cfg'"
        )
    _CUSTOM_CONFIGS[name] = copy.deepcopy(config)
    _sync_configs()


def registered_model_configs() -> list[str]:
    """Names added with :func:`register_model_config`."""
    return sorted(_CUSTOM_CONFIGS)


def registered_model_config(name: str) -> dict | None:
    """A copy of the config registered under ``name`` with :func:`register_model_config` (None if none)."""
    config = _CUSTOM_CONFIGS.get(name)
    return copy.deepcopy(config) if config is not None else None


def _sync_configs() -> None:
    import open_clip.factory as f

    for k, v in _CUSTOM_CONFIGS.items():
        f._MODEL_CONFIGS[k] = copy.deepcopy(v)


def _is_torchscript_archive(path: str) -> bool:
    # OpenAI's released CLIP files are TorchScript archives; torch.load(weights_only=True) refuses them.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_clip(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    quick_gelu: bool | None = None,
) -> ClipBundle:
    """Build an open_clip CLIP model, its train/val transforms and tokenizer.

    Args:
        name: an open_clip model name (``"ViT-B-16"``, ``"ViT-B-32"``, ``"ViT-L-14"``, ...), one
            added with :func:`register_model_config`, or one the project provides (``"trkit-small-clip-28"``:
            its config is registered on first use, see :func:`provided_model`).
        pretrained: ``None`` (random weights, warns loudly; for a provided model its cached weights), a
            local checkpoint file, or a hub tag such as ``"openai"`` (needs internet).
        device, precision: passed to open_clip.
        quick_gelu: force QuickGELU (OpenAI's weights were trained with it). ``None``: on for
            OpenAI TorchScript files, else as the model config says.
    """
    import open_clip

    if not isinstance(name, str):
        raise InputTypeError(f"model name must be a string, got {type(name).__name__}")
    if name in _PROVIDED_MODELS:
        default = provided_model(name, weights=pretrained is None)
        pretrained = default if pretrained is None else pretrained
    _sync_configs()
    if open_clip.get_model_config(name.replace("/", "-")) is None:
        raise InputError(
            f"unknown open_clip model {name!r}; known: ViT-B-16, ViT-B-32, ViT-L-14, ... "
            f"(open_clip.list_models()) or a name added with register_model_config "
            f"(registered here: {registered_model_configs()})"
        )
    jit_state = None
    if pretrained is not None:
        pretrained = os.fspath(pretrained)
        if os.path.isfile(pretrained) and _is_torchscript_archive(pretrained):
            jit_state = _openai_state_dict(pretrained)
            if quick_gelu is None:
                quick_gelu = True
        elif not os.path.isfile(pretrained) and (
            os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors", ".tar"))
        ):
            raise FileNotFoundError(f"checkpoint file not found: {pretrained}")
    kwargs: dict[str, Any] = {"device": device, "precision": precision}
    if quick_gelu:
        kwargs["force_quick_gelu"] = True

    if pretrained is None:
        warnings.warn(
            f"trkit_vlm.load_clip({name!r}): RANDOM weights (pretrained=None). This is NOT pretrained CLIP; "
            "use it for shapes, parameter counts and speed only. Pass a local checkpoint file for real weights.",
            UserWarning,
            stacklevel=2,
        )
    use_file = pretrained if (pretrained is not None and jit_state is None) else None
    try:
        with quiet_random_init():
            model, pre_train, pre_val = open_clip.create_model_and_transforms(name, pretrained=use_file, **kwargs)
    except RuntimeError as err:
        msg = str(err)
        if use_file is not None and os.path.isfile(use_file):
            raise InputError(
                f"checkpoint {use_file} does not match architecture {name!r}: {_first_lines(msg)}"
            ) from err
        if use_file is not None:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise RuntimeError(
                f"could not get weights {use_file!r} for {name!r} from the hub"
                f"{' (HF_HUB_OFFLINE=1: no downloads)' if offline else ''}. Without internet, pass a local "
                f"checkpoint file: load_clip({name!r}, pretrained='/path/to/weights.pt'). Cause: "
                f"{_first_lines(msg)}"
            ) from err
        raise
    if jit_state is not None:
        # Scripted archives may carry non-persistent buffers (attn_mask) the model rebuilds itself.
        nonpersistent = {n for n, _ in model.named_buffers()} - set(model.state_dict())
        jit_state = {k: v for k, v in jit_state.items() if k not in nonpersistent}
        try:
            model.load_state_dict(jit_state, strict=True)
        except RuntimeError as err:
            raise InputError(
                f"OpenAI checkpoint {pretrained} does not match architecture {name!r}: {_first_lines(str(err))}"
            ) from err
        model.to(device)
    tokenizer = open_clip.get_tokenizer(name.replace("/", "-"))
    model.eval()
    return ClipBundle(
        model=model,
        preprocess_train=pre_train,
        preprocess_val=pre_val,
        tokenizer=tokenizer,
        name=name,
        pretrained=pretrained,
    )


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def quiet_random_init():
    """Drop open_clip's "No pretrained weights loaded" log line (and nothing else) inside the block.

    open_clip logs it on the root logger for every model created without weights; ours (a
    ``UserWarning`` from :func:`load_clip`) is the one users should act on, and a model about to be
    pre-trained has random weights on purpose.
    """
    root, drop = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _first_lines(msg: str, n: int = 4) -> str:
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    return " | ".join(lines[:n]) + (" ..." if len(lines) > n else "")


def _openai_state_dict(path: str) -> dict[str, torch.Tensor]:
    """State dict of OpenAI's TorchScript release (same key names as open_clip's CLIP)."""
    sm = torch.jit.load(path, map_location="cpu")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sm.state_dict().items()}
    for k in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(k, None)
    return sd


def clip_towers(model: nn.Module) -> dict[str, nn.Module]:
    """The two open_clip ``Transformer`` stacks: ``{"text": ..., "image": ...}``.

    Raises TypeError for models whose towers are not open_clip transformers (timm, HF text).
    """
    visual = getattr(model, "visual", None)
    image = getattr(visual, "transformer", None)
    text = getattr(model, "transformer", None)
    if text is None:
        text = getattr(getattr(model, "text", None), "transformer", None)
    for tower, t in (("image", image), ("text", text)):
        if t is None or not hasattr(t, "resblocks"):
            raise InputTypeError(
                f"{type(model).__name__} has no open_clip {tower} transformer with resblocks; "
                "trkit_vlm adapters need a ViT-style open_clip CLIP (ViT-B-16, ViT-B-32, ViT-L-14, ...)"
            )
    return {"text": text, "image": image}


def tower_info(model: nn.Module) -> dict[str, dict[str, int]]:
    """Width, depth and output feature size of each tower.

    ``{"text": {"width": 512, "depth": 12, "features": 512}, "image": {...}}`` for ViT-B-16; ``features``
    is the size of the tower's projected output (the CLIP embedding).
    """
    out = {}
    for tower, t in clip_towers(model).items():
        blk = t.resblocks[0]
        out[tower] = {"width": int(blk.ln_1.normalized_shape[0]), "depth": len(t.resblocks)}
        out[tower]["features"] = _feature_size(model, tower, out[tower]["width"])
    return out


def _feature_size(model: nn.Module, tower: str, width: int) -> int:
    if tower == "image":
        return int(getattr(model.visual, "output_dim", width))
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "output_dim"):  # open_clip CustomTextCLIP
        return int(text.output_dim)
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    return int(proj.shape[1]) if proj is not None else width


def encode_text(
    model: nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    template: str = "a photo of a {}.",
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """L2-normalised text features ``(C, D)`` of ``template.format(classname)`` (underscores -> spaces)."""
    if isinstance(classnames, str):
        raise InputTypeError("classnames must be a list of strings, not one string")
    prompts = [template.format(c.replace("_", " ")) for c in classnames]
    tokens = tokenizer(prompts)
    if device is None:
        device = next(model.parameters()).device
    return model.encode_text(tokens.to(device), normalize=True)


def encode_image(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised image features ``(B, D)`` of preprocessed ``images`` ``(B, 3, H, W)``."""
    return model.encode_image(images, normalize=True)


def clip_logits(model: nn.Module, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """``logit_scale.exp() * image_features @ text_features.T`` -> ``(B, C)`` (features L2-normalised)."""
    return model.logit_scale.exp() * image_features @ text_features.t()


def tower_info_from_config(name: str) -> dict[str, dict[str, int]]:
    """Like :func:`tower_info` but from the open_clip config alone (no model is built)."""
    import open_clip

    provided_model(name, weights=False)
    _sync_configs()
    cfg = open_clip.get_model_config(name.replace("/", "-"))
    if cfg is None:
        raise InputError(f"unknown open_clip model {name!r}")
    t, v = cfg["text_cfg"], cfg["vision_cfg"]
    if "timm_model_name" in v or "hf_model_name" in t:
        raise InputTypeError(f"{name!r} uses a timm/HF tower; trkit_vlm adapters need open_clip transformer towers")
    # Defaults are open_clip's CLIPTextCfg / CLIPVisionCfg defaults.
    features = int(cfg["embed_dim"])
    return {
        "text": {"width": int(t.get("width", 512)), "depth": int(t.get("layers", 12)), "features": features},
        "image": {"width": int(v.get("width", 768)), "depth": int(v.get("layers", 12)), "features": features},
    }
