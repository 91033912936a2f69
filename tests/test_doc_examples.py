"""Every shell example a user reads (README.md, CONTRIBUTING.md, docs/*.md, the EXAMPLES of ``trkit-vlm <verb> --help``)
parses with the real command-line parsers, and every repository file it names exists. The fast ones run:
``trkit info`` / ``trkit reconstruct`` on a ring file made here, ``trkit-vlm train`` with
``--print-config`` (the config files and overrides resolve), ``make`` targets exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import trkit
import trkit.cli
import trkit_vlm.cli

REPO = Path(__file__).resolve().parents[1]
SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)
PROGRAMS = ("trkit", "trkit-vlm", "torchrun", "python", "make")
# Top-level folders of the repository: a path under one of them must exist. Ignored folders (output/,
# runs/, site/: what commands write) are not part of the repository even where a checkout has them.
_IGNORED = {ln.strip().strip("/") for ln in (REPO / ".gitignore").read_text().splitlines() if ln.strip().endswith("/")}
_IGNORED |= {"output", "outputs", "site", "build", "dist"}
REPO_DIRS = tuple(
    p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED
)


def _shell_lines(text: str) -> list[str]:
    """Command lines of a shell snippet: continuations joined, prompts dropped, one line per value of
    the ``for`` loops around it."""
    text = text.replace("\\\n", " ")
    loops = re.findall(r"for (\w+) in ([^;]+);", text)
    lines = []
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ").strip()
        if line.split(" ", 1)[0] not in PROGRAMS:
            continue
        variants = [line]
        for var, values in loops:
            variants = [v.replace(f"${{{var}}}", x).replace(f"${var}", x) for v in variants for x in values.split()]
        lines += list(dict.fromkeys(variants))
    return lines


def _examples() -> list[tuple[str, str]]:
    found = []
    for doc in [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for block in SHELL_BLOCK.findall(doc.read_text()):
            found += [(str(doc.relative_to(REPO)), line) for line in _shell_lines(block)]
    for verb in trkit_vlm.cli.verb_modules():
        found += [(f"trkit-vlm {verb.NAME} --help", line) for line in _shell_lines(verb.EXAMPLES or "")]
    return found


EXAMPLES = _examples()


def _argv(line: str) -> tuple[str, list[str]]:
    """(program, arguments) with ``python -m trkit_vlm`` and ``torchrun ... -m trkit_vlm`` as trkit-vlm."""
    words = shlex.split(line, comments=True)
    if words[0] in ("torchrun", "python") and "-m" in words:
        module = words[words.index("-m") + 1]
        return module.replace("_", "-"), words[words.index("-m") + 2 :]
    return words[0], words[1:]


def test_the_docs_have_examples_to_check():
    sources = {src for src, _ in EXAMPLES}
    assert {"README.md", "docs/cli.md", "trkit-vlm train --help"} <= sources
    assert len(EXAMPLES) > 30


@pytest.mark.parametrize("source,line", EXAMPLES, ids=[f"{s}: {ln[:60]}" for s, ln in EXAMPLES])
def test_example_parses_and_names_existing_files(source, line):
    program, argv = _argv(line)
    for word in argv:
        path = word.rstrip("/")
        if path.split("/", 1)[0] in REPO_DIRS and "/" in path:
            assert (REPO / path).exists(), f"{source}: {line!r} names {path}, which is not in the repository"
    if program == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M)
        assert set(argv) <= set(targets), f"{source}: {line!r}: no such make target"
    elif program == "python":
        assert argv[0] == "-c" or (REPO / argv[0]).is_file(), f"{source}: {line!r}"
    else:
        parser = {"trkit": trkit.cli.build_parser, "trkit-vlm": trkit_vlm.cli.build_parser}[program]()
        args = parser.parse_args(argv)  # an unknown verb or option exits 2 here
        assert args.command is not None


def _ring_file_examples() -> list[tuple[str, str]]:
    return [(s, ln) for s, ln in EXAMPLES if _argv(ln)[0] == "trkit" and _argv(ln)[1][0] in ("info", "reconstruct")]


@pytest.mark.parametrize("source,line", _ring_file_examples())
def test_ring_file_examples_run(source, line, tmp_path, monkeypatch, capsys):
    _, argv = _argv(line)
    monkeypatch.chdir(tmp_path)
    trkit.save(trkit.TensorRing.random((4, 5, 6), 2, seed=0), argv[1])
    assert trkit.cli.main(argv) == 0, capsys.readouterr().err


def _train_examples() -> list[tuple[str, str]]:
    """Train examples that resolve alone (``--init-adapters`` names what an earlier command wrote: parsed only)."""
    return [
        (s, ln)
        for s, ln in EXAMPLES
        if _argv(ln)[0] == "trkit-vlm" and _argv(ln)[1][0] == "train" and "--init-adapters" not in _argv(ln)[1]
    ]


@pytest.mark.parametrize("source,line", _train_examples())
def test_train_examples_resolve_their_config(source, line, monkeypatch, capsys):
    """The config file, the shortcuts and the overrides of each example give a valid run config."""
    _, argv = _argv(line)
    monkeypatch.chdir(REPO)
    argv = [a for a in argv if a != "--resume"] + ["--print-config"]
    assert trkit_vlm.cli.main(argv) == 0, capsys.readouterr().err
    assert '"method"' in capsys.readouterr().out
