"""Packaging promises: trkit stands alone, and both console scripts answer --help and --version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import trkit

BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=120)


def test_trkit_imports_without_open_clip_or_trkit_vlm():
    code = (
        "import sys, trkit, trkit.nn, trkit.decompose, trkit.rounding, trkit.io, trkit.cli; "
        "bad = [m for m in ('open_clip', 'trkit_vlm', 'torchvision') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = _run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_trkit_never_imports_trkit_vlm_in_source():
    root = Path(trkit.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py") if "trkit_vlm" in p.read_text()]
    assert offenders == []


@pytest.mark.parametrize(
    "script,words",
    [
        ("trkit", ["decompose", "info", "reconstruct"]),
        ("trkit-vlm", ["train", "eval", "table", "compress", "pretrain-small", "quickstart"]),
    ],
)
def test_console_scripts_help_and_version(script, words):
    exe = BIN / script
    if not exe.exists():
        pytest.skip(f"{script} console script not installed in this environment")
    help_ = _run(str(exe), "--help")
    assert help_.returncode == 0, help_.stderr
    for w in words:
        assert w in help_.stdout
    version = _run(str(exe), "--version")
    assert version.returncode == 0 and trkit.__version__ in version.stdout


@pytest.mark.parametrize(
    "argv", [["trkit-vlm", "--help"], ["trkit-vlm", "train", "-c", "x.yaml"], ["trkit-vlm", "table", "runs"]]
)
def test_trkit_vlm_without_the_vlm_extra_says_how_to_install_it(argv):
    # Simulate `pip install .` without extras: importing pillow fails as if it were not installed.
    code = f"import sys; sys.modules['PIL'] = None; from trkit_vlm.cli import main; sys.exit(main({argv[1:]!r}))"
    proc = _run(sys.executable, "-c", code)
    if argv[1] == "--help":
        assert proc.returncode == 0 and "'trkit[vlm]'" in proc.stdout  # argparse wraps the line
    else:
        assert proc.returncode == 2
        assert "needs the 'vlm' extra (missing module 'PIL')" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_trkit_public_names_load_lazily():
    # `import trkit.errors` (the CLIs' error classes) must not pay for torch; every public name still
    # resolves, to the same object as in the module that defines it.
    code = (
        "import sys, importlib, trkit.errors, trkit; "
        "assert 'torch' not in sys.modules, 'torch imported eagerly'; "
        "from trkit import TensorRing, round, contract, tr_svd; "
        "from trkit.ring import TensorRing as T; from trkit.rounding import round as r; "
        "assert TensorRing is T and round is r and contract is importlib.import_module('trkit.contract'); "
        "assert set(trkit.__all__) <= set(dir(trkit)); "
        "missing = [n for n in trkit.__all__ if getattr(trkit, n, None) is None]; "
        "assert not missing, missing; "
        "print('ok')"
    )
    proc = _run(sys.executable, "-c", code)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        trkit.nope  # noqa: B018
