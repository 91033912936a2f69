"""Lazy public names for a package (PEP 562), so ``import trkit.errors`` or ``trkit-vlm --help`` does
not pay for importing torch.

A package lists where each public name lives; the first access imports that module and caches the
value in the package's namespace, so later accesses are plain attribute reads. The package keeps a
``TYPE_CHECKING`` block with the same imports for type checkers and IDEs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the module holding it.

    A name that is itself a submodule (``"contract": "trkit.contract"``) resolves to that module.
    """

    def __getattr__(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(module_name)
        value = module if module_name == f"{package}.{name}" else getattr(module, name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
