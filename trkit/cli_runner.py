"""The error policy of the ``trkit`` and ``trkit-vlm`` command lines, in one place.

- A problem the user can fix is one line on stderr, ``<prog> <command>: error: <message>``, and exit
  status 2: any :class:`trkit.errors.TrkitError` (the project raises those on purpose, ``InputError``
  among them) and any ``OSError`` (file not found, permission denied, read-only file system, disk full,
  a folder where a file was expected).
- A missing optional package is one line with the install hint, exit status 2.
- Argument errors exit 2 with argparse's own usage message; Ctrl-C exits 130 with one line.
- Anything else is a bug: the traceback, then a line saying so and what to put in a report (the
  command line and the versions), exit status 1.

No torch import here: ``--help`` must stay fast.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from collections.abc import Sequence

from trkit.env import versions
from trkit.errors import TrkitError

__all__ = ["run_cli", "error_line"]


def error_line(err: BaseException) -> str:
    """The message of ``err`` on one line (the exception type when it has none)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def run_cli(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    optional_packages: dict[str, str] | None = None,
) -> int:
    """Parse ``argv`` and run the chosen command's ``func(args)`` under the error policy; the exit status.

    Args:
        parser: a parser whose subcommands set ``command`` (their name) and ``func`` (what to run).
        argv: the arguments (default ``sys.argv[1:]``).
        optional_packages: top-level module name -> install hint (``{module}`` is replaced by the
            missing module's name), for the packages a command may lack.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)  # usage errors: argparse prints them and exits 2
    if getattr(args, "command", None) is None:
        parser.print_help()
        return 0
    where = f"{parser.prog} {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:
        hint = (optional_packages or {}).get((err.name or "").split(".")[0])
        if hint is None:
            return _bug(where, parser.prog, argv)
        print(f"{where}: error: {hint.format(module=err.name)}", file=sys.stderr)
        return 2
    except (TrkitError, OSError) as err:
        print(f"{where}: error: {error_line(err)}", file=sys.stderr)
        return 2
    except Exception:
        return _bug(where, parser.prog, argv)


def _bug(where: str, prog: str, argv: list[str]) -> int:
    traceback.print_exc()
    found = ", ".join(f"{k} {v}" for k, v in versions().items())
    print(
        f"{where}: this is a bug in trkit, not a problem with your input. Please report it on the project's "
        f"issue tracker with the traceback above, the command `{shlex.join([prog, *argv])}` and: {found}",
        file=sys.stderr,
    )
    return 1
