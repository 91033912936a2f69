"""The ``trkit-vlm`` command line. Each subcommand lives in ``trkit_vlm/cli/<name>.py`` and
exposes ``register(subparsers)``, which adds its parser and sets ``func``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from trkit_vlm._version import __version__

# Subcommand name -> (module under trkit_vlm.cli, one-line help shown when it cannot be imported).
COMMANDS = {
    "train": ("train", "train adapters few-shot (base-to-novel protocol)"),
    "eval": ("evaluate", "evaluate a trained run"),
    "table": ("table", "aggregate runs into base-to-novel tables"),
    "compress": ("compress", "compress trained MMA adapters into AdaRing"),
    "pretrain-small": ("pretrain_small", "pre-train the small Fashion-MNIST CLIP"),
    "quickstart": ("quickstart", "the AdaRing quickstart on the project's small CLIP"),
}
# Third-party packages of the `vlm` extra; without them the commands explain how to install it.
VLM_EXTRA = {"open_clip", "PIL", "torchvision", "matplotlib", "yaml"}


def _missing_extra(name: str, help_: str, missing: str, subparsers) -> None:
    def run(args) -> int:  # main() turns this into the one-line install hint
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    # No option parsing here (prefix_chars that never occur), so any arguments reach run().
    sub = subparsers.add_parser(
        name, help=f"{help_} [needs: pip install 'trkit[vlm]']", add_help=False, prefix_chars="\0"
    )
    sub.add_argument("rest", nargs=argparse.REMAINDER)
    sub.set_defaults(func=run)


def _missing_vlm_modules() -> list[str]:
    """The modules of the `vlm` extra that are not installed, found without importing them (fast)."""
    missing = []
    for name in sorted(VLM_EXTRA):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (tests)
            found = sys.modules.get(name) is not None
        if not found:
            missing.append(name)
    return missing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trkit-vlm",
        description="Adapt CLIP models with AdaRing cross-layer tensor-ring adapters (and the MMA baseline).",
    )
    parser.add_argument("--version", action="version", version=f"trkit-vlm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    missing = _missing_vlm_modules()
    for name, (module, help_) in COMMANDS.items():
        if missing:
            _missing_extra(name, help_, missing[0], subparsers)
        else:
            importlib.import_module(f"trkit_vlm.cli.{module}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as err:  # bad input: one line, no traceback
        print(f"trkit-vlm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # commands import their heavy dependencies lazily
        if (err.name or "").split(".")[0] not in VLM_EXTRA:
            raise
        print(
            f"trkit-vlm {args.command}: needs the 'vlm' extra (missing module '{err.name}'): pip install 'trkit[vlm]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
