"""The AdaRing quickstart: base-to-novel few-shot adaptation of the project's small CLIP, end to end.

``run_quickstart()`` pre-trains (or reuses) the small Fashion-MNIST CLIP (``trkit_vlm.demo.small_clip``),
builds the contrast-shifted task (``trkit_vlm.demo.tasks``), and trains with ``trkit_vlm.training.train.train``:
MMA, AdaRing, and two AdaRing ablations, 16 shots of the 5 base classes, seeds 1-3. It writes
``results.json``, ``results.md`` and ``results.png`` and prints the table.

The small model is NOT OpenAI CLIP; its numbers are not comparable with published ones. The same
methods on a real ViT-B/16 checkpoint and the 11 CoOp datasets: ``trkit-vlm train`` (docs/tutorials).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trkit.env import env_info
from trkit_vlm.data.fashion_mnist import fashion_mnist_data
from trkit_vlm.data.tasks import TaskSpec, apply_task
from trkit_vlm.demo.benchmark import prefix_depth
from trkit_vlm.demo.processes import run_in_processes
from trkit_vlm.demo.small_clip import PretrainRecipe, load_small_clip, pretrain_info
from trkit_vlm.demo.tasks import DEFAULT_SHIFT_STRENGTH, contrast_task
from trkit_vlm.evaluation.cached import PrefixEvaluator
from trkit_vlm.evaluation.report import aggregate, figure_png
from trkit_vlm.files import atomic_write_bytes, atomic_write_text
from trkit_vlm.models import ClipBundle
from trkit_vlm.training.config import DataConfig, LossConfig, OptimConfig, RunConfig
from trkit_vlm.training.train import train

# Each method's SGD recipe, chosen on the validation split by benchmarks/small_clip_sweep.py --tune
# (benchmarks/results/small_clip_quickstart_tuning.json), never on test. Batch 16, momentum 0.9, weight
# decay 5e-4 and the cosine schedule are MMA's; only lr, epochs and clipping were searched.
MMA_OPTIM = {"name": "sgd", "lr": 0.05, "epochs": 20, "batch_size": 16, "weight_decay": 5e-4}
# AdaRing trains at MMA's recipe, unclipped, with its cores' Gauss-Newton preconditioner
# (trkit.nn.RingPreconditioner, damping 0.1): without it the three-core product diverges at these rates.
# The per-core step limit (10% of a core's norm a step) guards against the rare runaway step.
ADARING_OPTIM = {**MMA_OPTIM, "precondition": "gauss_newton", "precondition_damping": 0.1, "core_step_ratio": 0.1}
OPTIM = MMA_OPTIM  # the default recipe for a variant that names none
# Fixed views (no random crops at 28 px), so a frozen prefix (the image blocks before the first adapted one)
# is computed once per image.
DATA = {"augment": False}
# Generalisation-aware loss of AdaRing: text consistency to the frozen model (KgCoOp's weight 8). The
# image term (PromptSRC's L1, weight 10) pulls features back to the frozen ones, which under a domain
# shift undoes the adaptation: on validation it cut novel accuracy from 77 to 49 (weight 1: to 72).
GA_LOSS = {"lambda_text": 8.0, "lambda_image": 0.0}
NO_LOSS = {"lambda_text": 0.0, "lambda_image": 0.0}

# AdaRing: one cross-layer ring per projection over EVERY layer of both towers (a layer costs the ring
# only its slice of the layer core), branches of TR rank 3 and 6 adapted down to 10% of MMA's parameters
# (MMA at its own placement) during training, fixed branch scales, Kaiming-initialised cores, the
# branch-diversity term. All chosen on validation (benchmarks/adaring_validation.py --study placement,
# docs/tutorials/quickstart.md; the benchmark suite's recipe, benchmarks/adaring_placement.py).
ADARING = {
    "hidden": 32,
    "ranks": [3, 6],
    "rank_budget": 0.1,
    "text_layers": "all",
    "image_layers": "all",
    "learn_branch_scale": False,
    "init": "kaiming",
    "diversity_weight": 0.1,
}

# label -> (method, adapter fields, loss weights, optimiser). MMA's design scaled to the small model:
# hidden 32, the last two thirds of the 6 layers (3..6) of both towers, scale 0.001 with gradient scaling.
# AdaRing's output scale and gradient rule are MMA's.
VARIANTS: dict[str, tuple] = {
    "MMA": ("mma", {"hidden": 32}, NO_LOSS, MMA_OPTIM),
    "AdaRing": ("adaring", ADARING, GA_LOSS, ADARING_OPTIM),
    "AdaRing, single branch": ("adaring", {**ADARING, "ranks": [6], "diversity_weight": 0.0}, GA_LOSS, ADARING_OPTIM),
    "AdaRing, no GA loss": ("adaring", ADARING, NO_LOSS, ADARING_OPTIM),
}
ZERO_SHOT = "zero-shot"


@dataclass
class QuickstartConfig:
    """What the quickstart runs. ``quick`` settings (tests) shrink everything."""

    output_dir: str = "output/quickstart"
    seeds: tuple[int, ...] = (1, 2, 3)
    shots: int = 16
    strength: float = DEFAULT_SHIFT_STRENGTH
    eval_split: str = "test"
    eval_per_class: int | None = None
    variants: dict = field(default_factory=lambda: copy.deepcopy(VARIANTS))
    optim: dict | None = None  # overrides every variant's own recipe when set (tests, sweeps)
    data: dict = field(default_factory=lambda: dict(DATA))
    recipe: PretrainRecipe | None = None  # None = the default recipe
    cache_dir: str | None = None  # small-CLIP cache root (None = $TRKIT_CACHE or ~/.cache/trkit)
    workers: int = 1  # processes of one thread each (a small model uses 2 cores better as 2 processes)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def task_spec(qc: QuickstartConfig) -> TaskSpec:
    """The quickstart's task: Fashion-MNIST under the contrast shift, scored on ``qc.eval_split``."""
    return contrast_task(qc.strength, qc.eval_split, qc.eval_per_class, qc.recipe)


def run_config(qc: QuickstartConfig, label: str, seed: int, bundle: ClipBundle) -> RunConfig:
    """The ``RunConfig`` of one (variant, seed) run on the quickstart's model and task."""
    method, adapter, loss, *rest = qc.variants[label]
    optim = qc.optim if qc.optim is not None else (rest[0] if rest else OPTIM)
    return RunConfig(
        model=bundle.name,
        pretrained=bundle.pretrained,
        method=method,
        adapter=dict(adapter),
        data=DataConfig(
            dataset="fashion_mnist",
            root=None,
            shots=qc.shots,
            subsample="base",
            task=task_spec(qc).to_dict(),
            **qc.data,
        ),
        optim=OptimConfig(**optim),
        loss=LossConfig(**loss),
        seed=seed,
        output_dir=str(Path(qc.output_dir) / "runs" / _slug(label)),
        log_every=1000,
    )


def run_quickstart(
    qc: QuickstartConfig | None = None, progress: bool = True, bundle=None, data=None, log=print
) -> dict:
    """Run every variant for every seed; write and return the results.

    Args:
        qc: what to run (default :class:`QuickstartConfig`).
        progress: progress bars for pre-training; one line per run either way.
        bundle: a ready ``ClipBundle`` (default: the cached small CLIP, pre-trained if missing).
        data: a ready ``ClassificationData`` (default: :func:`task_spec` applied to Fashion-MNIST); it
            must be that task (the run folders record the task, and ``trkit-vlm eval`` rebuilds it).
        log: where the progress lines go.

    Returns:
        ``{"rows": per-variant aggregates, "runs": per-run metrics, "paths": written files, ...}``.
    """
    qc = qc or QuickstartConfig()
    t_all = time.perf_counter()
    own_model = bundle is None and data is None  # worker processes can rebuild exactly these
    if bundle is None:
        t0 = time.perf_counter()
        bundle = load_small_clip(qc.recipe, qc.cache_dir, progress=progress)
        log(f"small CLIP ready ({time.perf_counter() - t0:.0f} s): {bundle.pretrained}")
    if data is None:
        data = apply_task(fashion_mnist_data(), task_spec(qc))
    runs: list[dict] = []
    t0 = time.perf_counter()
    evaluator = _evaluator(qc, bundle, data)
    zs = evaluator(bundle.model)
    zs_time = time.perf_counter() - t0
    for seed in qc.seeds:  # no training, no sampling: the same for every seed
        runs.append(
            {"method": ZERO_SHOT, "seed": seed, **zs, "n_trainable": 0, "train_time_s": 0.0, "eval_time_s": zs_time}
        )
    log(f"{ZERO_SHOT:<22} base {zs['base']:.2f} novel {zs['novel']:.2f} HM {zs['hm']:.2f}")
    jobs = [(label, seed) for label in qc.variants for seed in qc.seeds]
    for run in _train_all(qc, jobs, bundle, data, evaluator, own_model):
        runs.append(run)
        log(
            f"{run['method']:<22} seed {run['seed']}: base {run['base']:.2f} novel {run['novel']:.2f} HM "
            f"{run['hm']:.2f} ({run['n_trainable']:,} params, train {run['train_time_s']:.1f} s, eval "
            f"{run['eval_time_s']:.1f} s)"
        )
    order = {job: i for i, job in enumerate(jobs)}  # the table lists runs in job order whatever finished first
    runs.sort(key=lambda r: -1 if r["method"] == ZERO_SHOT else order[(r["method"], r["seed"])])
    rows = aggregate_runs(runs)
    info = pretrain_info(qc.recipe, qc.cache_dir) if bundle.pretrained else None
    result = {
        "rows": rows,
        "runs": runs,
        "total_time_s": time.perf_counter() - t_all,
        "config": _jsonable(qc),
        "model": bundle.name,
        "weights": bundle.pretrained,
        "pretraining": (info or {}).get("metrics"),
        "n_test": {"base": zs.get("n_base"), "novel": zs.get("n_novel")},
        "env": env_info(),
    }
    result["paths"] = write_results(result, qc.output_dir)
    return result


def _evaluator(qc: QuickstartConfig, bundle: ClipBundle, data) -> PrefixEvaluator:
    """Scores a model on the task's test images; the image blocks before the first adapted one run once for
    every run (the scores are those of evaluate_base_novel; trkit-vlm eval RUN reproduces them)."""
    methods = [{"method": v[0], "adapter": v[1]} for v in qc.variants.values()]
    depth = prefix_depth(bundle, methods)
    return PrefixEvaluator(bundle.model, bundle.tokenizer, data, DataConfig().template, depth)


def _train_one(qc: QuickstartConfig, label: str, seed: int, bundle: ClipBundle, data, evaluator) -> dict:
    cfg = run_config(qc, label, seed, bundle)
    m = train(cfg, bundle=bundle, data=data, progress=False, evaluator=evaluator)
    return {
        "method": label,
        "seed": seed,
        **{k: m[k] for k in ("base", "novel", "hm", "all")},
        "n_trainable": m["n_trainable"],
        "train_time_s": m["train_time_s"],
        "eval_time_s": m["eval_time_s"],
        "run_dir": m["run_dir"],
    }


_WORKER: dict = {}


def _init_worker(qc: QuickstartConfig) -> None:
    import torch

    torch.set_num_threads(1)
    bundle = load_small_clip(qc.recipe, qc.cache_dir, progress=False, train_if_missing=False)
    data = apply_task(fashion_mnist_data(), task_spec(qc))
    _WORKER.update(qc=qc, bundle=bundle, data=data, evaluator=_evaluator(qc, bundle, data))


def _train_in_worker(job: tuple[str, int]) -> dict:
    w = _WORKER
    return _train_one(w["qc"], job[0], job[1], w["bundle"], w["data"], w["evaluator"])


def _train_all(qc: QuickstartConfig, jobs: list[tuple[str, int]], bundle, data, evaluator, own_model: bool):
    """Yield each job's run: in this process, or in ``qc.workers`` spawned processes (one thread each) that
    load the same cached model and task (only when ``run_quickstart`` built them itself)."""
    if qc.workers <= 1 or not own_model or len(jobs) < 2:
        for label, seed in jobs:
            yield _train_one(qc, label, seed, bundle, data, evaluator)
        return
    for _, run in run_in_processes(_train_in_worker, jobs, min(qc.workers, len(jobs)), _init_worker, (qc,)):
        yield run


def aggregate_runs(runs: list[dict]) -> list[dict]:
    """Per method (in run order): the statistics of ``trkit_vlm.evaluation.report.aggregate`` and
    ``params_vs_mma``, the trainable parameters as a fraction of MMA's."""
    out = aggregate(runs, by=("method",), sort=False)
    mma = next((r for r in out if r["method"] == "MMA"), None)
    for r in out:
        r["params_vs_mma"] = (r["n_trainable"] / mma["n_trainable"]) if mma and mma["n_trainable"] else None
    return out


def markdown_table(rows: list[dict]) -> str:
    """The quickstart table (methods as rows)."""
    lines = [
        "| method | Base | Novel | HM | trainable params | % of MMA | train time / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pct = f"{100 * r['params_vs_mma']:.1f}%" if r.get("params_vs_mma") is not None else "–"
        t = f"{r['train_time_s']:.1f} s" if r["n_trainable"] else "–"
        lines.append(
            f"| {r['method']} | {r['base_mean']:.2f} ± {r['base_std']:.2f} | {r['novel_mean']:.2f} ± "
            f"{r['novel_std']:.2f} | {r['hm_mean']:.2f} ± {r['hm_std']:.2f} | {r['n_trainable']:,} | "
            f"{pct} | {t} |"
        )
    return "\n".join(lines) + "\n"


def plot_png(rows: list[dict], title: str = "") -> bytes:
    """Bars of Base, Novel and HM per method with the seed std as error bars (matplotlib Agg)."""
    import matplotlib  # imported when a chart is drawn: slow to import, and Agg must be chosen first

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.26
    x = np.arange(len(rows))
    for j, (k, name) in enumerate((("base", "Base"), ("novel", "Novel"), ("hm", "HM"))):
        ys = [r[f"{k}_mean"] for r in rows]
        ax.bar(x + (j - 1) * width, ys, width, yerr=[r[f"{k}_std"] for r in rows], capsize=2, label=name)
        for xi, y in zip(x + (j - 1) * width, ys):
            ax.text(xi, y + 1.0, f"{y:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"{r['method']}\n{r['n_trainable']:,} params" for r in rows], fontsize=8)
    ax.set_ylabel("accuracy (%), 5-way")
    ax.set_ylim(0, 100)
    ax.axhline(20, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def write_results(result: dict, out_dir: str | Path) -> dict[str, str]:
    """``results.json``, ``results.md`` and ``results.png`` under ``out_dir`` (atomic writes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "png": out / "results.png"}
    seeds = sorted({r["seed"] for r in result["runs"]})
    atomic_write_text(paths["markdown"], markdown_table(result["rows"]) + _table_note(result, seeds))
    title = (
        f"Small Fashion-MNIST CLIP (not OpenAI CLIP), contrast shift, {len(seeds)} seeds; 16 shots of 5 base classes"
    )
    atomic_write_bytes(paths["png"], plot_png(result["rows"], title))
    paths_s = {k: str(v) for k, v in paths.items()}
    atomic_write_text(paths["json"], json.dumps({**result, "paths": paths_s}, indent=2))
    return paths_s


def _table_note(result: dict, seeds: list[int]) -> str:
    n = result.get("n_test") or {}
    return (
        f"\nMean ± sample std over seeds {seeds}; HM = 2·B·N/(B+N) of the mean Base and Novel (± std of "
        f"per-seed HM). 5-way accuracy on {n.get('base')} base / {n.get('novel')} novel test images. "
        f"Model: the project's small CLIP pre-trained on Fashion-MNIST (not OpenAI CLIP; not comparable "
        f"with published numbers).\n"
    )


def _jsonable(qc: QuickstartConfig) -> dict:
    d = {f.name: getattr(qc, f.name) for f in dataclasses.fields(qc) if f.name != "recipe"}
    d["recipe_key"] = qc.recipe.key() if qc.recipe is not None else None
    return json.loads(json.dumps(d, default=list))
