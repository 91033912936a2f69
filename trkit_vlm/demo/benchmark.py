"""Running a benchmark suite: paired runs of every method on every task and seed, in one or more processes.

The unit of work is one (protocol, task, seed): its data (the few-shot draws and the scored images of that
seed) are built once and every method of the suite trains and is scored on them, so the runs that are
compared share everything but the method. Scoring uses a :class:`~trkit_vlm.evaluation.cached.PrefixEvaluator`
per scored image set: the frozen image prefix (the blocks before the first adapted one) runs once per unit.

- base-to-novel: train on the base classes (16 shots each), score base and novel (5-way each) and HM;
- transfer protocols: train on every class of the source task, score every class (``all``) of the source
  and of each target task (other pictures, other prompts).

Each run is the regular ``train()`` (``trkit-vlm train``) with the task recorded in its config, so a kept run
folder re-evaluates with ``trkit-vlm eval RUN`` to the same numbers. A method with ``compress`` (see
:class:`~trkit_vlm.demo.suite.MethodEntry`) trains its MMA source on the same draw, compresses it
(``trkit-vlm compress``, into the run's ``compressed/`` folder) and fine-tunes the result
(``trkit-vlm train --init-adapters``); its ``steps`` are both stages' and its ``train_time_s`` the three together.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trkit.errors import InputError
from trkit_vlm.adapters import adapter_config_from_dict, add_adapters, remove_adapters
from trkit_vlm.data.datasets import ClassificationData
from trkit_vlm.data.fashion_mnist import fashion_mnist_data
from trkit_vlm.data.fewshot import fewshot_cache_path
from trkit_vlm.data.tasks import TaskPools, TaskSpec, scored_data, task_pools
from trkit_vlm.demo.processes import run_in_processes
from trkit_vlm.demo.suite import BASE_TO_NOVEL, MethodEntry, SuiteConfig
from trkit_vlm.evaluation.cached import PrefixEvaluator
from trkit_vlm.models import ClipBundle, load_clip, register_model_config
from trkit_vlm.training import prefix_cache as pc
from trkit_vlm.training.config import DataConfig, LossConfig, OptimConfig, RunConfig
from trkit_vlm.training.init_adapters import config_with_init_adapters
from trkit_vlm.training.train import train

__all__ = [
    "ModelSpec",
    "Context",
    "run_description",
    "method_runs",
    "protocol_runs",
    "plan_units",
    "run_unit",
    "execute",
]


@dataclass
class ModelSpec:
    """How a worker process builds the backbone: the cached small CLIP, or a registered config (tests).

    ``config`` None and ``pretrained`` None: the small CLIP of ``trkit_vlm.demo.small_clip`` (pre-trained once).
    Otherwise ``name`` is registered with ``config`` and loaded from ``pretrained`` (None: random weights
    drawn from ``seed``, the same in every process). ``data_root``: the Fashion-MNIST idx folder (None: the
    installed one); ``holdout``: training images per class the backbone never saw, and their seed (None:
    the small CLIP's pre-training hold-out); shots are drawn outside it, validation images inside it.
    """

    name: str | None = None
    config: dict[str, Any] | None = None
    pretrained: str | None = None
    seed: int = 0
    data_root: str | None = None
    holdout: tuple[int, int] | None = None

    def load(self) -> ClipBundle:
        if self.config is None and self.pretrained is None:
            from trkit_vlm.demo.small_clip import load_small_clip

            return load_small_clip(progress=False)
        if self.config is not None:
            register_model_config(self.name, self.config)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights are what a test asks for
            torch.manual_seed(self.seed)
            return load_clip(self.name, self.pretrained)


@dataclass
class Context:
    """What a process keeps between units: the backbone, the dataset and each task's shifted pools."""

    bundle: ClipBundle
    data: ClassificationData
    holdout: tuple[int, int]  # (per class, seed): the images the backbone never saw in pre-training
    data_root: str | None = None
    pools: dict[str, TaskPools] = field(default_factory=dict)

    @classmethod
    def create(cls, model: ModelSpec, bundle: ClipBundle | None = None) -> Context:
        from trkit_vlm.demo.small_clip import PretrainRecipe

        recipe = PretrainRecipe()
        holdout = model.holdout or (recipe.val_per_class, recipe.seed)
        data = fashion_mnist_data(root=model.data_root)
        return cls(bundle or model.load(), data, (int(holdout[0]), int(holdout[1])), model.data_root)

    def spec(self, task: dict[str, Any], seed: int, eval_split: str, eval_per_class: int | None) -> dict[str, Any]:
        """The task's full TaskSpec dict for one seed: hold-out, scored split, subset size and seed."""
        d = {**task, "holdout_per_class": self.holdout[0], "holdout_seed": self.holdout[1]}
        d.update(eval_split=eval_split, eval_per_class=eval_per_class, eval_seed=seed)
        return TaskSpec.from_dict(d).to_dict()

    def task_data(self, spec: dict[str, Any]) -> ClassificationData:
        """``apply_task(dataset, spec)``, with the shifted pools of the task built once per process."""
        key = json.dumps({k: spec[k] for k in ("shift", "params", "holdout_per_class", "holdout_seed", "eval_split")})
        if key not in self.pools:
            if len(self.pools) >= 3:  # a few tasks at a time (~50 MB each)
                self.pools.pop(next(iter(self.pools)))
            self.pools[key] = task_pools(self.data, spec)
        return scored_data(self.pools[key], spec, self.data.name)


def prefix_depth(bundle: ClipBundle, methods: list[dict[str, Any]]) -> int:
    """Image blocks before the first one any of ``methods`` adapts (the prefix a unit computes once)."""
    model = bundle.model
    depth = len(model.visual.transformer.resblocks)
    n = depth
    for m in methods:
        if m["method"] is None:
            continue
        m = m["compress"]["source"] if "compress" in m else m  # a compressed ring adapts its source's layers
        add_adapters(model, adapter_config_from_dict({"method": m["method"], **m["adapter"]}))
        try:
            n = min(n, pc.first_adapted_layer(model, "image") - 1)
        finally:
            remove_adapters(model)
    return n


def digest(records: list) -> str:
    """16 hex digits identifying a list of ``(uint8 image, label)`` records (the scored images of a run)."""
    h = hashlib.sha256()
    for img, label in records:
        h.update(img.tobytes())
        h.update(str(label).encode())
    return h.hexdigest()[:16]


def protocol_runs(suite: SuiteConfig) -> dict[str, list[dict[str, Any]]]:
    """``{protocol: method_runs(...)}`` with each protocol's tuned recipes (see ``SuiteConfig.load_recipes``)."""
    names = [BASE_TO_NOVEL, *[p.name for p in suite.transfer]]
    return {name: method_runs(suite, suite.load_recipes(name), name) for name in names}


def run_description(
    suite: SuiteConfig, entry: MethodEntry, optim: dict[str, Any], recipes: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """What a unit needs to train ``entry`` with the optimiser fields ``optim``; for an entry with ``compress``,
    also its source's run at the source's tuned recipe (from ``recipes``)."""
    run = {"label": entry.label, "method": entry.method, "adapter": entry.adapter, "loss": entry.loss, "optim": optim}
    if entry.compress is not None:
        source = entry.compress_source
        assert source is not None  # set when the suite was read
        source_run = run_description(suite, source, suite.optim_for(source, recipes), recipes)
        run["compress"] = {"source": source_run, "budget": entry.compress["budget"]}
    return run


def method_runs(
    suite: SuiteConfig, recipes: dict[str, dict[str, Any]], protocol: str | None = None
) -> list[dict[str, Any]]:
    """One run description per method of ``suite`` (that runs in ``protocol``, when given), its optimiser
    completed by the tuned recipe."""
    runs = []
    for m in suite.methods:
        if protocol is not None and not m.runs_in(protocol):
            continue
        optim = suite.optim_for(m, recipes) if m.trains else {}
        runs.append(run_description(suite, m, optim, recipes))
    return runs


def plan_units(
    suite: SuiteConfig,
    runs: list[dict[str, Any]] | dict[str, list[dict[str, Any]]],
    output_dir: str,
    eval_split: str = "test",
    seeds: list[int] | None = None,
    eval_per_class: int | None = None,
    transfer: bool = True,
) -> list[dict[str, Any]]:
    """The units of ``suite``: one per (protocol, source task, seed), each holding all of ``runs``.

    ``runs``: one list for every protocol, or ``{protocol: runs}`` (recipes tuned per protocol).
    """
    protocols = [(BASE_TO_NOVEL, t, []) for t in suite.base_to_novel]
    protocols += [(p.name, p.source, p.targets) for p in suite.transfer] if transfer else []
    units = []
    # Seed by seed: a suite stopped part-way has every protocol of the seeds it finished (still paired).
    for seed in seeds if seeds is not None else suite.seeds:
        for protocol, source, targets in protocols:
            if isinstance(runs, dict) and not runs[protocol]:
                continue  # no method runs in this protocol
            units.append(
                {
                    "protocol": protocol,
                    "source": source,
                    "targets": targets,
                    "seed": seed,
                    "tasks": {t: suite.tasks[t] for t in [source, *targets]},
                    "runs": runs[protocol] if isinstance(runs, dict) else runs,
                    "shots": suite.shots,
                    "eval_split": eval_split,
                    "eval_per_class": suite.eval_per_class if eval_per_class is None else eval_per_class,
                    "output_dir": output_dir,
                }
            )
    return units


def _run_config(ctx: Context, unit: dict, run: dict, spec: dict, output_dir: str) -> RunConfig:
    b2n = unit["protocol"] == BASE_TO_NOVEL
    data = DataConfig(
        dataset="fashion_mnist",
        root=ctx.data_root,
        shots=unit["shots"],
        subsample="base" if b2n else "all",
        augment=False,
        task=spec,
    )
    slug = "".join(c if c.isalnum() else "_" for c in run["label"].lower()).strip("_")
    return RunConfig(
        model=ctx.bundle.name,
        pretrained=ctx.bundle.pretrained,
        method=run["method"],
        adapter=dict(run["adapter"]),
        data=data,
        optim=OptimConfig(**run["optim"]),
        loss=LossConfig(**run["loss"]),
        seed=unit["seed"],
        init_seed=run.get("init_seed"),  # a variance study's own adapter initialisation (None: the draw's seed)
        output_dir=str(Path(output_dir) / unit["protocol"] / unit["source"] / slug),
        log_every=10**9,
        checkpoint=False,
    )


def run_unit(ctx: Context, unit: dict[str, Any], keep_runs: bool = True) -> list[dict[str, Any]]:
    """Train and score every run of ``unit`` on the same draws and images; one row per run and scored task."""
    t_unit = time.perf_counter()
    seed, protocol = unit["seed"], unit["protocol"]
    specs = {t: ctx.spec(unit["tasks"][t], seed, unit["eval_split"], unit["eval_per_class"]) for t in unit["tasks"]}
    data = {t: ctx.task_data(s) for t, s in specs.items()}
    tok, model = ctx.bundle.tokenizer, ctx.bundle.model
    depth = prefix_depth(ctx.bundle, unit["runs"])
    scored = [unit["source"], *unit["targets"]]
    evaluators = {
        t: PrefixEvaluator(model, tok, data[t], specs[t]["template"] or DataConfig().template, depth) for t in scored
    }
    digests = {t: digest(data[t].test) for t in scored}
    setup_s = time.perf_counter() - t_unit

    def evaluate(m: torch.nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = dict(evaluators[unit["source"]](m))
        if unit["targets"]:
            out["targets"] = {t: evaluators[t](m) for t in unit["targets"]}
        return out

    rows = []
    trained: dict[str, tuple[RunConfig, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="trkit-bench-") as tmp:
        out_dir = unit["output_dir"] if keep_runs else tmp
        for run in unit["runs"]:
            t0 = time.perf_counter()
            common = {"protocol": protocol, "source": unit["source"], "seed": seed, "method": run["label"]}
            if run["method"] is None:
                scores, meta = evaluate(model), {"n_trainable": 0, "steps": 0, "epochs": 0, "train_time_s": 0.0}
                meta.update(eval_time_s=time.perf_counter() - t0, shots_digest=None, run_dir=None)
            else:
                cfg, m = _train(ctx, unit, run, specs[unit["source"]], data[unit["source"]], out_dir, evaluate, trained)
                scores = {k: m[k] for k in ("base", "novel", "hm", "all", "targets") if k in m}
                fewshot = fewshot_cache_path(cfg.output_dir, cfg.fewshot_key(), cfg.data.shots, cfg.seed)
                meta = {k: m[k] for k in ("n_trainable", "steps", "epochs", "train_time_s", "eval_time_s")}
                meta.update(
                    lr=cfg.optim.lr,
                    shots_digest=hashlib.sha256(
                        json.dumps(json.loads(fewshot.read_text())["train"]).encode()
                    ).hexdigest()[:16],
                    run_dir=m["run_dir"] if keep_runs else None,
                )
            meta["wall_s"] = time.perf_counter() - t0
            rows.append({**common, "task": unit["source"], **{k: scores.get(k) for k in ("base", "novel", "hm", "all")},
                         "test_digest": digests[unit["source"]], **meta})  # fmt: skip
            for t, s in scores.get("targets", {}).items():
                rows.append({**common, "task": t, "all": s["all"], "test_digest": digests[t], **meta})
    for r in rows:
        r["unit_setup_s"] = setup_s
    return rows


def _train(
    ctx: Context, unit: dict, run: dict, spec: dict, data: ClassificationData, out_dir: str, evaluator, trained: dict
) -> tuple[RunConfig, dict[str, Any]]:
    """Train and score one run of a unit; ``trained`` holds the unit's finished runs by recipe, so an MMA run
    that is both a row of the suite and a compressed method's source trains once."""
    key = json.dumps(run, sort_keys=True)
    if key in trained:
        return trained[key]
    if "compress" not in run:
        cfg = _run_config(ctx, unit, run, spec, out_dir)
        trained[key] = cfg, train(cfg, bundle=ctx.bundle, data=data, progress=False, evaluator=evaluator)
        return trained[key]
    from trkit_vlm.compression.run import compress_run  # the compression stack only when a suite uses it

    _, source = _train(ctx, unit, run["compress"]["source"], spec, data, out_dir, evaluator, trained)
    base = _run_config(ctx, unit, {**run, "adapter": {}}, spec, out_dir)
    ring, budget = Path(base.output_dir) / "compressed", run["compress"]["budget"]
    t0 = time.perf_counter()
    fraction = budget / source["n_trainable"]
    result = compress_run(source["run_dir"], ring, budget=fraction, bundle=ctx.bundle, data=data, evaluate=False)
    compress_s, n_params = time.perf_counter() - t0, result["result"].n_params
    if n_params > budget:
        raise InputError(f"{run['label']}: the compressed adapter has {n_params} parameters, over the budget {budget}")
    cfg = config_with_init_adapters(base, str(ring))
    m = train(cfg, bundle=ctx.bundle, data=data, progress=False, evaluator=evaluator)
    # the method's cost is its source's too: steps and time of both stages (and the compression's time)
    m = {
        **m,
        "steps": source["steps"] + m["steps"],
        "train_time_s": source["train_time_s"] + compress_s + m["train_time_s"],
    }
    trained[key] = cfg, m
    return cfg, m


# ------------------------------------------------------------------------------------- processes
_WORKER: dict[str, Any] = {}


def _init_worker(model: ModelSpec, threads: int, keep_runs: bool) -> None:
    torch.set_num_threads(threads)
    _WORKER["ctx"] = Context.create(model)
    _WORKER["keep_runs"] = keep_runs


def _run_in_worker(unit: dict[str, Any]) -> list[dict[str, Any]]:
    return run_unit(_WORKER["ctx"], unit, _WORKER["keep_runs"])


def execute(
    units: list[dict[str, Any]],
    model: ModelSpec,
    workers: int = 1,
    threads: int = 1,
    keep_runs: bool = True,
    bundle: ClipBundle | None = None,
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Run ``units`` (in this process, or ``workers`` processes of ``threads`` threads); yield (unit, rows).

    ``bundle``: a ready backbone for the in-process case (``workers=1``).
    """
    if workers < 1 or threads < 1:
        raise InputError(f"workers and threads must be >= 1, got {workers} and {threads}")
    if workers == 1:
        ctx = Context.create(model, bundle)
        for unit in units:
            yield unit, run_unit(ctx, unit, keep_runs)
        return
    yield from run_in_processes(_run_in_worker, units, workers, _init_worker, (model, threads, keep_runs))
