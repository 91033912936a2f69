"""The shifted Fashion-MNIST task, the quickstart's tables/chart, a fast end-to-end run and the full one (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import TINY_SMALL_CLIP_CONFIG

from trkit_vlm.data import tasks as data_tasks
from trkit_vlm.data.fashion_mnist import DEFAULT_ROOT, FASHION_MNIST_CLASSES
from trkit_vlm.demo import quickstart as q
from trkit_vlm.demo import small_clip as sc
from trkit_vlm.demo import tasks

HAVE_DATA = (sc.Path(DEFAULT_ROOT) / "train-images-idx3-ubyte.gz").is_file()
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)


def test_apply_shift_closed_form():
    x = np.array([[[0, 255, 128]]], dtype=np.uint8)
    got = data_tasks.contrast_shift(x, 0.3)
    want = np.rint(255 * (0.7 * x / 255.0 + 0.15)).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    assert got.min() == 38 and got.max() == 217  # contrast 0.7, mid-grey kept
    np.testing.assert_array_equal(data_tasks.contrast_shift(x, 0.0), x)
    with pytest.raises(ValueError, match="strength"):
        data_tasks.contrast_shift(x, 1.0)
    with pytest.raises(ValueError, match="uint8"):
        data_tasks.apply_shift(x.astype(np.float32), "contrast", {"strength": 0.1})


def test_base_novel_split_is_coop_rule():
    base, novel = tasks.base_novel_classes()
    assert [FASHION_MNIST_CLASSES[c] for c in base] == ["t-shirt", "trouser", "pullover", "dress", "coat"]
    assert novel == [5, 6, 7, 8, 9]
    assert tasks.base_novel_classes(7) == ([0, 1, 2, 3], [4, 5, 6])


def _fake_data(n_per_class=30, n_test_per_class=8, seed=0):
    rng = np.random.default_rng(seed)
    ytr = np.repeat(np.arange(10), n_per_class)
    xtr = rng.integers(0, 256, (len(ytr), 28, 28), dtype=np.uint8)
    # Tag each image with its index so the splits can be traced back.
    xtr[:, 0, 0] = np.arange(len(ytr)) % 251
    yte = np.repeat(np.arange(10), n_test_per_class)
    xte = rng.integers(0, 256, (len(yte), 28, 28), dtype=np.uint8)
    return xtr, ytr, xte, yte


def test_make_task_uses_train_for_shots_and_keeps_validation_apart():
    data = _fake_data()
    recipe = sc.PretrainRecipe(val_per_class=5)
    val = tasks.image_pools("val", recipe, data)
    t = tasks.make_task(val, shots=4, seed=1, strength=0.0)
    assert t.shots.images.shape == (20, 28, 28) and np.all(np.bincount(t.shots.labels) == 4)
    assert t.shots.classes == [0, 1, 2, 3, 4] and t.eval_novel.classes == [5, 6, 7, 8, 9]
    train_idx, val_idx = data_tasks.split_train_val(data[1], 5, seed=recipe.seed)
    val_images = {data[0][i].tobytes() for i in val_idx}
    assert not any(im.tobytes() in val_images for im in t.shots.images)  # shots never from validation
    assert all(im.tobytes() in val_images for im in t.eval_base.images)  # eval = validation images
    assert len(t.eval_base.labels) == 25 and set(t.eval_novel.labels) == set(range(5))
    t2 = tasks.make_task(val, shots=4, seed=2, strength=0.0)
    assert not np.array_equal(t.shots.images, t2.shots.images)  # the seed changes the shots
    ts = tasks.make_task(tasks.image_pools("test", recipe, data), shots=4, seed=1, strength=0.5, eval_per_class=3)
    np.testing.assert_array_equal(ts.shots.images, data_tasks.contrast_shift(t.shots.images, 0.5))
    assert len(ts.eval_base.labels) == 15


def test_shifted_data_records():
    data = _fake_data()
    recipe = sc.PretrainRecipe(val_per_class=5)
    d = tasks.shifted_data(0.3, "test", None, recipe, data)
    assert d.classnames == FASHION_MNIST_CLASSES and d.val == []
    assert len(d.train) == 250 and len(d.test) == 80
    img, label = d.test[0]
    assert img.dtype == np.uint8 and img.shape == (28, 28) and isinstance(label, int)
    assert img.max() <= 217 and img.min() >= 38  # shifted
    with pytest.raises(ValueError, match="eval_split"):
        tasks.shifted_data(0.3, "train", None, recipe, data)


def test_aggregate_runs_matches_hand_computation():
    runs = [
        {
            "method": "zero-shot",
            "seed": s,
            "base": 50.0,
            "novel": 40.0,
            "hm": 44.44,
            "all": 30.0,
            "n_trainable": 0,
            "train_time_s": 0.0,
        }
        for s in (1, 2)
    ]
    runs += [
        {
            "method": "MMA",
            "seed": 1,
            "base": 70.0,
            "novel": 50.0,
            "hm": 58.33,
            "all": 40.0,
            "n_trainable": 1000,
            "train_time_s": 2.0,
        },
        {
            "method": "MMA",
            "seed": 2,
            "base": 74.0,
            "novel": 54.0,
            "hm": 62.44,
            "all": 42.0,
            "n_trainable": 1000,
            "train_time_s": 4.0,
        },
        {
            "method": "AdaRing",
            "seed": 1,
            "base": 72.0,
            "novel": 52.0,
            "hm": 60.38,
            "all": 41.0,
            "n_trainable": 80,
            "train_time_s": 3.0,
        },
    ]
    rows = {r["method"]: r for r in q.aggregate_runs(runs)}
    m = rows["MMA"]
    assert m["base_mean"] == pytest.approx(72.0) and m["base_std"] == pytest.approx(np.sqrt(8.0))
    assert m["hm_mean"] == pytest.approx(2 * 72 * 52 / (72 + 52))
    assert m["hm_std"] == pytest.approx(np.std([58.33, 62.44], ddof=1))
    assert m["train_time_s"] == pytest.approx(3.0) and rows["AdaRing"]["params_vs_mma"] == pytest.approx(0.08)
    assert rows["AdaRing"]["base_std"] == 0.0 and list(rows) == ["zero-shot", "MMA", "AdaRing"]
    table = q.markdown_table(list(rows.values()))
    assert "| MMA | 72.00 ± 2.83 | 52.00 ± 2.83 | 60.39 ± 2.91 | 1,000 | 100.0% | 3.0 s |" in table
    png = q.plot_png(list(rows.values()), "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_says_how_to_get_missing_data(tmp_path, monkeypatch, capsys):
    from trkit_vlm.cli import main

    monkeypatch.setenv("TRKIT_FASHION_MNIST", str(tmp_path / "nowhere"))
    rc = main(
        [
            "quickstart",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--output-dir",
            str(tmp_path / "out"),
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "apt-get install dataset-fashion-mnist" in err and len(err.splitlines()) == 1
    assert err.startswith("trkit-vlm quickstart: error: Fashion-MNIST file")


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny CLIP pre-trained for a few steps on 6,000 real training images, and a small shifted task."""
    from trkit_vlm.data.fashion_mnist import load_fashion_mnist

    x, y, xt, yt = load_fashion_mnist()
    idx = np.random.default_rng(0).choice(len(y), 6000, replace=False)
    data = (x[idx], y[idx], xt, yt)
    recipe = sc.PretrainRecipe(
        model_config=TINY_SMALL_CLIP_CONFIG, steps=60, batch_size=64, warmup_steps=5, lr=2e-3, val_per_class=60
    )
    cache = tmp_path_factory.mktemp("cache")
    sc.pretrain_small(recipe, cache_dir=cache, progress=False, data=data[:2])
    bundle = sc.load_small_clip(recipe, cache, train_if_missing=False)
    # A strong shift: the barely pre-trained tiny model has a lot to gain there (zero-shot ~40% 5-way).
    task = tasks.shifted_data(0.7, "val", 60, recipe, data)  # held-out images, never trained on
    return bundle, task, recipe


@needs_data
def test_fast_quickstart_training_beats_zero_shot(tiny, tmp_path):
    bundle, task, recipe = tiny
    qc = q.QuickstartConfig(
        output_dir=str(tmp_path / "qs"),
        seeds=(1,),
        eval_split="val",
        recipe=recipe,
        variants={"MMA": q.VARIANTS["MMA"]},
        optim=dict(q.OPTIM, lr=0.01, epochs=20),
    )
    res = q.run_quickstart(qc, progress=False, bundle=bundle, data=task, log=lambda *a: None)
    rows = {r["method"]: r for r in res["rows"]}
    zs, mma = rows["zero-shot"], rows["MMA"]
    assert 20.0 < zs["base_mean"] < 90.0  # the tiny model knows something, not everything
    assert mma["base_mean"] >= zs["base_mean"] + 8.0  # training on base shots helps on held-out base images
    assert mma["n_trainable"] > 0 and zs["n_trainable"] == 0
    # Scored with the frozen image prefix cached: the numbers of the plain full forward.
    from trkit_vlm.evaluation.evaluate import evaluate_base_novel

    full = evaluate_base_novel(bundle.model, bundle.tokenizer, task, "a photo of a {}.")
    assert all(zs[f"{k}_mean"] == pytest.approx(full[k], abs=1e-9) for k in ("base", "novel"))
    saved = json.loads(open(res["paths"]["json"]).read())
    assert saved["rows"][1]["method"] == "MMA" and saved["runs"][0]["method"] == "zero-shot"
    assert open(res["paths"]["png"], "rb").read(4) == b"\x89PNG"
    # The bundle is left without adapters, so it can be reused.
    from trkit_vlm.adapters import get_adapters

    assert get_adapters(bundle.model) is None


@needs_data
def test_quickstart_in_two_processes_gives_the_runs_of_one(tiny, tmp_path):
    """--workers 2: the same runs (each process reloads the cached model and rebuilds the task), in job order."""
    bundle, _, recipe = tiny
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run one thread each: the same arithmetic
    try:
        out = {}
        for workers in (1, 2):
            qc = q.QuickstartConfig(
                output_dir=str(tmp_path / f"qs{workers}"),
                seeds=(1, 2),
                strength=0.7,
                eval_split="val",
                eval_per_class=20,
                recipe=recipe,
                cache_dir=str(Path(bundle.pretrained).parents[1]),
                variants={"MMA": q.VARIANTS["MMA"]},
                optim=dict(q.OPTIM, lr=0.01, epochs=2),
                workers=workers,
            )
            out[workers] = q.run_quickstart(qc, progress=False, log=lambda *a: None)["runs"]
    finally:
        torch.set_num_threads(threads)
    assert [(r["method"], r["seed"]) for r in out[2]] == [("zero-shot", 1), ("zero-shot", 2), ("MMA", 1), ("MMA", 2)]
    for a, b in zip(out[1], out[2]):
        assert (a["base"], a["novel"], a["all"]) == (b["base"], b["novel"], b["all"])


@needs_data
def test_quickstart_adaring_recipe_trains_unclipped_within_the_budget(tiny, tmp_path):
    """AdaRing's quickstart recipe (every layer, Gauss-Newton preconditioner, step limit, no clipping, rank adaptation)
    at the tiny model's learning rate: finite, unclipped steps logged per epoch, the budget kept."""
    bundle, task, recipe = tiny
    # The tiny towers are as wide as the bottleneck (32), so 10% of MMA is below the smallest rings over all
    # three layers (rank 1 everywhere, biases included): the test keeps a 25% budget, the recipe otherwise.
    method, adapter, loss, optim = q.VARIANTS["AdaRing"]
    budget = 0.25
    qc = q.QuickstartConfig(
        output_dir=str(tmp_path / "qs"),
        seeds=(1,),
        eval_split="val",
        recipe=recipe,
        variants={"MMA": q.VARIANTS["MMA"], "AdaRing": (method, {**adapter, "rank_budget": budget}, loss, optim)},
        optim=dict(q.ADARING_OPTIM, lr=0.01),  # as the MMA test: the barely pre-trained model needs a lower lr
    )
    res = q.run_quickstart(qc, progress=False, bundle=bundle, data=task, log=lambda *a: None)
    rows = {r["method"]: r for r in res["rows"]}
    ada = next(r for r in res["runs"] if r["method"] == "AdaRing")
    metrics = json.loads((Path(ada["run_dir"]) / "metrics.json").read_text())
    assert metrics["precondition"] == "gauss_newton" and metrics["max_grad_norm"] is None
    assert metrics["rank_adaptation"]["n_params"] <= metrics["rank_adaptation"]["budget"]
    assert rows["AdaRing"]["n_trainable"] <= budget * rows["MMA"]["n_trainable"]
    config = json.loads((Path(ada["run_dir"]) / "config.json").read_text())
    assert config["adapter"]["text_layers"] == "all"  # every layer of the tiny towers, recorded as spelled
    epochs = [json.loads(line) for line in (Path(ada["run_dir"]) / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r.get("type") == "epoch"]
    assert len(epochs) == q.ADARING_OPTIM["epochs"]
    assert all(math.isfinite(r["grad_norm_median"]) and r["clip_fraction"] == 0.0 for r in epochs)
    assert rows["AdaRing"]["base_mean"] >= rows["zero-shot"]["base_mean"] + 8.0  # it learned, not diverged


@needs_data
@pytest.mark.slow
def test_full_quickstart(tmp_path):
    """The real thing: pre-trained small CLIP (cached), 4 adapter variants x 3 seeds on all test images."""
    torch.set_num_threads(2)
    res = q.run_quickstart(q.QuickstartConfig(output_dir=str(tmp_path / "qs")), progress=False)
    rows = {r["method"]: r for r in res["rows"]}
    zs, mma, ada = rows["zero-shot"], rows["MMA"], rows["AdaRing"]
    assert set(rows) == {"zero-shot", "MMA", "AdaRing", "AdaRing, single branch", "AdaRing, no GA loss"}
    assert ada["n_trainable"] <= 0.10 * mma["n_trainable"]
    for r in (mma, ada):
        assert r["hm_mean"] >= zs["hm_mean"] + 5.0
    assert res["n_test"] == {"base": 5000, "novel": 5000}
