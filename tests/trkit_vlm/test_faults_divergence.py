"""Diverged training: a NaN/inf loss stops the run with one error line naming epoch, step and lr, and no
metrics; `optim.skip_nonfinite` skips such steps and counts them; non-finite learning rates are refused;
metrics are strict JSON; `trkit-vlm table` leaves out runs with non-finite values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _helpers import make_coop_dataset, register_tiny, tiny_config
from safetensors.torch import load_file

from trkit_vlm.cli import main
from trkit_vlm.losses import GeneralizationAwareLoss
from trkit_vlm.training.divergence import TrainingDiverged
from trkit_vlm.training.train import train

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    register_tiny()
    return make_coop_dataset(tmp_path_factory.mktemp("tiny"))


def _strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which strict JSON parsers refuse")

    return json.loads(path.read_text(), parse_constant=refuse)


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def nan_at_call(monkeypatch):
    """Make the training loss NaN at the given calls of the loss (1-based; two per epoch here)."""

    def install(*calls: int) -> None:
        real, seen = GeneralizationAwareLoss.forward, [0]

        def forward(self, *args, **kwargs):
            loss, parts = real(self, *args, **kwargs)
            seen[0] += 1
            return (loss * float("nan") if seen[0] in calls else loss), parts

        monkeypatch.setattr(GeneralizationAwareLoss, "forward", forward)

    return install


def test_a_nan_loss_stops_the_run_without_metrics(tmp_path, data_root, nan_at_call, capsys):
    cfg = tiny_config(tmp_path, data_root, **{"optim.epochs": 3})
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    nan_at_call(3)  # epoch 2, first step (2 optimiser steps per epoch)
    assert main(["train", "-c", str(tmp_path / "c.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "trkit-vlm train: error: training diverged: the loss is nan at epoch 2, step 3 (lr " in err
    run = cfg.run_dir()
    assert not (run / "metrics.json").exists() and not (run / "adapters.safetensors").exists()
    log = _log(run)
    assert log[-1]["type"] == "error" and (log[-1]["epoch"], log[-1]["step"]) == (2, 3)
    assert [r["epoch"] for r in log if r["type"] == "epoch"] == [1]


def test_a_too_large_learning_rate_is_caught(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root, method="adaring", **{"optim.epochs": 3, "optim.lr": 1e6})
    with pytest.raises(TrainingDiverged, match=r"the loss is nan at epoch \d, step \d \(lr [0-9.e+]+\); no metrics"):
        train(cfg, progress=False)
    assert not (cfg.run_dir() / "metrics.json").exists()


def test_skip_nonfinite_skips_and_counts(tmp_path, data_root, nan_at_call):
    cfg = tiny_config(tmp_path, data_root, **{"optim.epochs": 3, "optim.skip_nonfinite": True, "log_every": 1})
    nan_at_call(3, 6)
    metrics = train(cfg, progress=False)
    run = cfg.run_dir()
    assert metrics["skipped_steps"] == 2 and _strict_json(run / "metrics.json") == metrics
    assert math.isfinite(metrics["final_train_loss"])
    log = _log(run)
    assert [r["skipped_steps"] for r in log if r["type"] == "epoch"] == [0, 1, 1]  # steps 3 and 6
    assert [r["loss"] is None for r in log if r["type"] == "step"] == [False, False, True, False, False, True]
    for line in (run / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"log.jsonl holds {c}"))
    adapters = load_file(run / "adapters.safetensors")
    assert all(torch.isfinite(t).all() for t in adapters.values())


def test_a_skipped_step_changes_nothing_and_keeps_the_schedule(tmp_path, data_root, nan_at_call, monkeypatch):
    # Parameters after each optimiser step, in the optimiser's order.
    after_step: list[list[torch.Tensor]] = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        after_step.append([p.detach().clone() for g in self.param_groups for p in g["params"]])
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    common = {"optim.epochs": 2, "loss.lambda_text": 1.0}
    train(tiny_config(tmp_path / "ref", data_root, **common), progress=False)
    reference, after_step[:] = list(after_step), []
    cfg = tiny_config(tmp_path / "skip", data_root, **common, **{"optim.skip_nonfinite": True})
    nan_at_call(4)  # the last of the 4 steps
    train(cfg, progress=False)
    assert len(reference) == 4 and len(after_step) == 3  # the NaN step did not reach the optimiser
    for mine, ref in zip(after_step, reference[:3]):  # steps 1-3: same batches and learning rates
        assert all(torch.equal(a, b) for a, b in zip(mine, ref))
    saved = load_file(cfg.run_dir() / "adapters.safetensors")  # = the parameters after step 3
    assert all(any(torch.equal(t, p) for p in after_step[-1]) for t in saved.values())


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "0", "-0.001"])
def test_a_learning_rate_that_is_not_positive_and_finite_is_refused(tmp_path, data_root, capsys, value):
    cfg = tiny_config(tmp_path, data_root)
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert main(["train", "-c", str(tmp_path / "c.json"), "--set", f"optim.lr={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optim.lr must be a finite number > 0, got " in err, err
    assert not cfg.run_dir().exists()


def test_metrics_are_strict_json(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root)
    assert _strict_json(Path(train(cfg, progress=False)["run_dir"]) / "metrics.json")["epochs"] == 1


def test_table_leaves_out_runs_with_non_finite_values(tmp_path, capsys):
    good = {"dataset": "d", "method": "mma", "shots": 2, "seed": 1, "base": 80.0, "novel": 60.0, "hm": 68.57}
    diverged = {**good, "seed": 2, "base": 50.0, "novel": 50.0, "hm": 50.0, "final_train_loss": float("nan")}
    for run in (good, diverged):
        folder = tmp_path / "out" / f"seed{run['seed']}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(run))  # NaN as Python writes it (not strict JSON)
    assert main(["table", str(tmp_path / "out"), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "| mma | 2 | 1 | 80.00 ± 0.00 | 60.00 ± 0.00 |" in out  # the mean of the good run alone
    assert f"- {tmp_path / 'out' / 'seed2' / 'metrics.json'}: non-finite final_train_loss=nan" in out
    (tmp_path / "out" / "seed1" / "metrics.json").unlink()
    assert main(["table", str(tmp_path / "out"), "--no-plot"]) == 2
    assert "no usable metrics.json files under" in capsys.readouterr().err
