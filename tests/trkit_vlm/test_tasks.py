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


# ------------------------------------------------------------------------------- the built-in shifts
SHIFT_PARAMS = {
    "noise": {"sigma": 0.2},
    "blur": {"sigma": 1.5},
    "lowres": {"size": 7},
    "edges": {"mix": 0.7},
    "contrast": {"strength": 0.6},
}


@pytest.mark.parametrize("name", sorted(SHIFT_PARAMS))
def test_shifts_work_image_by_image(name):
    """Shifting a pool then taking a subset = shifting the subset (what task_pools relies on)."""
    x = _arrays()[0][:30]
    idx = np.array([29, 3, 17, 3, 0])
    whole = tasks.apply_shift(x, name, SHIFT_PARAMS[name])
    assert whole.dtype == np.uint8 and whole.shape == x.shape
    assert np.array_equal(whole[idx], tasks.apply_shift(x[idx], name, SHIFT_PARAMS[name]))
    assert not np.array_equal(whole, x)


def test_shift_closed_forms():
    rng = np.random.default_rng(1)
    x = rng.integers(60, 196, (40, 28, 28), dtype=np.uint8)  # no clipping at sigma 0.05
    # Noise: the differences are N(0, sigma) up to quantisation; a different seed, different noise.
    d = (tasks.apply_shift(x, "noise", {"sigma": 0.05}).astype(float) - x) / 255.0
    assert abs(d.mean()) < 0.002 and abs(d.std() - np.sqrt(0.05**2 + 1 / 255**2 / 12)) < 0.002
    assert not np.array_equal(tasks.apply_shift(x, "noise", {"sigma": 0.05, "seed": 1}), x + 0)
    # Identities: no blur, full resolution, no edge mix.
    assert np.array_equal(tasks.apply_shift(x, "blur", {"sigma": 0.0}), x)
    assert np.array_equal(tasks.apply_shift(x, "lowres", {"size": 28}), x)
    assert np.array_equal(tasks.apply_shift(x, "edges", {"mix": 0.0}), x)
    # Low resolution: every 4x4 block of the 7x7 version is one grey level when upsampled... by area, then
    # bilinear: constant images stay constant; a block image survives size 7 exactly at block centres.
    const = np.full((1, 28, 28), 77, np.uint8)
    assert np.array_equal(tasks.apply_shift(const, "lowres", {"size": 7}), const)
    # Edges: a vertical step gives an even line at the step and nothing on the flat parts (mix 1 = edge map;
    # the picture border, zero outside, is an edge too).
    step = np.zeros((2, 28, 28), np.uint8)
    step[0, :, 14:] = 200
    step[1] = step[0, :, ::-1]  # a second image: nothing of it may leak into the first
    e = tasks.apply_shift(step, "edges", {"mix": 1.0})[0].astype(int)
    assert (e[2:26, 13] == e[2:26, 14]).all() and e[2:26, 13].min() > 100
    assert e[2:26, 1:12].max() == 0 and e[2:26, 16:26].max() == 0
    # Blur keeps the mean of an image whose content is far from the border.
    blob = np.zeros((1, 28, 28), np.uint8)
    blob[:, 10:18, 10:18] = 240
    b = tasks.apply_shift(blob, "blur", {"sigma": 1.0})
    assert abs(int(b.astype(int).sum()) - int(blob.astype(int).sum())) < 0.01 * blob.astype(int).sum()
    with pytest.raises(ValueError, match="sigma must be a number"):
        tasks.apply_shift(x, "noise", {"sigma": -1})
    with pytest.raises(ValueError, match="size must be an integer"):
        tasks.apply_shift(x, "lowres", {"size": 40})


# ----------------------------------------------------------------------------------- the text side
def test_text_fields_class_order_and_prompt_template():
    arrays = _arrays()
    data = fashion_mnist_data(arrays)
    names = [f"name{i}" for i in range(10)]
    order = [9, 8, 7, 6, 5, 0, 1, 2, 3, 4]
    spec = tasks.TaskSpec("none", classnames=names, template="a {} and a coat.", class_order=order, eval_per_class=2)
    d = tasks.apply_task(data, spec)
    assert d.classnames == [names[c] for c in order]
    # Label j of the task is class order[j] of the dataset: images keep their class, labels follow the order.
    _, _, xte, yte = arrays
    for img, lab in d.test:
        src = np.flatnonzero([np.array_equal(img, x) for x in xte])
        assert len(src) == 1 and order[lab] == yte[src[0]]
    cfg = RunConfig(method="mma")
    cfg.data.task = spec.to_dict()
    assert cfg.prompt_template() == "a {} and a coat."
    # The GA loss's frozen text uses the prompts of the run (and of zero-shot on the task), not the default
    # "a photo of a {}.", unless frozen templates are given.
    assert cfg.frozen_text_templates() == ["a {} and a coat."]
    cfg.loss.frozen_templates = ["a photo of a {}.", "a drawing of a {}."]
    assert cfg.frozen_text_templates() == ["a photo of a {}.", "a drawing of a {}."]
    cfg.data.task, cfg.loss.frozen_templates = None, None
    assert cfg.frozen_text_templates() == [cfg.data.template]
    cfg.data.task = spec.to_dict()
    cfg.data.template = "itap of a {}."
    with pytest.raises(ValueError, match="disagree"):
        cfg.validate()
    with pytest.raises(ValueError, match="permutation"):
        tasks.TaskSpec(class_order=[0, 0, 1])
    with pytest.raises(ValueError, match="contain"):
        tasks.TaskSpec(template="no slot")
    with pytest.raises(ValueError, match="has 3 names"):
        tasks.apply_task(data, tasks.TaskSpec(classnames=["a", "b", "c"]))


@pytest.mark.parametrize("shift", ["noise", "contrast"])
def test_pools_once_then_subsets_equal_apply_task(shift):
    """task_pools + scored_data per seed (what the benchmark does) = apply_task per seed."""
    data = fashion_mnist_data(_arrays())
    base = {"shift": shift, "params": SHIFT_PARAMS[shift], "holdout_per_class": 2, "class_order": list(range(10))[::-1]}
    pools = tasks.task_pools(data, base)
    for seed in (0, 5):
        spec = {**base, "eval_per_class": 3, "eval_seed": seed}
        want, got = tasks.apply_task(data, spec), tasks.scored_data(pools, spec)
        assert got.classnames == want.classnames
        for a, b in zip((want.train, want.test), (got.train, got.test)):
            assert len(a) == len(b) and all(np.array_equal(p[0], q[0]) and p[1] == q[1] for p, q in zip(a, b))
