"""Tasks as data (trkit_vlm.data.tasks): the spec, what apply_task builds, and that a run folder's recorded
task and model are enough for ``trkit-vlm eval`` to reproduce the run's metrics exactly."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from _helpers import TINY_SMALL_CLIP_CONFIG, fake_fashion_mnist

from trkit_vlm.data import tasks
from trkit_vlm.data.fashion_mnist import fashion_mnist_data
from trkit_vlm.evaluation.run import evaluate_run
from trkit_vlm.models import register_model_config
from trkit_vlm.training.config import RunConfig, config_from_dict
from trkit_vlm.training.train import load_run_data, train


def test_spec_round_trip_and_errors():
    d = {"shift": "contrast", "params": {"strength": 0.4}, "holdout_per_class": 3, "eval_split": "val"}
    spec = tasks.TaskSpec.from_dict(d)
    assert tasks.TaskSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["eval_per_class"] is None
    with pytest.raises(ValueError, match="unknown image shift 'blurr'"):
        tasks.TaskSpec(shift="blurr")
    with pytest.raises(ValueError, match="unknown data.task key"):
        tasks.TaskSpec.from_dict({"shfit": "contrast"})
    with pytest.raises(ValueError, match="holdout_per_class >= 1"):
        tasks.TaskSpec(eval_split="val")
    with pytest.raises(ValueError, match="image shift 'contrast'"):  # a parameter the shift does not take
        tasks.apply_shift(np.zeros((1, 2, 2), np.uint8), "contrast", {"sigma": 1.0})
    with pytest.raises(ValueError, match="in-memory uint8"):
        tasks.apply_task(fashion_mnist_data().replace(train=[("a.png", 0)]), {"shift": "none"})


def _arrays(n_per_class=12, n_test_per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    ytr = np.tile(np.arange(10), n_per_class)
    xtr = rng.integers(0, 256, (len(ytr), 28, 28), dtype=np.uint8)
    yte = np.tile(np.arange(10), n_test_per_class)
    xte = rng.integers(0, 256, (len(yte), 28, 28), dtype=np.uint8)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("eval_split", ["test", "val"])
def test_apply_task_holds_out_subsets_and_shifts(eval_split):
    xtr, ytr, xte, yte = arrays = _arrays()
    spec = tasks.TaskSpec("contrast", {"strength": 0.5}, holdout_per_class=4, eval_split=eval_split, eval_per_class=3)
    d = tasks.apply_task(fashion_mnist_data(arrays), spec)
    # The hold-out: 4 per class, never among the training records (the images carry no duplicates).
    _, held = tasks.split_train_val(ytr, 4, seed=0)
    shifted_held = {tasks.contrast_shift(xtr[i : i + 1], 0.5).tobytes() for i in held}
    assert len(d.train) == len(ytr) - 40
    assert not any(img[None].tobytes() in shifted_held for img, _ in d.train)
    # Scored images: 3 per class, from the test split or the hold-out, shifted by the closed form.
    assert [lab for _, lab in d.test] == [c for c in range(10) for _ in range(3)]
    pool_x, pool_y = (xte, yte) if eval_split == "test" else (xtr[held], ytr[held])
    for img, lab in d.test:
        cands = pool_x[pool_y == lab].astype(np.float64)
        want = np.clip(np.rint(255 * (0.5 * cands / 255.0 + 0.25)), 0, 255)
        assert any(np.array_equal(img, w) for w in want)
    # The same spec gives the same images (every method is scored on the same ones).
    again = tasks.apply_task(fashion_mnist_data(arrays), spec)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(d.test, again.test))


def test_eval_of_a_task_run_reproduces_its_metrics(tmp_path):
    """A run on a custom model and a shifted task: config.json alone rebuilds both (issue 16 items 1-2)."""
    root = tmp_path / "fmnist"
    root.mkdir()
    fake_fashion_mnist(root, n_train=60, n_test=30)
    name = "trkit-test-tiny-28-tasks"
    register_model_config(name, TINY_SMALL_CLIP_CONFIG)
    cfg = RunConfig(model=name, method="mma", output_dir=str(tmp_path / "out"), seed=3)
    cfg.data.dataset, cfg.data.root, cfg.data.shots, cfg.data.augment = "fashion_mnist", str(root), 2, False
    cfg.data.task = {"shift": "contrast", "params": {"strength": 0.6}, "holdout_per_class": 1}
    cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr = 2, 4, 0.05
    cfg.adapter = {"hidden": 4}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        metrics = train(cfg, progress=False)
    run = cfg.run_dir()
    saved = config_from_dict(json.loads((run / "config.json").read_text()))
    assert saved.model_config == TINY_SMALL_CLIP_CONFIG and saved.data.task["shift"] == "contrast"

    from trkit_vlm import models

    models._CUSTOM_CONFIGS.pop(name)  # a fresh process knows nothing of the custom model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate_run(str(run))
    for k in ("base", "novel", "hm", "all"):
        assert res[k] == metrics[k], (k, res[k], metrics[k])
    # What eval scored is the shifted task (contrast 0.4 around mid-grey), not the raw images.
    scored = load_run_data(saved).test
    assert len(scored) == 30 and all(76 <= img.min() and img.max() <= 179 for img, _ in scored)
