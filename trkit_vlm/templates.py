"""Prompt templates by name, for the frozen text features of the generalization-aware losses.

A template is a format string with one ``{}`` for the class name. No torch import here: run configs
name template sets and are checked before a model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trkit.errors import InputError

__all__ = ["TEMPLATE_SETS", "check_templates", "resolve_templates"]


def _open_clip_templates(name: str) -> list[str]:
    import open_clip.zero_shot_metadata as meta  # imported when a set is used: open_clip is slow to import

    return [t("{}") for t in getattr(meta, name)]


# CLIP's ImageNet prompt ensemble (80 templates; PromptSRC averages a 60-template subset of them) and the
# 7 templates CoOp-era methods select from it, as open_clip ships them.
TEMPLATE_SETS: dict[str, Callable[[], list[str]]] = {
    "openai_imagenet": lambda: _open_clip_templates("OPENAI_IMAGENET_TEMPLATES"),
    "simple_imagenet": lambda: _open_clip_templates("SIMPLE_IMAGENET_TEMPLATES"),
}


def check_templates(spec: str | Sequence[str] | None, where: str = "templates") -> None:
    """InputError unless ``spec`` is None, a name in :data:`TEMPLATE_SETS` or a non-empty list of format
    strings with ``{}`` (``where`` names the setting in the message)."""
    if spec is None:
        return
    if isinstance(spec, str):
        if spec not in TEMPLATE_SETS:
            raise InputError(f"{where}: unknown template set {spec!r}; expected one of {sorted(TEMPLATE_SETS)}")
        return
    if not (isinstance(spec, (list, tuple)) and spec and all(isinstance(t, str) and "{}" in t for t in spec)):
        raise InputError(f"{where} must be a set name or a non-empty list of strings containing '{{}}', got {spec!r}")


def resolve_templates(spec: str | Sequence[str] | None, default: str) -> list[str]:
    """The templates ``spec`` names: None -> ``[default]``, a name in :data:`TEMPLATE_SETS`, or the list itself."""
    check_templates(spec)
    if spec is None:
        return [default]
    return TEMPLATE_SETS[spec]() if isinstance(spec, str) else list(spec)
