"""The ``trkit`` command line: decompose tensors, inspect and reconstruct ring files."""
from __future__ import annotations

import argparse
import sys

from trkit._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trkit", description="Tensor-ring toolkit: decompose tensors, inspect and reconstruct ring files.")
    parser.add_argument("--version", action="version", version=f"trkit {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
