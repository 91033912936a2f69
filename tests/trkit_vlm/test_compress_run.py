"""Run folders as the unit: a trained MMA run compressed into an AdaRing run folder that ``eval``, ``table`` and
``train --init-adapters`` take; eval of every run (trained, compressed, healed) reproduces its metrics.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from _helpers import TINY_SMALL_CLIP_CONFIG, fake_fashion_mnist

from trkit_vlm import models
from trkit_vlm.adapters import AdaRingConfig, add_adapters, get_adapters, remove_adapters
from trkit_vlm.cli import main as cli_main
from trkit_vlm.compression import compress_run
from trkit_vlm.evaluation.run import evaluate_run
from trkit_vlm.models import load_clip, register_model_config
from trkit_vlm.training.config import RunConfig, config_from_dict
from trkit_vlm.training.train import train

REPO = Path(__file__).resolve().parents[2]
NAME = "trkit-test-tiny-28-compress"
METRICS = ("base", "novel", "hm", "all")


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def mma_run(tmp_path_factory):
    """A finished MMA run on a custom tiny model and a contrast-shifted fake Fashion-MNIST task."""
    tmp = tmp_path_factory.mktemp("compress_run")
    root = tmp / "fmnist"
    root.mkdir()
    fake_fashion_mnist(root, n_train=60, n_test=30)
    register_model_config(NAME, TINY_SMALL_CLIP_CONFIG)
    cfg = RunConfig(model=NAME, method="mma", output_dir=str(tmp / "out"), seed=2)
    cfg.data.dataset, cfg.data.root, cfg.data.shots, cfg.data.augment = "fashion_mnist", str(root), 2, False
    cfg.data.task = {"shift": "contrast", "params": {"strength": 0.6}, "holdout_per_class": 1}
    cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr, cfg.optim.eval_batch_size = 2, 4, 0.05, 16
    cfg.adapter = {"hidden": 4}
    metrics = _quiet(train, cfg, progress=False)
    return cfg.run_dir(), metrics


def _forget_model():
    models._CUSTOM_CONFIGS.pop(NAME, None)  # as in a fresh process


def _reproduces(run_dir: Path) -> dict:
    saved = json.loads((run_dir / "metrics.json").read_text())
    _forget_model()
    got = _quiet(evaluate_run, str(run_dir))
    for k in METRICS:
        assert got[k] == saved[k], (run_dir, k, got[k], saved[k])
    return saved


def test_compress_heal_and_eval_reproduce_every_metrics_file(mma_run, tmp_path):
    run, mma_metrics = mma_run
    _reproduces(run)  # the trained run
    out = tmp_path / "ring"
    res = _quiet(compress_run, run, out, budget=0.6, heal_epochs=1, heal_overrides=["optim.lr=0.01"])
    result = res["result"]
    assert result.n_params <= 0.6 * result.mma_params
    assert result.output_reference == "block output" and result.settings["calibration"] == "data"
    cfg = config_from_dict(json.loads((out / "config.json").read_text()))
    assert cfg.method == "adaring" and cfg.model == NAME and cfg.model_config == TINY_SMALL_CLIP_CONFIG
    assert cfg.data.task["shift"] == "contrast" and cfg.data.template == "a photo of a {}."
    assert cfg.adapter["scale"] == 0.001 and cfg.output_dir == str(out / "heal")
    compressed = _reproduces(out)
    assert compressed["method"] == "adaring (mma, budget 0.6)" and compressed["n_trainable"] == result.n_params
    heal_dir = Path(res["heal"]["run_dir"])
    assert heal_dir.parent.parent.parent.parent == out / "heal"
    healed = _reproduces(heal_dir)
    assert healed["method"] == "adaring (mma, budget 0.6, heal 1 ep)"
    heal_cfg = config_from_dict(json.loads((heal_dir / "config.json").read_text()))
    assert heal_cfg.init_adapters == str(out) and heal_cfg.optim.lr == 0.01 and heal_cfg.optim.name == "adamw"
    assert (out / "report.json").is_file() and json.loads((out / "report.json").read_text())["fraction"] <= 0.6


def test_compress_eval_train_from_the_shell_then_table(mma_run, tmp_path, capsys):
    """The whole path as a user types it, each command a fresh process that knows nothing of the model."""
    run, _ = mma_run
    out, again = tmp_path / "ring", tmp_path / "again"
    script = (
        f'set -e; trkit() {{ {sys.executable} -m trkit_vlm "$@"; }}\n'
        f"trkit compress {run} --budget 0.5 --out {out}\n"
        f"trkit eval {out} > {tmp_path / 'eval.json'}\n"
        f"trkit train --init-adapters {out} --set optim.epochs=1 -o {again} --no-progress\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    saved = json.loads((out / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert all(evaluated[k] == saved[k] for k in METRICS)
    trained = next(again.rglob("metrics.json"))
    cfg = config_from_dict(json.loads((trained.parent / "config.json").read_text()))
    assert cfg.init_adapters == str(out) and cfg.method == "adaring" and cfg.adapter["ranks"] == saved_ranks(out)
    assert cli_main(["table", str(tmp_path), "--no-plot"]) == 0
    assert "| adaring (mma, budget 0.5) |" in capsys.readouterr().out  # the table lists the compressed run


def saved_ranks(run: Path) -> list:
    return json.loads((run / "config.json").read_text())["adapter"]["ranks"]


def test_init_adapters_checks(mma_run, tmp_path):
    run, _ = mma_run
    cfg = config_from_dict(json.loads((run / "config.json").read_text()))
    register_model_config(NAME, TINY_SMALL_CLIP_CONFIG)
    # Another method than the saved adapters'.
    other = config_from_dict({**cfg.to_dict(), "method": "adaring", "adapter": {}, "init_adapters": str(run)})
    other.output_dir = str(tmp_path)
    with pytest.raises(ValueError, match="holds mma adapters; this run trains adaring"):
        train(other, progress=False)
    # Same method, another config: the differing field is named.
    wider = config_from_dict({**cfg.to_dict(), "adapter": {"hidden": 6}, "init_adapters": str(run)})
    wider.output_dir = str(tmp_path)
    with pytest.raises(ValueError, match="hidden=4"):
        _quiet(train, wider, progress=False)
    # The run would write over the adapters it starts from.
    same = config_from_dict({**cfg.to_dict(), "init_adapters": str(run)})
    with pytest.raises(ValueError, match="holds the adapters it starts from"):
        train(same, progress=False)
    # A bundle whose model already has adapters is refused, and left as it came.
    bundle = _quiet(load_clip, NAME)
    add_adapters(bundle.model, AdaRingConfig(hidden=4, ranks=[1]))
    with pytest.raises(ValueError, match="init_adapters"):
        train(config_from_dict({**cfg.to_dict(), "output_dir": str(tmp_path)}), bundle=bundle, progress=False)
    assert get_adapters(bundle.model).config.method == "adaring"
    remove_adapters(bundle.model)


def test_compress_out_is_checked_before_any_work(mma_run, tmp_path):
    run, _ = mma_run
    with pytest.raises(ValueError, match="is the folder of the source"):
        compress_run(run, run, budget=0.5)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        compress_run(run, tmp_path / "file", budget=0.5)
    with pytest.raises(ValueError, match="compress takes MMA runs"):
        ring = tmp_path / "ring"
        _quiet(compress_run, run, ring, budget=0.5, evaluate=False, data_aware=False)
        compress_run(ring, tmp_path / "ring2", budget=0.5)
