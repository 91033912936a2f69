"""The benchmark suite on a tiny model (2 tasks, 2 seeds): runs are paired (same draws, same scored images for
every method), the CIs are the closed-form paired t, kept run folders re-evaluate to their metrics, and the
tuning procedure extends a grid whose best value sits on its edge."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from _helpers import TINY_SMALL_CLIP_CONFIG, fake_fashion_mnist
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from trkit.errors import InputError
from trkit_vlm.data.fashion_mnist import fashion_mnist_data
from trkit_vlm.data.tasks import apply_task
from trkit_vlm.demo.benchmark import ModelSpec, digest, plan_units, protocol_runs
from trkit_vlm.demo.suite import suite_from_dict
from trkit_vlm.demo.suite_report import summarize
from trkit_vlm.demo.suite_run import _extend, combine_results, run_benchmark, tune
from trkit_vlm.evaluation.paired import paired_difference
from trkit_vlm.evaluation.run import evaluate_run

NAME = "trkit-test-tiny-28-bench"
SGD = {"name": "sgd", "batch_size": 10, "weight_decay": 0.0005}


def _arrays():
    rng = np.random.default_rng(0)
    ytr = np.tile(np.arange(10), 6)  # 60 training images: 2 held out per class, shots from the other 4
    yte = np.tile(np.arange(10), 5)
    return (
        rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        ytr,
        rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        yte,
    )


def _suite(**over):
    d = {
        "seeds": [1, 2],
        "shots": 2,
        "eval_per_class": 3,
        "reference": "MMA",
        "tasks": {
            "noise": {"shift": "noise", "params": {"sigma": 0.2}},
            "distractor": {"template": "a {} and a coat."},
        },
        "base_to_novel": ["noise", "distractor"],
        "transfer": {"cross-task": {"source": "noise", "targets": ["distractor"]}},
        "methods": {
            "zero-shot": {"method": None},
            "MMA": {"method": "mma", "adapter": {"hidden": 4}, "optim": {**SGD, "lr": 0.5, "epochs": 2}},
            "LoRA": {"method": "lora", "adapter": {"rank": 1}, "optim": {**SGD, "lr": 0.5, "epochs": 2}},
            "linear probe": {"method": "linear_probe", "optim": {**SGD, "lr": 0.5, "epochs": 2}},
        },
        "tuning": {
            "seeds": [7],
            "eval_per_class": 2,
            "extend": 1,
            "grids": {"sgd": {"lr": [0.1, 1.0], "epochs": [1, 2]}},
        },
    }
    d.update(over)
    return suite_from_dict(d)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny small-CLIP-shaped model saved to a file (so a run folder rebuilds it) and fake Fashion-MNIST:
    60 training images (2 per class held out, shots from the other 4) and 50 test images."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("fmnist")
    fake_fashion_mnist(root, n_train=60, n_test=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bundle = ModelSpec(NAME, TINY_SMALL_CLIP_CONFIG, seed=0).load()
    weights = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in bundle.model.state_dict().items()}, str(weights))
    spec = ModelSpec(NAME, TINY_SMALL_CLIP_CONFIG, pretrained=str(weights), data_root=str(root), holdout=(2, 0))
    torch.manual_seed(0)
    return spec, spec.load()


@pytest.fixture(scope="module")
def result(model, tmp_path_factory):
    spec, bundle = model
    out = tmp_path_factory.mktemp("bench")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_benchmark(_suite(), out, model=spec, bundle=bundle, log=None)


def test_runs_are_paired(result):
    runs = result["runs"]
    b2n = [r for r in runs if r["protocol"] == "base-to-novel"]
    assert {(r["task"], r["seed"]) for r in b2n} == {(t, s) for t in ("noise", "distractor") for s in (1, 2)}
    for task, seed in {(r["task"], r["seed"]) for r in runs}:
        rows = [r for r in runs if r["task"] == task and r["seed"] == seed]
        assert len({r["test_digest"] for r in rows}) == 1  # every method scored on the same images ...
    # ... which are the images the run's recorded task describes (rebuilt independently here) ...
    for r in [r for r in b2n if r["run_dir"]]:
        cfg = json.loads((Path(r["run_dir"]) / "config.json").read_text())
        data = fashion_mnist_data(root=cfg["data"]["root"])
        assert digest(apply_task(data, cfg["data"]["task"]).test) == r["test_digest"]
    # ... and every trained method drew the same shots: the few-shot files of their run folders agree.
    for task, seed in {(r["task"], r["seed"]) for r in b2n}:
        trained = [r for r in b2n if r["task"] == task and r["seed"] == seed and r["run_dir"]]
        files = [next(Path(r["run_dir"]).parents[3].glob("*/fewshot/*.json")) for r in trained]
        draws = {json.dumps(json.loads(f.read_text())["train"]) for f in files}
        assert len(trained) == 3 and len(draws) == 1
    # Different seeds: different draws and different scored images.
    assert len({r["test_digest"] for r in b2n if r["task"] == "noise"}) == 2


def test_ci_is_the_closed_form_paired_t(result):
    runs, cell = result["runs"], result["summary"]["base-to-novel"]["cells"]
    for task in ("noise", "distractor"):
        hm = {(r["method"], r["seed"]): r["hm"] for r in runs if r["task"] == task and r["protocol"] == "base-to-novel"}
        d = np.array([hm[("LoRA", s)] - hm[("MMA", s)] for s in (1, 2)])
        half = math.tan(math.pi * 0.475) * d.std(ddof=1) / math.sqrt(2)  # t with 1 dof is Cauchy: tan(pi(p - 1/2))
        got = cell[task]["LoRA"]["diff"]
        assert got["mean"] == pytest.approx(d.mean()) and got["half_width"] == pytest.approx(half)
    # Overall: per seed, the mean over tasks, then the paired t.
    over = {
        m: [np.mean([r["hm"] for r in runs if r["method"] == m and r["seed"] == s and r["protocol"] == "base-to-novel"])
            for s in (1, 2)]
        for m in ("LoRA", "MMA")
    }  # fmt: skip
    d = np.subtract(over["LoRA"], over["MMA"])
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))  # scipy's own t interval
    got = cell["overall"]["LoRA"]["diff"]
    assert (got["mean"], got["ci_low"], got["ci_high"]) == pytest.approx((d.mean(), low, high))
    # Transfer: all-class accuracy on the target, in-domain row for the source; the reference has no diff.
    xt = result["summary"]["cross-task"]
    assert xt["metric"] == "all" and xt["overall_over"] == ["distractor"] and "diff" not in xt["cells"]["noise"]["MMA"]
    assert Path(result["paths"]["png"]).stat().st_size > 0 and "| LoRA |" in result["markdown"]


def test_kept_runs_re_evaluate_to_their_metrics(result, model):
    run = next(r for r in result["runs"] if r["method"] == "LoRA" and r["protocol"] == "base-to-novel")
    metrics = json.loads((Path(run["run_dir"]) / "metrics.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = evaluate_run(run["run_dir"])
    for k in ("base", "novel", "hm", "all"):
        assert again[k] == metrics[k] == run[k]


def test_grid_extension_rule():
    assert _extend([0.02, 0.05, 0.1], 0.1, "lr") == ([0.02, 0.05, 0.1, 0.2], True)
    assert _extend([0.02, 0.05, 0.1], 0.02, "lr") == ([0.008, 0.02, 0.05, 0.1], True)
    assert _extend([0.02, 0.05, 0.1], 0.05, "lr") == ([0.02, 0.05, 0.1], False)
    assert _extend([10, 20, 40], 40, "epochs") == ([10, 20, 40, 80], True)
    assert _extend([1, 2], 1, "epochs") == ([1, 2], False)  # no fewer than one epoch


def test_tune_writes_recipes_and_extends_edges(model, tmp_path):
    spec, bundle = model
    suite = _suite(base_to_novel=["noise"], transfer={}).select(methods=["MMA"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        content = tune(suite, tmp_path, tmp_path / "recipes.json", model=spec, bundle=bundle, log=None)
    r = content["recipes"]["MMA"]
    assert json.loads((tmp_path / "recipes.json").read_text())["recipes"]["MMA"]["optim"] == r["optim"]
    best = max(r["points"], key=lambda p: p["score"])
    assert (best["lr"], best["epochs"]) == (r["optim"]["lr"], r["optim"]["epochs"])
    # Each axis is extended at most once here; an extension happened exactly where the first best was on the edge.
    assert r["grid"]["points"] == len(r["grid"]["lr"]) * len(r["grid"]["epochs"]) >= 4
    assert all(v <= 1 for v in r["grid"]["extensions"].values())
    lrs, eps = sorted({p["lr"] for p in r["points"]}), sorted({p["epochs"] for p in r["points"]})
    assert r["still_on_edge"] == (best["lr"] in (lrs[0], lrs[-1]) or best["epochs"] in (eps[0], eps[-1]))
    assert r["steps"] == r["optim"]["epochs"] * 1  # 10 shots of the 5 base classes, batch 10: one step an epoch


def test_transfer_protocol_is_tuned_on_its_source_and_used_by_its_units(model, tmp_path):
    spec, bundle = model
    suite = _suite().select(methods=["MMA"])
    suite.recipes = str(tmp_path / "recipes.json")
    suite.tuning.transfer_seeds = [7, 8]  # base-to-novel: [7] on 2 tasks; cross-task: 2 draws of its 1 task
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tune(suite, tmp_path, suite.recipes, model=spec, bundle=bundle, log=None)
        content = tune(suite, tmp_path, suite.recipes, model=spec, bundle=bundle, log=None, protocol="cross-task")
    b2n, ct = content["recipes"]["MMA"], content["by_protocol"]["cross-task"]["MMA"]
    # Scored on the source task alone, on all 10 classes (2 shots, batch 10: two steps an epoch).
    assert all(list(p["per_task"]) == ["noise"] and p["runs"] == 2 for p in ct["points"])
    assert all(p["runs"] == 2 for p in b2n["points"])
    assert content["tuning_by_protocol"]["cross-task"]["seeds"] == [7, 8]
    assert ct["steps"] == 2 * ct["optim"]["epochs"] and b2n["steps"] == b2n["optim"]["epochs"]
    assert max(ct["points"], key=lambda p: p["score"])["lr"] == ct["optim"]["lr"]
    assert suite.load_recipes("cross-task")["MMA"] == ct["optim"]
    assert suite.load_recipes()["MMA"] == b2n["optim"]  # base-to-novel's entry untouched
    units = plan_units(suite, protocol_runs(suite), str(tmp_path / "runs"))
    for u in units:
        want = ct if u["protocol"] == "cross-task" else b2n
        assert {k: u["runs"][0]["optim"][k] for k in ("lr", "epochs")} == want["optim"]
    with pytest.raises(InputError, match="no protocol 'nope'"):
        tune(suite, tmp_path, suite.recipes, model=spec, bundle=bundle, log=None, protocol="nope")


def test_a_method_can_run_in_some_protocols_only(tmp_path):
    """``protocols: [base-to-novel]`` keeps a method out of the transfer units and out of their tuning."""
    d_methods = {
        "MMA": {"method": "mma", "adapter": {"hidden": 4}, "optim": {**SGD, "lr": 0.5, "epochs": 2}},
        "LoRA": {"method": "lora", "adapter": {"rank": 1}, "optim": {**SGD, "lr": 0.5, "epochs": 2},
                 "protocols": ["base-to-novel"]},
    }  # fmt: skip
    suite = _suite(methods=d_methods)
    assert suite.method("LoRA").protocols == ["base-to-novel"] and suite.method("MMA").protocols is None
    units = plan_units(suite, protocol_runs(suite), str(tmp_path / "runs"))
    by_protocol = {p: [sorted(r["label"] for r in u["runs"]) for u in units if u["protocol"] == p] for p in
                   ("base-to-novel", "cross-task")}  # fmt: skip
    assert by_protocol["base-to-novel"] and all(labels == ["LoRA", "MMA"] for labels in by_protocol["base-to-novel"])
    assert by_protocol["cross-task"] and all(labels == ["MMA"] for labels in by_protocol["cross-task"])
    only_lora = plan_units(suite.select(methods=["LoRA"]), protocol_runs(suite.select(methods=["LoRA"])), "x")
    assert {u["protocol"] for u in only_lora} == {"base-to-novel"}  # no empty transfer units
    logs: list[str] = []
    tune(suite, tmp_path, tmp_path / "r.json", methods=["LoRA"], log=logs.append, protocol="cross-task")
    assert any("not tuned for cross-task" in line and "LoRA" in line for line in logs)
    with pytest.raises(InputError, match="methods.LoRA.protocols names \\['nope'\\]"):
        _suite(methods={**d_methods, "LoRA": {**d_methods["LoRA"], "protocols": ["nope"]}})
    with pytest.raises(InputError, match="non-empty list"):
        _suite(methods={**d_methods, "LoRA": {**d_methods["LoRA"], "protocols": "base-to-novel"}})


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100)), min_size=2, max_size=25))
def test_paired_difference_matches_scipy(pairs):
    a, b = (np.array(x) for x in zip(*pairs))
    d = a - b
    got = paired_difference(a, b)
    assert got["mean"] == pytest.approx(d.mean(), abs=1e-9) and got["n"] == len(d)
    if d.std(ddof=1) > 1e-6:
        low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high), rel=1e-6, abs=1e-9)
        assert got["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-6, abs=1e-12)


def test_suite_refuses_bad_input():
    with pytest.raises(InputError, match="disjoint from the tuning seeds"):
        _suite(tuning={"seeds": [7], "transfer_seeds": [2, 9]})
    with pytest.raises(InputError, match="disjoint from the tuning seeds"):
        _suite(seeds=[1, 7])  # 7 is a tuning seed
    with pytest.raises(InputError, match="not under tasks"):
        _suite(base_to_novel=["noise", "fog"])
    with pytest.raises(InputError, match="methods.MMA"):
        _suite(methods={"MMA": {"method": "mma", "adapter": {"hidden": -1}}})
    adaring = {"method": "adaring", "adapter": {"ranks": [2, 4], "rank_budget": 0.1, "diversity_weight": 0.1}}
    precondition = {**SGD, "precondition": "gauss_newton", "precondition_damping": 0.1}
    entry = _suite(methods={"MMA": {**adaring, "optim": precondition}}).method("MMA")  # the quickstart's recipe
    assert entry.optim["precondition"] == "gauss_newton" and entry.adapter["rank_budget"] == 0.1
    with pytest.raises(InputError, match="methods.MMA: optim.precondition must be one of"):
        _suite(methods={"MMA": {**adaring, "optim": {**SGD, "precondition": "newton"}}})
    with pytest.raises(InputError, match="methods.MMA: optim.precondition_damping"):
        _suite(methods={"MMA": {**adaring, "optim": {**precondition, "precondition_damping": 0.0}}})
    with pytest.raises(InputError, match="methods.MMA: optim.max_grad_norm"):
        _suite(methods={"MMA": {**adaring, "optim": {**SGD, "max_grad_norm": -1.0}}})
    with pytest.raises(InputError, match="not paired"):
        row = {"protocol": "p", "task": "t", "seed": 1, "shots_digest": None}
        summarize([{**row, "method": "a", "test_digest": "x"}, {**row, "method": "b", "test_digest": "y"}], "a")
    with pytest.raises(InputError, match="equal-length"):
        paired_difference([1.0, 2.0], [1.0])


def test_method_by_method_runs_stay_paired(model, tmp_path):
    """A suite run in two invocations (some methods, then others with --resume) keeps both and pairs them."""
    spec, bundle = model
    suite = _suite(seeds=[1], base_to_novel=["noise"], transfer={})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_benchmark(suite.select(methods=["zero-shot", "MMA"]), tmp_path, model=spec, bundle=bundle, log=None)
        res = run_benchmark(suite.select(methods=["LoRA"]), tmp_path, model=spec, bundle=bundle, log=None, resume=True)
    runs = res["runs"]
    assert sorted(r["method"] for r in runs) == ["LoRA", "MMA", "zero-shot"]
    assert len({r["test_digest"] for r in runs}) == 1 and len({r["shots_digest"] for r in runs if r["steps"]}) == 1
    assert set(res["summary"]["base-to-novel"]["cells"]["noise"]) == {"LoRA", "MMA", "zero-shot"}
    # The same from two separate folders, combined: the same runs and statistics.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_benchmark(suite.select(methods=["LoRA"]), tmp_path / "b", model=spec, bundle=bundle, log=None)
    first = json.loads((tmp_path / "results.json").read_text())
    first["runs"] = [r for r in first["runs"] if r["method"] != "LoRA"]
    (tmp_path / "a.json").write_text(json.dumps(first))
    both = combine_results([tmp_path / "a.json", tmp_path / "b" / "results.json"], tmp_path / "c")
    strip = ("wall_s", "train_time_s", "eval_time_s", "unit_setup_s", "run_dir")
    assert sorted(({k: v for k, v in r.items() if k not in strip} for r in both["runs"]), key=str) == sorted(
        ({k: v for k, v in r.items() if k not in strip} for r in runs), key=str
    )
    assert both["seeds"] == [1] and (tmp_path / "c" / "forest.png").is_file()
    with pytest.raises(InputError, match="share runs"):
        combine_results([tmp_path / "a.json", tmp_path / "a.json"], tmp_path / "d")


def test_combined_results_keep_methods_that_cover_some_protocols(tmp_path):
    """An ablation run on base-to-novel alone joins a full run: a seed counts when every method of each
    protocol has all of that protocol's tasks; a seed missing one of them is left out of the statistics."""

    def row(method, protocol, task, seed, score):
        b2n = protocol == "base-to-novel"
        return {"method": method, "protocol": protocol, "source": "a", "task": task, "seed": seed,
                "hm": score if b2n else None, "base": score if b2n else None, "novel": score if b2n else None,
                "all": None if b2n else score, "test_digest": f"{protocol}{task}{seed}", "shots_digest": None,
                "n_trainable": 1, "steps": 1, "train_time_s": 0.0}  # fmt: skip

    full = [row(m, p, t, s, 50.0 + s + (m == "new"))
            for m in ("MMA", "new") for s in (1, 2, 3, 4)
            for p, t in (("base-to-novel", "a"), ("cross-task", "a"), ("cross-task", "b"))
            if not (m == "MMA" and s == 4 and t == "b")]  # fmt: skip
    abl = [row("ablation", "base-to-novel", "a", s, 40.0) for s in (1, 2, 4)]
    (tmp_path / "full.json").write_text(json.dumps({"runs": full}))
    (tmp_path / "abl.json").write_text(json.dumps({"runs": abl}))
    res = combine_results([tmp_path / "full.json", tmp_path / "abl.json"], tmp_path / "out")
    assert res["seeds"] == [1, 2]  # 3: no ablation run; 4: MMA lacks a cross-task target
    b2n = res["summary"]["base-to-novel"]["cells"]["a"]
    assert set(b2n) == {"MMA", "new", "ablation"} and b2n["ablation"]["n"] == 2
    assert b2n["ablation"]["diff"]["mean"] == pytest.approx(40.0 - 51.5)  # MMA: 51 and 52
    assert set(res["summary"]["cross-task"]["cells"]["b"]) == {"MMA", "new"}


def test_shipped_suite_has_a_bracketed_recipe_for_every_method_and_protocol():
    """configs/suites/adapters.yaml and the recipes it reads: every trained method, every protocol, tuned."""
    from trkit_vlm.demo.suite import BASE_TO_NOVEL, load_suite

    root = Path(__file__).resolve().parents[2]
    suite = load_suite(root / "configs" / "suites" / "adapters.yaml")
    suite.recipes = str(root / "benchmarks" / "results" / "suite_recipes.json")
    content = json.loads(Path(suite.recipes).read_text())
    assert len(suite.seeds) >= 20 and len(suite.base_to_novel) >= 4 and len(suite.transfer) == 2
    for protocol in [BASE_TO_NOVEL, *[p.name for p in suite.transfer]]:
        table = content["recipes"] if protocol == BASE_TO_NOVEL else content["by_protocol"][protocol]
        for m in suite.methods:
            if not m.trains or not m.runs_in(protocol):
                continue
            r = table[m.label]
            assert not r["still_on_edge"], (protocol, m.label)
            assert r["optim"]["lr"] == max(r["points"], key=lambda p: p["score"])["lr"]
            assert suite.load_recipes(protocol)[m.label] == r["optim"]


def _compress_suite(budget: int = 600, **over):
    adamw = {"name": "adamw", "batch_size": 10, "weight_decay": 0.0005}
    methods = {
        "MMA": {"method": "mma", "adapter": {"hidden": 4}, "optim": {**SGD, "lr": 0.5, "epochs": 2}},
        "AdaRing from MMA": {
            "method": "adaring",
            "compress": {"source": "MMA", "budget": budget},
            "optim": {**adamw, "lr": 1e-3, "epochs": 1},
        },  # fmt: skip
    }
    tuning = {"seeds": [7], "eval_per_class": 2, "extend": 0, "grids": {"adamw": {"lr": [1e-3, 1e-2], "epochs": [1]}}}
    return _suite(seeds=[1], base_to_novel=["noise"], transfer={}, methods=methods, tuning=tuning, **over)


def test_a_compressed_method_trains_its_source_compresses_it_and_fine_tunes(model, tmp_path):
    """compress: {source: MMA, budget: N}: the unit's MMA run is compressed to <= N parameters (once, reused
    from the MMA row), the result is fine-tuned from those weights, and the kept folder re-evaluates to its row."""
    from trkit_vlm.adapters.io import read_adapter_file

    spec, bundle = model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_benchmark(_compress_suite(), tmp_path / "both", model=spec, bundle=bundle, log=None)
        alone = run_benchmark(
            _compress_suite().select(methods=["AdaRing from MMA"]), tmp_path / "alone", model=spec, bundle=bundle,
            log=None,
        )  # fmt: skip
    rows = {r["method"]: r for r in res["runs"]}
    mma, ring = rows["MMA"], rows["AdaRing from MMA"]
    assert 0 < ring["n_trainable"] <= 600 < mma["n_trainable"]
    assert ring["shots_digest"] == mma["shots_digest"] and ring["test_digest"] == mma["test_digest"]
    # the source's training is part of the method's cost
    assert ring["train_time_s"] > mma["train_time_s"] and ring["steps"] > mma["steps"]
    cfg = json.loads((Path(ring["run_dir"]) / "config.json").read_text())
    compressed = Path(cfg["init_adapters"])
    assert compressed.name == "compressed" and cfg["method"] == "adaring"
    saved, _, _ = read_adapter_file(compressed / "adapters.safetensors")
    assert saved.method == "adaring"
    report = json.loads((compressed / "report.json").read_text())
    assert Path(report["source"]).resolve() == Path(mma["run_dir"]).resolve()  # the MMA row's own run
    metrics = evaluate_run(ring["run_dir"])
    assert metrics["hm"] == pytest.approx(ring["hm"], abs=1e-6)
    # Selected alone, the method trains its source itself, on the same draw, to the same result.
    (solo,) = alone["runs"]
    assert solo["method"] == "AdaRing from MMA" and solo["hm"] == pytest.approx(ring["hm"], abs=1e-6)


def test_a_compressed_method_is_tuned_at_its_sources_recipe(model, tmp_path):
    spec, bundle = model
    suite = _compress_suite().select(methods=["AdaRing from MMA"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        content = tune(suite, tmp_path, tmp_path / "recipes.json", model=spec, bundle=bundle, log=None)
    points = content["recipes"]["AdaRing from MMA"]["points"]
    assert sorted(p["lr"] for p in points) == [1e-3, 1e-2]
    assert all(0 <= p["score"] <= 100 for p in points)


def test_compress_entries_are_checked():
    with pytest.raises(InputError, match="must name an MMA method"):
        _suite(methods={"LoRA": {"method": "lora", "adapter": {"rank": 1}},
                                 "X": {"method": "adaring", "compress": {"source": "LoRA", "budget": 10}}})  # fmt: skip
    with pytest.raises(InputError, match="not in the suite"):
        _suite(methods={"X": {"method": "adaring", "compress": {"source": "MMA", "budget": 10}}})
    mma = {"method": "mma", "adapter": {"hidden": 4}}
    with pytest.raises(InputError, match="budget must be a parameter count"):
        _suite(methods={"MMA": mma, "X": {"method": "adaring", "compress": {"source": "MMA", "budget": 0.1}}})
    with pytest.raises(InputError, match="no adapter fields"):
        _suite(methods={"MMA": mma, "X": {"method": "adaring", "adapter": {"ranks": [2]},
                                          "compress": {"source": "MMA", "budget": 10}}})  # fmt: skip
    with pytest.raises(InputError, match=r"compress must be \{source: LABEL, budget: N\}"):
        _suite(methods={"MMA": mma, "X": {"method": "adaring", "compress": {"source": "MMA"}}})
