"""The error policy both command lines share (trkit.cli_runner): bad input is one line and exit 2,
a bug is a traceback, a note on how to report it, and exit 1; and --help does not import torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import trkit.cli
import trkit_vlm.cli as vlm_cli
from trkit.errors import InputError

CLIS = {"trkit": trkit.cli.main, "trkit-vlm": vlm_cli.main}


def _one_error_line(err: str, where: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{where}: error: ") and "Traceback" not in err, err
    return lines[0]


def test_trkit_bad_input_is_one_line(tmp_path, capsys):
    assert trkit.cli.main(["info", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in _one_error_line(capsys.readouterr().err, "trkit info")


def test_trkit_vlm_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("- a list, not a mapping\n")
    assert vlm_cli.main(["train", "-c", str(tmp_path / "c.yaml"), "--print-config"]) == 2
    assert "a run config is a mapping, got list" in _one_error_line(capsys.readouterr().err, "trkit-vlm train")
    assert vlm_cli.main(["train", "--set", "optim.lr=fast", "--print-config"]) == 2
    line = _one_error_line(capsys.readouterr().err, "trkit-vlm train")
    assert "optim.lr must be a number, got 'fast'" in line
    assert vlm_cli.main(["quickstart", "--seeds", "a,b"]) == 2
    assert "--seeds must be comma-separated integers" in _one_error_line(
        capsys.readouterr().err, "trkit-vlm quickstart"
    )


def test_os_errors_are_one_line(tmp_path, capsys):
    # A folder where a file is expected (IsADirectoryError) and a missing file (FileNotFoundError).
    (tmp_path / "c.json").mkdir()
    assert vlm_cli.main(["train", "-c", str(tmp_path / "c.json"), "--print-config"]) == 2
    _one_error_line(capsys.readouterr().err, "trkit-vlm train")
    assert vlm_cli.main(["table", str(tmp_path / "no-runs")]) == 2
    assert "results folder not found" in _one_error_line(capsys.readouterr().err, "trkit-vlm table")


@pytest.mark.parametrize("prog", sorted(CLIS))
@pytest.mark.parametrize("exc", [KeyError("oops"), TypeError("unsupported operand"), ValueError("not ours")])
def test_a_bug_shows_its_traceback_and_how_to_report_it(prog, exc, monkeypatch, capsys, tmp_path):
    # Any exception that is not a TrkitError or an OSError is a bug, even a ValueError or TypeError.
    def broken(args):
        raise exc

    module = trkit.cli if prog == "trkit" else vlm_cli
    real = module.build_parser

    def parser_with_broken_command():
        parser = real()
        parser.set_defaults(func=broken)
        for sub in parser._subparsers._group_actions[0].choices.values():
            sub.set_defaults(func=broken)
        return parser

    monkeypatch.setattr(module, "build_parser", parser_with_broken_command)
    argv = ["info", "x.safetensors"] if prog == "trkit" else ["table", str(tmp_path)]
    assert CLIS[prog](argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and type(exc).__name__ in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{prog} {argv[0]}: this is a bug in trkit") and "report it" in last
    assert f"`{prog} {argv[0]} " in last and "python " in last and "torch " in last


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    real = trkit.cli.build_parser

    def parser():
        p = real()
        for sub in p._subparsers._group_actions[0].choices.values():
            sub.set_defaults(func=interrupted)
        return p

    monkeypatch.setattr(trkit.cli, "build_parser", parser)
    assert trkit.cli.main(["info", "x"]) == 130
    assert capsys.readouterr().err.strip() == "trkit info: interrupted"


def test_project_errors_raised_in_a_command_are_one_line(monkeypatch, capsys):
    def refuses(args):
        raise InputError("a message\nover two lines")

    real = vlm_cli.build_parser

    def parser():
        p = real()
        p._subparsers._group_actions[0].choices["eval"].set_defaults(func=refuses)
        return p

    monkeypatch.setattr(vlm_cli, "build_parser", parser)
    assert vlm_cli.main(["eval", "run"]) == 2
    assert (
        _one_error_line(capsys.readouterr().err, "trkit-vlm eval") == "trkit-vlm eval: error: a message over two lines"
    )


def test_usage_errors_exit_2_as_argparse_does(capsys):
    for main in CLIS.values():
        with pytest.raises(SystemExit) as exit_:
            main(["no-such-command"])
        assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_imports_no_heavy_module():
    """`--help` of both CLIs and of every verb builds the parsers without torch or open_clip (< 2 s)."""
    code = """
import contextlib, io, json, sys
import trkit.cli, trkit_vlm.cli
vlm_verbs = [v.NAME for v in trkit_vlm.cli.verb_modules()]
clis = ((trkit.cli.main, ["decompose", "info", "reconstruct"]), (trkit_vlm.cli.main, vlm_verbs))
for main, verbs in clis:
    for argv in [["--help"]] + [[verb, "--help"] for verb in verbs]:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main(argv)
heavy = ("torch", "open_clip", "numpy", "trkit_vlm.training")
print(json.dumps(sorted(n for n in heavy if n in sys.modules)))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # trkit.cli imports numpy at its top (it reads arrays); torch and open_clip must wait for a command.
    assert [m for m in json.loads(proc.stdout) if m != "numpy"] == []
