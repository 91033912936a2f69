"""Adapter methods by name, in the spirit of peft's ``register_peft_method``.

Each method package registers itself from its own ``__init__.py`` (see ``adapters/mma/__init__.py``):
its name, config class, adapter set class, a one-line summary and small fields for the tests.

Config parsing (:func:`adapter_config_from_dict`), ``RunConfig.validate``, the CLI's ``--method``
choices and every "unknown method" message read this registry, so a new method is a new package plus
that one call. Every package under ``trkit_vlm/adapters/`` is a method and is imported once, on the
first lookup (a method from elsewhere registers when its own package is imported). Nothing here
imports torch: the adapter set class is named as ``"module:Class"`` and imported when a model is built.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trkit.errors import InputError, InputTypeError
from trkit_vlm.adapters.config import AdapterConfig

if TYPE_CHECKING:
    from trkit_vlm.adapters.base import AdapterSet

__all__ = ["AdapterMethod", "register_adapter_method", "get_method", "available_methods", "adapter_config_from_dict"]


@dataclass(frozen=True)
class AdapterMethod:
    """One registered adapter method.

    Attributes:
        name: what configs, files and ``--method`` call it.
        config_class: its :class:`~trkit_vlm.adapters.config.AdapterConfig` subclass.
        adapter_set: ``"module:Class"`` of its :class:`~trkit_vlm.adapters.base.AdapterSet` subclass.
        summary: one line for ``--help`` and error messages.
        test_config: small config fields for the generic adapter-contract tests
            (``tests/trkit_vlm/test_adapter_contract.py``), chosen so the adapters visibly change the output.
    """

    name: str
    config_class: type[AdapterConfig]
    adapter_set: str
    summary: str
    test_config: dict[str, Any] = field(default_factory=dict)

    def adapter_set_class(self) -> type[AdapterSet]:
        """The adapter set class (imports its module, and with it torch)."""
        module, _, attr = self.adapter_set.partition(":")
        return getattr(importlib.import_module(module), attr)


_METHODS: dict[str, AdapterMethod] = {}
_builtins_loaded = False


def register_adapter_method(
    name: str,
    config_class: type[AdapterConfig],
    adapter_set: str,
    *,
    summary: str,
    test_config: dict[str, Any] | None = None,
) -> AdapterMethod:
    """Make an adapter method known by ``name`` (registering the same method again is a no-op).

    Args:
        name: the method's name; must equal ``config_class.method``.
        config_class: a dataclass subclass of ``AdapterConfig``.
        adapter_set: ``"package.module:ClassName"`` of the method's ``AdapterSet`` subclass.
        summary: one line saying what the method is.
        test_config: fields for the generic contract tests (default: the config's defaults).
    """
    if not (isinstance(config_class, type) and issubclass(config_class, AdapterConfig)):
        raise InputTypeError(f"config_class must be an AdapterConfig subclass, got {config_class!r}")
    if not dataclasses.is_dataclass(config_class):
        raise InputTypeError(f"{config_class.__name__} must be a dataclass")
    if config_class.method != name:
        raise InputError(f"{config_class.__name__}.method is {config_class.method!r}, registered as {name!r}")
    if ":" not in adapter_set:
        raise InputError(f"adapter_set must be 'module:Class', got {adapter_set!r}")
    method = AdapterMethod(name, config_class, adapter_set, summary, dict(test_config or {}))
    if name in _METHODS and _METHODS[name] != method:
        raise InputError(f"adapter method {name!r} is already registered ({_METHODS[name].config_class.__name__})")
    _METHODS[name] = method
    return method


def builtin_method_packages() -> list[str]:
    """The method packages that ship with trkit_vlm: every package under ``trkit_vlm/adapters/``."""
    here = Path(__file__).parent
    return [m.name for m in pkgutil.iter_modules([str(here)], "trkit_vlm.adapters.") if m.ispkg]


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for package in builtin_method_packages():
            importlib.import_module(package)  # registers the method (it imports this module: a cycle)


def available_methods() -> list[str]:
    """Names of the registered adapter methods, sorted."""
    _load_builtins()
    return sorted(_METHODS)


def get_method(name: str) -> AdapterMethod:
    """The registered method called ``name``; InputError listing the known ones otherwise."""
    _load_builtins()
    if name not in _METHODS:
        raise InputError(f"unknown adapter method {name!r}; expected one of {available_methods()}")
    return _METHODS[name]


def adapter_config_from_dict(d: dict[str, Any]) -> AdapterConfig:
    """Inverse of ``config.to_dict()``: the registered class named by ``d["method"]``, built from the rest."""
    if not isinstance(d, dict) or d.get("method") not in available_methods():
        got = d.get("method") if isinstance(d, dict) else type(d).__name__
        raise InputError(f"adapter config needs 'method' in {available_methods()}, got {got!r}")
    fields = dict(d)
    cls = get_method(fields.pop("method")).config_class
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields) - known
    if unknown:
        raise InputError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(known)}")
    return cls(**fields)
