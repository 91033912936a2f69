"""``trkit-vlm benchmark``: run a suite (results JSON, tables, forest plot) or tune its methods' recipes.

:func:`run_benchmark` plans the suite's units (see :mod:`trkit_vlm.demo.benchmark`), runs them, writes
``results.json`` after every unit (``resume=True`` skips the units already there), then the statistics:
``results.md`` (tables with paired 95% CIs) and ``forest.png``.

:func:`tune` is the one tuning procedure for every method: an ``lr x epochs`` grid (the same size for every
method, per optimiser family) scored by the mean validation HM over the base-to-novel tasks and the tuning
seeds (few-shot draws disjoint from the test seeds; scored images held out from pre-training). A chosen
value on the edge of its grid extends the grid in that direction, up to ``tuning.extend`` times per axis.
The chosen ``lr`` and ``epochs`` (and the steps they train) go into the recipes JSON that the suite reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from trkit.env import env_info
from trkit.errors import InputError
from trkit_vlm.demo.benchmark import ModelSpec, execute, plan_units, protocol_runs, run_description
from trkit_vlm.demo.suite import BASE_TO_NOVEL, SuiteConfig, read_recipes
from trkit_vlm.demo.suite_report import forest_plot_png, markdown_tables, summarize
from trkit_vlm.files import atomic_write_bytes, atomic_write_text
from trkit_vlm.models import ClipBundle

__all__ = ["run_benchmark", "tune", "quick_suite", "write_report", "combine_results"]


def quick_suite(suite: SuiteConfig, seeds: int = 3) -> SuiteConfig:
    """The suite on its first ``seeds`` seeds (``--quick``: a smoke run of every protocol)."""
    import copy

    out = copy.deepcopy(suite)
    out.seeds = suite.seeds[:seeds]
    return out


def _quiet(*args: Any) -> None:
    pass


def _unit_key(unit_or_row: dict[str, Any]) -> tuple:
    return (unit_or_row["protocol"], unit_or_row["source"], unit_or_row["seed"])


def run_benchmark(
    suite: SuiteConfig,
    output_dir: str | Path,
    workers: int = 1,
    threads: int = 1,
    model: ModelSpec | None = None,
    bundle: ClipBundle | None = None,
    keep_runs: bool = True,
    resume: bool = False,
    log=print,
) -> dict[str, Any]:
    """Run every unit of ``suite``; write ``results.json``, ``results.md`` and ``forest.png`` under ``output_dir``.

    Args:
        workers, threads: processes, and torch threads in each (2 x 1 on a 2-core machine).
        model: how each process builds the backbone (default: the cached small CLIP); ``bundle``: a ready
            one for ``workers=1``.
        keep_runs: keep each run's folder (config, adapters, metrics; ``trkit-vlm eval`` re-scores it).
        resume: keep the units already in ``results.json`` and run the others.

    Returns:
        ``{"runs": [...], "summary": {...}, "paths": {...}, ...}``.
    """
    log = log or _quiet
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model or ModelSpec()
    units = plan_units(suite, protocol_runs(suite), str(out / "runs"))
    path = out / "results.json"
    runs: list[dict[str, Any]] = []
    if resume and path.is_file():
        labels = [m.label for m in suite.methods]
        every = json.loads(path.read_text())["runs"]
        old = [r for r in every if r["method"] in labels]
        done = {
            k
            for k in {_unit_key(r) for r in old}
            if {r["method"] for r in old if _unit_key(r) == k} >= {m.label for m in suite.methods if m.runs_in(k[0])}
        }
        # Other methods' runs stay (a suite run method by method); these methods' units are whole or run again.
        runs = [r for r in every if r["method"] not in labels or _unit_key(r) in done]
        units = [u for u in units if _unit_key(u) not in done]
        log(f"resuming: {len(done)} units done, {len(units)} to run")
    t0 = time.perf_counter()
    meta = {"suite": suite.source, "seeds": suite.seeds, "reference": suite.reference, "workers": workers,
            "threads": threads, "env": env_info()}  # fmt: skip
    for i, (unit, rows) in enumerate(execute(units, model, workers, threads, keep_runs, bundle), 1):
        runs += rows
        atomic_write_text(path, json.dumps({**meta, "runs": runs}, indent=1))
        own = [r for r in rows if r["task"] == unit["source"]]
        scores = ", ".join(f"{r['method']} {r['hm'] if r['hm'] is not None else r['all']:.1f}" for r in own)
        log(f"[{i}/{len(units)}] {unit['protocol']} {unit['source']} seed {unit['seed']}: {scores} "
            f"({sum(r['wall_s'] for r in own):.0f} s)")  # fmt: skip
    wall = time.perf_counter() - t0
    timing = {
        "wall_s": wall,
        "units": len(units),
        "trained_runs": sum(1 for r in runs if r["steps"] and r["task"] == r["source"]),
        "mean_run_wall_s": float(np.mean([r["wall_s"] for r in runs if r["task"] == r["source"]])) if runs else 0.0,
    }
    # The statistics cover this suite's seeds (other methods' kept runs may have more).
    return write_report(out, {**meta, "timing": timing}, runs, suite.seeds, suite.reference)


def write_report(
    output_dir: str | Path, meta: dict[str, Any], runs: list[dict[str, Any]], seeds: list[int], reference: str
) -> dict[str, Any]:
    """``results.json`` (``meta``, every run, the summary), ``results.md`` and ``forest.png`` for ``seeds``."""
    out = Path(output_dir)
    summary = summarize([r for r in runs if r["seed"] in seeds], reference)
    md = markdown_tables(summary)
    paths = {"json": str(out / "results.json"), "markdown": str(out / "results.md"), "png": str(out / "forest.png")}
    result = {**meta, "seeds": sorted(seeds), "runs": runs, "summary": summary, "paths": paths}
    atomic_write_text(out / "results.json", json.dumps(result, indent=1))
    atomic_write_text(out / "results.md", md)
    title = f"Small Fashion-MNIST CLIP (not OpenAI CLIP), {len(seeds)} paired seeds"
    atomic_write_bytes(out / "forest.png", forest_plot_png(summary, title))
    return {**result, "markdown": md}


def combine_results(paths: list[str | Path], output_dir: str | Path, reference: str = "MMA") -> dict[str, Any]:
    """One report from the ``results.json`` of suite runs made method by method (same suite, other methods).

    A method may cover some protocols only (an ablation run on base-to-novel alone). The statistics use the
    seeds on which every method of a protocol finished every task of that protocol, for every protocol.
    """
    files = [json.loads(Path(p).read_text()) for p in paths]
    runs = [r for f in files for r in f["runs"]]
    keys = [(r["method"], r["protocol"], r["task"], r["seed"]) for r in runs]
    if len(set(keys)) != len(keys):
        raise InputError("the results files share runs (the same method, protocol, task and seed)")
    covered = {(r["method"], r["protocol"]) for r in runs}  # which protocols each method runs in
    cells = {(r["protocol"], r["task"]) for r in runs}
    needed = {(m, p, t) for m, p in covered for pp, t in cells if pp == p}
    have = set(keys)
    seeds = sorted(s for s in {r["seed"] for r in runs} if all((m, p, t, s) in have for m, p, t in needed))
    if not seeds:
        raise InputError("no seed has runs of every method on every protocol and task")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    meta = {"combined_from": [str(p) for p in paths], "reference": reference,
            "timing": {str(p): f.get("timing") for p, f in zip(paths, files)}, "env": env_info()}  # fmt: skip
    return write_report(output_dir, meta, runs, seeds, reference)


# ------------------------------------------------------------------------------------------ tuning
def _grid_points(lrs: list[float], epochs: list[int]) -> list[tuple[float, int]]:
    return [(float(lr), int(ep)) for lr in lrs for ep in epochs]


def _extend(values: list, best, kind: str) -> tuple[list, bool]:
    """One more value beyond ``best`` when it is the grid's smallest or largest; (new values, extended?)."""
    values = sorted(values)
    if len(values) < 2 or best not in (values[0], values[-1]):
        return values, False
    if kind == "lr":
        ratio = values[1] / values[0] if best == values[0] else values[-1] / values[-2]
        new = best / ratio if best == values[0] else best * ratio
        return sorted([*values, float(f"{new:.3g}")]), True
    if best == values[0]:
        return (sorted([*values, best // 2]), True) if best >= 2 else (values, False)
    return sorted([*values, best * 2]), True


def _tuning_units(suite: SuiteConfig, runs: list[dict[str, Any]], output_dir: str | Path, protocol: str) -> list[dict]:
    """Units on validation images for the tuning seeds: the base-to-novel tasks, or one transfer protocol's
    source alone (its targets stand for unseen tasks, so they play no part in choosing a recipe)."""
    units = plan_units(suite, runs, str(Path(output_dir) / "tuning"), "val", suite.tuning_seeds(protocol),
                       suite.tuning.eval_per_class, transfer=protocol != BASE_TO_NOVEL)  # fmt: skip
    units = [u for u in units if u["protocol"] == protocol]
    for u in units:
        u["targets"], u["tasks"] = [], {u["source"]: u["tasks"][u["source"]]}
    return units


def tune(
    suite: SuiteConfig,
    output_dir: str | Path,
    recipes_path: str | Path,
    methods: list[str] | None = None,
    workers: int = 1,
    threads: int = 1,
    model: ModelSpec | None = None,
    bundle: ClipBundle | None = None,
    log=print,
    protocol: str = BASE_TO_NOVEL,
) -> dict[str, Any]:
    """Tune ``lr`` and ``epochs`` of each method (all trained ones by default) for ``protocol``; write ``recipes_path``.

    Base-to-novel is scored by the mean validation HM over its tasks; a transfer protocol (which trains on
    every class, twice the steps) by the validation all-class accuracy on its source task, and its
    recipes go under the file's ``by_protocol``. Other entries already in ``recipes_path`` are kept.
    Returns the file's content.
    """
    log = log or _quiet
    transfer = {p.name: p for p in suite.transfer}
    if protocol == BASE_TO_NOVEL and not suite.base_to_novel:
        raise InputError("tuning base-to-novel scores its tasks; the suite lists none")
    if protocol != BASE_TO_NOVEL and protocol not in transfer:
        raise InputError(f"no protocol {protocol!r} in the suite; it has {[BASE_TO_NOVEL, *transfer]}")
    metric = "hm" if protocol == BASE_TO_NOVEL else "all"
    labels = [m.label for m in suite.methods if m.trains] if methods is None else list(methods)
    skipped = [label for label in labels if not suite.method(label).runs_in(protocol)]
    if skipped:
        log(f"  not tuned for {protocol} (the suite runs them in other protocols only): {', '.join(skipped)}")
    labels = [label for label in labels if label not in skipped]
    if not labels:
        return json.loads(Path(recipes_path).read_text()) if Path(recipes_path).is_file() else {"recipes": {}}
    entries = {label: suite.method(label) for label in labels}
    grids = {}
    for label, m in entries.items():
        family = m.optim.get("name", "sgd")
        if family not in suite.tuning.grids:
            raise InputError(f"no tuning grid for optimiser {family!r} ({label}); grids: {sorted(suite.tuning.grids)}")
        g = suite.tuning.grids[family]
        grids[label] = {
            "lr": [float(v) for v in g["lr"]],
            "epochs": [int(v) for v in g["epochs"]],
            "ext": {"lr": 0, "epochs": 0},
        }
    known = read_recipes(recipes_path, protocol)  # the recipes of a compressed method's source
    scores: dict[str, dict[tuple[float, int], list[dict]]] = {label: {} for label in labels}
    model = model or ModelSpec()
    t0 = time.perf_counter()
    pending = dict.fromkeys(labels)
    while pending:
        runs = []
        for label in pending:
            m, g = entries[label], grids[label]
            for lr, ep in _grid_points(g["lr"], g["epochs"]):
                if (lr, ep) not in scores[label]:
                    run = run_description(suite, m, {**m.optim, "lr": lr, "epochs": ep}, known)
                    runs.append({**run, "label": f"{label}\t{lr}\t{ep}"})
        units = _tuning_units(suite, runs, output_dir, protocol)
        for i, (unit, rows) in enumerate(execute(units, model, workers, threads, False, bundle), 1):
            for r in rows:
                label, lr, ep = r["method"].split("\t")
                scores[label].setdefault((float(lr), int(ep)), []).append({**r, "score": r[metric]})
            log(f"  tuning {protocol} [{i}/{len(units)}] {unit['source']} seed {unit['seed']} "
                f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
        nxt = {}
        for label in pending:
            g = grids[label]
            best = max(scores[label], key=lambda k: np.mean([r["score"] for r in scores[label][k]]))
            changed = False
            for axis, value in (("lr", best[0]), ("epochs", best[1])):
                if g["ext"][axis] < suite.tuning.extend:
                    g[axis], ext = _extend(g[axis], value, axis)
                    g["ext"][axis] += int(ext)
                    changed |= ext
            if changed:
                nxt[label] = None
                log(f"  {label}: best lr {best[0]} x {best[1]} epochs is on the grid's edge: extending")
        pending = nxt
        # Written after every round, so a stopped tuning keeps what it measured.
        content = _write_recipes(suite, recipes_path, labels, scores, grids, protocol)
    for label in labels:
        r = _recipes_of(content, protocol)[label]
        log(f"{label} ({protocol}): lr {r['optim']['lr']}, {r['optim']['epochs']} epochs ({r['steps']} steps), "
            f"validation {metric} {r['validation_score']:.2f}")  # fmt: skip
    return content


def _recipes_of(content: dict[str, Any], protocol: str) -> dict[str, Any]:
    """The label -> recipe mapping of ``protocol`` inside a recipes file's content (created when missing)."""
    if protocol == BASE_TO_NOVEL:
        return content.setdefault("recipes", {})
    return content.setdefault("by_protocol", {}).setdefault(protocol, {})


def _on_edge(values: list, value) -> bool:
    """Whether ``value`` sits at an end of a grid axis that has more than one value (so could extend)."""
    return len(set(values)) > 1 and value in (min(values), max(values))


def _write_recipes(
    suite: SuiteConfig, recipes_path: str | Path, labels: list[str], scores: dict, grids: dict, protocol: str
) -> dict[str, Any]:
    """Update ``recipes_path`` with the best grid point of each label for ``protocol`` (other entries kept)."""
    recipes_path = Path(recipes_path)
    content = json.loads(recipes_path.read_text()) if recipes_path.is_file() else {"recipes": {}}
    b2n = protocol == BASE_TO_NOVEL
    tasks = suite.base_to_novel if b2n else [next(p.source for p in suite.transfer if p.name == protocol)]
    recipes = _recipes_of(content, protocol)
    for label in labels:
        pts = []
        for (lr, ep), rs in sorted(scores[label].items()):
            per_task = {t: float(np.mean([r["score"] for r in rs if r["task"] == t])) for t in tasks}
            score, train_s = float(np.mean([r["score"] for r in rs])), float(np.mean([r["train_time_s"] for r in rs]))
            pts.append({"lr": lr, "epochs": ep, "score": score, "per_task": per_task, "runs": len(rs),
                        "steps": rs[0]["steps"], "train_time_s": train_s})  # fmt: skip
        best = max(pts, key=lambda p: p["score"])
        g = grids[label]
        recipes[label] = {
            "optim": {"lr": best["lr"], "epochs": best["epochs"]},
            "validation_score": best["score"],
            "steps": best["steps"],
            "grid": {"lr": g["lr"], "epochs": g["epochs"], "extensions": g["ext"], "points": len(pts)},
            # over the points measured so far: true when the extensions ran out (or the tuning was stopped)
            "still_on_edge": _on_edge([p["lr"] for p in pts], best["lr"])
            or _on_edge([p["epochs"] for p in pts], best["epochs"]),
            "points": pts,
        }
    scored = ("mean validation HM over the base-to-novel tasks and seeds" if b2n else
              "validation all-class accuracy on the source task (targets unseen), mean over seeds")  # fmt: skip
    content.setdefault("tuning_by_protocol", {})[protocol] = {
        "seeds": suite.tuning_seeds(protocol),
        "tasks": tasks,
        "eval_per_class": suite.tuning.eval_per_class,
        "scored": f"validation images (held out from pre-training); {scored}",
        "rule": "lr x epochs grid per optimiser; a choice on the grid's edge extends that axis "
        f"(at most {suite.tuning.extend} times)",
        "suite": suite.source,
    }
    content["env"] = env_info()
    recipes_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(recipes_path, json.dumps(content, indent=1))
    return content
