"""Fault injection for the reliability tests: full disks, read-only and tiny file systems, kills
in the middle of a write, and memory limits.

- :func:`full_disk` patches ``open`` so writes to matching files fail with ``ENOSPC`` after a
  byte budget (the first bytes do reach the file, as on a real disk filling up).
- :func:`tiny_fs` mounts a small (or read-only) tmpfs; the test is skipped where mounting is
  not allowed (not root, no mount namespace rights).
- :func:`start_writer_that_hangs` starts a child process that begins an atomic write and stops
  half way, so the test can ``SIGKILL`` it at a known point.
- :func:`kill_at` is Python source for a child that makes it ``SIGKILL`` itself at the n-th
  call of a chosen function (``os.replace`` onto a checkpoint, say), before or after the call.
- :func:`killed_runs` runs several such children cheaply: one child imports once, then forks a
  grandchild per fault, so a dozen kill points cost one start-up of torch.
- :func:`run_limited` calls a command line's ``main`` in a child, each call under ``RLIMIT_AS``
  = the child's size just before the call plus a budget, and returns exit codes and stderr.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


class _FullFile:
    """A file object whose writes fail with ENOSPC once ``budget`` bytes have been written."""

    def __init__(self, real, budget: list[int]):
        self._real, self._budget = real, budget

    def write(self, data) -> int:
        data = memoryview(data).cast("B") if not isinstance(data, str) else data
        room = self._budget[0]
        if len(data) > room:
            self._real.write(data[:room])
            self._budget[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget[0] -= len(data)
        return self._real.write(data)

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()


def full_disk(monkeypatch, budget: int = 0, match=lambda path: True) -> None:
    """Make every later ``open(path, "w...")`` with ``match(path)`` true fail with ENOSPC after
    ``budget`` bytes in total (counted over all such files)."""
    real_open = builtins.open
    left = [budget]

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike)) and match(Path(file)):
            return _FullFile(f, left)
        return f

    monkeypatch.setattr(builtins, "open", fake_open)


@contextlib.contextmanager
def tiny_fs(folder: Path, size: str = "64k", readonly: bool = False):
    """A tmpfs of ``size`` mounted on ``folder`` (read-only if asked); skips the test if not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'mount failed'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    return env


def start_writer_that_hangs(target: Path, write_code: str, after_bytes: int = 10) -> tuple[subprocess.Popen, Path]:
    """Start a child running ``write_code`` (Python using ``target``) whose file writes stop for good
    after ``after_bytes`` bytes; returns the process and a flag file that appears once it hangs."""
    flag = target.parent / f"hung-{uuid.uuid4().hex[:6]}"
    code = textwrap.dedent(
        f"""
        import builtins, os, time
        from pathlib import Path
        real_open, left = builtins.open, [{after_bytes}]
        class Slow:
            def __init__(self, f): self.f = f
            def write(self, data):
                data = memoryview(data).cast("B")
                if len(data) > left[0]:
                    self.f.write(data[: left[0]]); self.f.flush()
                    Path({str(flag)!r}).write_text("hung")
                    time.sleep(600)
                left[0] -= len(data)
                return self.f.write(data)
            def __getattr__(self, name): return getattr(self.f, name)
            def __enter__(self): return self
            def __exit__(self, *a): self.f.close()
        def fake_open(file, mode="r", *a, **k):
            f = real_open(file, mode, *a, **k)
            return Slow(f) if "w" in mode and str(file).endswith(".tmp") else f
        builtins.open = fake_open
        target = Path({str(target)!r})
        """
    ) + textwrap.dedent(write_code)
    proc = subprocess.Popen([sys.executable, "-c", code], env=child_env(), cwd=REPO)
    deadline = time.time() + 60
    while not flag.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"the writer child did not reach the write (exit code {proc.poll()})")
        time.sleep(0.05)
    return proc, flag


def kill_at(target: str, nth: int = 1, *, match: str = "", after: bool = False) -> str:
    """Python source that, run first in a child, makes it SIGKILL itself at the ``nth`` call of
    ``target`` (``"module.function"``, e.g. ``"os.replace"``) whose arguments, as text, contain
    ``match``: just before the call, or just after it when ``after``. Fault points for kill tests."""
    module, attr = target.rsplit(".", 1)
    return textwrap.dedent(
        f"""
        import importlib as _il, os as _os, signal as _sig
        _mod = _il.import_module({module!r})
        _real, _seen = getattr(_mod, {attr!r}), [0]
        def _killing(*args, **kwargs):
            hit = {match!r} in repr(args) + repr(kwargs)
            if hit:
                _seen[0] += 1
            if hit and _seen[0] == {nth} and not {after}:
                _os.kill(_os.getpid(), _sig.SIGKILL)
            out = _real(*args, **kwargs)
            if hit and _seen[0] == {nth} and {after}:
                _os.kill(_os.getpid(), _sig.SIGKILL)
            return out
        setattr(_mod, {attr!r}, _killing)
        """
    )


_FORKING_CHILD = """
import json, os, sys
PRELUDE
results = {}
for name, (fault, body) in RUNS.items():
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            exec(fault, {})
            exec(body, dict(globals()))
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    results[name] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
print(json.dumps(results))
"""


def killed_runs(prelude: str, runs: dict[str, tuple[str, str]], timeout: float = 600) -> dict[str, int]:
    """Run each ``name: (fault, body)`` in its own process and return its exit status (``-9`` when it
    was killed). ``prelude`` (imports, set-up) runs once in a child, which then forks a grandchild per
    run that executes ``fault`` (e.g. a :func:`kill_at`) and then ``body`` (which sees the prelude's names).
    """
    code = _FORKING_CHILD.replace("PRELUDE", textwrap.dedent(prelude)).replace(
        "RUNS", repr({k: (textwrap.dedent(f), textwrap.dedent(b)) for k, (f, b) in runs.items()})
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


_LIMITED_CHILD = """
import contextlib, importlib, io, json, resource, sys, traceback
module, func = ENTRY.split(":")
main = getattr(importlib.import_module(module), func)

def vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

def call(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        except BaseException:
            rc, _ = "exception", traceback.print_exc()
    return rc, err.getvalue()

for argv in WARMUP:
    call(argv)
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
results = {}
for name, (argv, budget) in STEPS.items():
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + budget, hard))
    rc, err = call(argv)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    results[name] = {"rc": rc, "stderr": err}
print(json.dumps(results))
"""


def run_limited(entry: str, steps: dict, warmup: list = (), timeout: float = 300) -> dict:
    """Call a CLI ``main`` (``entry`` = ``"module:function"``) in one child process, once per step
    ``name: (argv, budget_bytes)``, each under a soft ``RLIMIT_AS`` of the child's size just before
    the call plus the budget (so imports, thread pools and the ``warmup`` argvs do not count).

    Returns ``{name: {"rc": exit code or "exception", "stderr": text}}``; stdout is discarded.
    """
    code = (
        _LIMITED_CHILD.replace("ENTRY", repr(entry))
        .replace("WARMUP", repr([list(map(str, a)) for a in warmup]))
        .replace("STEPS", repr({k: ([str(a) for a in argv], int(b)) for k, (argv, b) in steps.items()}))
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
