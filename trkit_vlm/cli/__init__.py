"""The ``trkit-vlm`` command line: one parser, one module per verb, the shared error policy.

A verb is a module here (listed in ``VERBS``) that defines ``NAME``, ``HELP`` (one line),
``DESCRIPTION``, ``EXAMPLES`` (shell lines, or None), ``add_arguments(parser)`` and ``run(args)``.
Verb modules import nothing heavy at the top (torch, open_clip, the library): ``run`` does, so
``trkit-vlm --help`` answers in well under a second. Errors follow :mod:`trkit.cli_runner`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from types import ModuleType

from trkit.cli_runner import run_cli
from trkit_vlm._version import __version__

# The verb modules under trkit_vlm.cli, in the order --help lists them.
VERBS = ("train", "evaluate", "table", "compress", "pretrain_small", "quickstart", "benchmark")
# Third-party packages of the `vlm` extra; without them the commands explain how to install it.
VLM_EXTRA = {"open_clip", "PIL", "torchvision", "matplotlib", "yaml"}
VLM_HINT = "needs the 'vlm' extra (missing module '{module}'): pip install 'trkit[vlm]'"


def verb_modules() -> list[ModuleType]:
    """The verb modules, imported (they are light)."""
    return [importlib.import_module(f"trkit_vlm.cli.{name}") for name in VERBS]


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


def _missing_extra(verb: ModuleType, missing: str, subparsers) -> None:
    def run(args) -> int:  # the runner turns this into the one-line install hint
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    # No option parsing here (prefix_chars that never occur), so any arguments reach run().
    sub = subparsers.add_parser(
        verb.NAME, help=f"{verb.HELP} [needs: pip install 'trkit[vlm]']", add_help=False, prefix_chars="\0"
    )
    sub.add_argument("rest", nargs=argparse.REMAINDER)
    sub.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trkit-vlm",
        description="Adapt CLIP models with AdaRing cross-layer tensor-ring adapters (and the MMA baseline).",
    )
    parser.add_argument("--version", action="version", version=f"trkit-vlm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    missing = _missing_vlm_modules()
    for verb in verb_modules():
        if missing:
            _missing_extra(verb, missing[0], subparsers)
            continue
        sub = subparsers.add_parser(
            verb.NAME,
            help=verb.HELP,
            description=verb.DESCRIPTION,
            epilog=verb.EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        verb.add_arguments(sub)
        sub.set_defaults(func=verb.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``trkit-vlm`` command (errors: ``trkit.cli_runner``)."""
    return run_cli(build_parser(), argv, dict.fromkeys(VLM_EXTRA, VLM_HINT))


if __name__ == "__main__":
    sys.exit(main())
