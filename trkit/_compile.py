"""Keep Python-only planning code out of ``torch.compile`` graphs without importing dynamo early.

``torch.compiler.disable`` imports ``torch._dynamo`` when it decorates, which costs seconds at
import time. Nothing can be compiling before dynamo is imported, so :func:`not_traced` waits:
it calls the function directly until ``torch._dynamo`` is loaded, and the disabled version after.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def not_traced(fn: F) -> F:
    """``torch.compiler.disable(fn)``, applied on the first call made once dynamo is loaded."""
    disabled: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal disabled
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return call  # type: ignore[return-value]  # same signature as fn
