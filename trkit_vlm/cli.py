"""The ``trkit-vlm`` command line. Each subcommand lives in ``trkit_vlm/commands/<name>.py`` and
exposes ``register(subparsers)``, which adds its parser and sets ``func``."""
from __future__ import annotations

import argparse
import importlib
import sys

from trkit_vlm._version import __version__

# Subcommand name -> module under trkit_vlm.commands (imported lazily so --help stays fast).
COMMANDS = {
    "train": "train",
    "eval": "evaluate",
    "table": "table",
    "compress": "compress",
    "pretrain-small": "pretrain_small",
    "quickstart": "quickstart",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trkit-vlm",
        description="Adapt CLIP models with AdaRing cross-layer tensor-ring adapters (and the MMA baseline).")
    parser.add_argument("--version", action="version", version=f"trkit-vlm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(f"trkit_vlm.commands.{module}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
