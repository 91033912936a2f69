"""The ``trkit-vlm`` command line: argument parsers and printing only; the work happens in the library.

``main.py`` builds the top-level parser; each verb is one module here exposing ``register(subparsers)``.
"""

from trkit_vlm.cli.main import main

__all__ = ["main"]
