"""Check that a config dataclass holds values of the types its annotations name.

Configs come from YAML, JSON and ``--set`` overrides, so a value can be a string where a number
belongs (``optim.lr: "abc"``, ``data.augment: "no"``). Checked up front, that is an ``InputError``
naming the field, instead of a ``TypeError`` from deep inside torch halfway through a run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from trkit.errors import InputError

__all__ = ["check_field_types"]


def check_field_types(obj: Any, prefix: str = "") -> None:
    """Raise InputError for the first field of dataclass ``obj`` whose value does not fit its annotation.

    Understood: ``Any``, ``None``, ``bool``, ``int`` (not bool), ``float`` (an int is fine), ``str``,
    unions, ``list[X]``, ``tuple[X, ...]`` / ``tuple[X, Y]`` (a list is fine), ``dict``, dataclasses.
    ``prefix`` goes before the field name in the message (``"optim."``).
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        if not _fits(value, hint):
            raise InputError(f"{prefix}{f.name} must be {_describe(hint)}, got {value!r} ({type(value).__name__})")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list or hint is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value if args)
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return not args or (len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args)))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation this checker does not know: accept


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is None or hint is type(None):
        return "null"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if origin is list or hint is list:
        plural = {str: "strings", int: "integers", float: "numbers"}
        return f"a list of {plural.get(args[0], _describe(args[0]))}" if args else "a list"
    if origin is tuple or hint is tuple:
        if not args or args[-1] is Ellipsis:
            return "a list"
        kinds = {_describe(a) for a in args}
        plural = {"a number": "numbers", "an integer": "integers", "a string": "strings"}
        what = plural.get(kinds.pop(), "values") if len(kinds) == 1 else "values"
        return f"a list of {len(args)} {what}"
    if origin is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))
