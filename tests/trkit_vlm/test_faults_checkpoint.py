"""`trkit-vlm train` checkpoints under faults: a SIGKILL at each point of a checkpoint save, a full disk,
damaged or lost checkpoints, and resuming a run that had finished.

The reference is one uninterrupted run. A run killed anywhere and then resumed must end with bitwise
the same adapters and metrics, and log each epoch exactly once."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from _faults import full_disk, kill_at, killed_runs
from _helpers import make_coop_dataset, register_tiny, tiny_config
from safetensors.torch import load_file

from trkit_vlm.cli import main
from trkit_vlm.training.train import train

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights")

# Three epochs of two optimiser steps; random crops and flips, so the RNG state must survive a resume too.
OVER = {"optim.epochs": 3, "data.augment": True, "loss.lambda_text": 1.0}
SAME = ("base", "novel", "hm", "all", "final_train_loss", "final_train_acc", "epochs", "n_trainable")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    register_tiny()
    return make_coop_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """(config, metrics, adapters) of the uninterrupted run."""
    cfg = tiny_config(tmp_path_factory.mktemp("ref"), data_root, **OVER)
    metrics = train(cfg, progress=False)
    return cfg, metrics, load_file(cfg.run_dir() / "adapters.safetensors")


def _epochs_logged(run_dir: Path) -> list[int]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in records if r["type"] == "epoch"]


def _assert_same_as_reference(cfg, metrics: dict, reference) -> None:
    _, ref_metrics, ref_adapters = reference
    run = cfg.run_dir()
    adapters = load_file(run / "adapters.safetensors")
    assert adapters.keys() == ref_adapters.keys()
    for k in ref_adapters:
        assert torch.equal(adapters[k], ref_adapters[k]), k
    for k in SAME:
        assert metrics[k] == ref_metrics[k], k
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert len(metrics["epoch_time_s"]) == 3 and metrics["train_time_s"] >= sum(metrics["epoch_time_s"])
    assert _epochs_logged(run) == [1, 2, 3]
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # temps of the killed write removed


# (function, n-th matching call, text its arguments contain, kill after the call rather than before).
# The second checkpoint save (end of epoch 2) is the first with a checkpoint to replace.
KILL_POINTS = {
    "first-save-before-rename": ("os.replace", 1, "checkpoint.pt')", False),
    "before-linking-previous": ("os.link", 1, "checkpoint.pt", False),
    "after-linking-previous": ("os.link", 1, "checkpoint.pt", True),
    "before-previous-rename": ("os.replace", 1, "checkpoint.prev.pt')", False),
    "after-previous-rename": ("os.replace", 1, "checkpoint.prev.pt')", True),
    "mid-write": ("builtins.open", 2, ".checkpoint.pt.", True),
    "before-rename": ("os.replace", 2, "checkpoint.pt')", False),
    "after-rename": ("os.replace", 2, "checkpoint.pt')", True),
    "before-metrics": ("os.replace", 1, "metrics.json')", False),
}


def _kill_then_resume(tmp_path, data_root, reference, points) -> None:
    """Train in a child killed at each of ``points``, then resume here: same result as the reference."""
    cfgs = {point: tiny_config(tmp_path / point, data_root, **OVER) for point in points}
    runs = {}
    for point, cfg in cfgs.items():
        target, nth, match, after = KILL_POINTS[point]
        cfg_file = tmp_path / f"{point}.json"
        cfg_file.write_text(json.dumps(cfg.to_dict()))
        runs[point] = (kill_at(target, nth, match=match, after=after), f"train(load_config({str(cfg_file)!r}))")
    prelude = f"""
        import sys, warnings
        warnings.simplefilter("ignore")
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from _helpers import register_tiny
        from trkit_vlm.training.config import load_config
        from trkit_vlm.training.train import train as _train
        register_tiny()
        def train(cfg):
            _train(cfg, progress=False)
        """
    codes = killed_runs(prelude, runs)
    for point, cfg in cfgs.items():
        assert codes[point] == -signal.SIGKILL, f"{point}: the child was not killed there (exit status {codes[point]})"
        assert not (cfg.run_dir() / "metrics.json").exists(), point
        if point != "first-save-before-rename":  # a checkpoint had been saved: a complete one is there
            assert torch.load(cfg.run_dir() / "checkpoint.pt", weights_only=True)["epoch"] in (1, 2, 3), point
        resumed = train(cfg, progress=False, resume=True)
        _assert_same_as_reference(cfg, resumed, reference)


def test_a_kill_during_a_save_loses_nothing(tmp_path, data_root, reference):
    _kill_then_resume(tmp_path, data_root, reference, ("after-previous-rename", "mid-write", "before-metrics"))


@pytest.mark.slow
def test_a_kill_at_any_point_of_a_save_loses_nothing(tmp_path, data_root, reference):
    _kill_then_resume(tmp_path, data_root, reference, KILL_POINTS)


def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path, data_root, reference):
    cfg = tiny_config(tmp_path, data_root, **OVER)
    train(cfg, progress=False, stop_after_epoch=2)
    ckpt = cfg.run_dir() / "checkpoint.pt"
    assert torch.load(ckpt.with_suffix(".prev.pt"), weights_only=True)["epoch"] == 1
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=r"checkpoint.pt is corrupt .*; resuming from the previous checkpoint"):
        resumed = train(cfg, progress=False, resume=True)
    _assert_same_as_reference(cfg, resumed, reference)


def test_empty_checkpoint_is_one_error_line(tmp_path, data_root, capsys):
    cfg = tiny_config(tmp_path, data_root, **OVER)
    train(cfg, progress=False, stop_after_epoch=1)
    (cfg.run_dir() / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert main(["train", "-c", str(tmp_path / "c.json"), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("trkit-vlm train: error: checkpoint "), err
    assert "checkpoint.pt is corrupt or not a trkit checkpoint (0 bytes" in err
    assert "checkpoint.prev.pt is missing" in err


def test_a_lost_checkpoint_is_refused_not_restarted(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root, **OVER)
    train(cfg, progress=False, stop_after_epoch=2)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (cfg.run_dir() / name).unlink()
    with pytest.raises(ValueError, match=r"has no checkpoint, but its log.jsonl records finished epochs \[1, 2\]"):
        train(cfg, progress=False, resume=True)
    assert _epochs_logged(cfg.run_dir()) == [1, 2]  # the log is left as it was


def test_full_disk_during_a_checkpoint_keeps_the_last_one(tmp_path, data_root, reference, monkeypatch, capsys):
    cfg = tiny_config(tmp_path, data_root, **OVER)
    train(cfg, progress=False, stop_after_epoch=1)
    run = cfg.run_dir()
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    full_disk(monkeypatch, budget=100, match=lambda p: p.name.startswith(".checkpoint.pt."))
    assert main(["train", "-c", str(tmp_path / "c.json"), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot write {run / 'checkpoint.pt'}: No space left on device" in err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    _assert_same_as_reference(cfg, train(cfg, progress=False, resume=True), reference)


def test_resuming_a_finished_run_changes_nothing(reference):
    cfg, metrics, _ = reference
    run = cfg.run_dir()
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    again = train(cfg, progress=False, resume=True)
    assert again == metrics
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    before.pop(".lock"), after.pop(".lock")  # the lock file records who held the folder last
    assert after == before


def test_a_run_without_resume_starts_a_fresh_folder(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root, **OVER)
    train(cfg, progress=False)
    train(cfg, progress=False, stop_after_epoch=1)  # the same folder again, without --resume
    run = cfg.run_dir()
    assert not (run / "metrics.json").exists() and not (run / "adapters.safetensors").exists()
    assert not (run / "checkpoint.prev.pt").exists()  # the earlier run's checkpoints are gone
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert _epochs_logged(run) == [1]


def test_a_checkpoint_older_than_a_config_field_resumes_when_the_field_is_left_at_its_default(
    tmp_path, data_root, reference
):
    cfg = tiny_config(tmp_path, data_root, **OVER)
    train(cfg, progress=False, stop_after_epoch=2)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):  # as written before optim.skip_nonfinite existed
        path = cfg.run_dir() / name
        state = torch.load(path, weights_only=True)
        del state["fingerprint"]["optim"]["skip_nonfinite"]
        torch.save(state, path)
    other = tiny_config(tmp_path, data_root, **OVER, **{"optim.skip_nonfinite": True})
    with pytest.raises(ValueError, match=r"different run \(differs in: optim.skip_nonfinite\)"):
        train(other, progress=False, resume=True)
    _assert_same_as_reference(cfg, train(cfg, progress=False, resume=True), reference)
