"""The errors trkit (and the packages built on it) raise on purpose.

Every problem the caller can fix (a wrong shape, an impossible rank, a NaN in the data, a corrupt or
missing file, a bad option) is raised as a :class:`TrkitError`. The command lines print those as one
``error:`` line with exit code 2; any other exception is a bug and keeps its traceback.

The classes also derive from the built-in type a Python user would expect (``ValueError``,
``TypeError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["TrkitError", "InputError", "InputTypeError"]


class TrkitError(Exception):
    """Base of every error raised on purpose by trkit and the packages built on it."""


class InputError(TrkitError, ValueError):
    """A value the caller gave cannot be used (shape, rank, tolerance, option, file contents)."""


class InputTypeError(TrkitError, TypeError):
    """An argument of the wrong type."""
