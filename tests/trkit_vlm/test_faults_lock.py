"""One training run per run folder: a second `trkit-vlm train` into a folder in use stops with one error
line naming the holder (its ranks too, under torchrun), and a killed holder does not block the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _faults import REPO, child_env
from _helpers import TINY_CONFIG, make_coop_dataset, register_tiny, tiny_config

from trkit_vlm.cli import main
from trkit_vlm.training.run_folder import lock_run_folder

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    register_tiny()
    return make_coop_dataset(tmp_path_factory.mktemp("tiny"))


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """A child process that takes the run folder's lock and waits; returns once it holds it."""
    code = (
        "import sys, time\n"
        "from trkit_vlm.training.run_folder import lock_run_folder\n"
        f"lock = lock_run_folder({str(run_dir)!r})\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=child_env(), cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, data_root, capsys):
    cfg = tiny_config(tmp_path, data_root)
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    argv = ["train", "-c", str(tmp_path / "c.json"), "--no-progress"]
    holder = _hold_lock(cfg.run_dir())
    try:
        for extra in ([], ["--resume"]):
            assert main(argv + extra) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1, err
            assert f"run folder {cfg.run_dir()} is in use by another training run (pid {holder.pid} on host " in err
        assert sorted(p.name for p in cfg.run_dir().iterdir()) == [".lock"]  # nothing was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the dead holder's lock: the next run goes ahead.
    assert main(argv) == 0
    assert (cfg.run_dir() / "metrics.json").is_file()


def test_the_lock_is_released_when_train_returns_or_fails(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root)
    assert main(["train", "-c", _write(tmp_path, cfg), "--no-progress"]) == 0
    lock_run_folder(cfg.run_dir()).release()  # free after success
    bad = tiny_config(tmp_path, data_root, **{"data.shots": 9})  # fails in few-shot sampling
    assert main(["train", "-c", _write(tmp_path, bad), "--no-progress"]) == 2
    lock_run_folder(bad.run_dir()).release()  # free after an error


def _write(tmp_path: Path, cfg) -> str:
    path = tmp_path / f"c{time.monotonic_ns()}.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return str(path)


@pytest.mark.slow
def test_every_rank_stops_when_the_folder_is_in_use(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root, **{"optim.batch_size": 4, "model_config": TINY_CONFIG})
    holder = _hold_lock(cfg.run_dir())
    try:
        env = {**child_env(), "HF_HUB_OFFLINE": "1"}
        argv = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trkit_vlm"]
        proc = subprocess.run(
            [sys.executable, *argv, "train", "-c", _write(tmp_path, cfg), "--no-progress"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,  # a rank left waiting for rank 0 would hang until this
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "trkit-vlm train: error:" in ln]
    assert len(lines) == 2, proc.stderr[-3000:]  # one line per rank, no traceback
    assert any(f"in use by another training run (pid {holder.pid}" in ln for ln in lines)
    assert any("rank 0 stopped: run folder" in ln for ln in lines)
    # Neither rank hit a bug (the traceback torchrun prints about its failed children is its own).
    assert "this is a bug" not in proc.stderr and sorted(os.listdir(cfg.run_dir())) == [".lock"]


def test_without_lock_support_training_warns_and_goes_on(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match=r"cannot lock .*\.lock \(No locks available\): a second run into this"):
        lock = lock_run_folder(tmp_path / "run")
    lock.release()
