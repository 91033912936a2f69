"""How much of a run's validation score is the adapters' random start, and how much the few-shot draw?

The suite's AdaRing and MMA (their suite recipes at lr 0.05, 10 epochs), and AdaRing on fewer layers, on the
suite's base-to-novel VALIDATION images of the image tasks where their scores spread most (contrast, edges),
on few-shot draws 1001-1006 (disjoint from the test seeds), each draw trained from three adapter
initialisations (``RunConfig.init_seed``: the draw's own seed, as the suite does, and two others). Per method
and task the spread of HM and of novel accuracy is split into the part between initialisations on one draw
and the part between draws (one-way random effects).

    python benchmarks/adaring_init_variance.py --workers 2      # about 12 minutes on 2 cores (5 methods)

Runs already in the results file are kept (a method added to METHODS runs alone); ``--fresh`` reruns all.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
from _common import env_info, write_json  # noqa: E402
from adaring_placement import RESULTS, SUITE, VARIANTS  # noqa: E402

# label -> adaring_placement variant; the last two ask whether the spread comes with the early layers
METHODS = {
    "MMA": "MMA",
    "AdaRing (the suite's)": "AL36 csr0.1",
    "AdaRing, layers 3-6": "AL36 csr0.1 L3-6",
    "AdaRing, MMA's layers (the suite's)": "AdaRing",
    # Does a start read from the data (the down projections' input cores; the other cores stay random)
    # take the spread between starts away?
    "AdaRing, pca start": "AL36 csr0.1 pca",
}
TASKS = ("contrast", "edges")
DRAWS = tuple(range(1001, 1007))
INIT_OFFSETS = (None, 100, 200)  # None: the draw's seed (the suite); otherwise init_seed = draw + offset
LR, EPOCHS = 0.05, 10


def split_variance(scores: np.ndarray) -> dict[str, float]:
    """``scores`` (draws, inits) -> SDs: within a draw (between inits), between draws (of the true draw means,
    random-effects estimate, floored at 0), and over all runs."""
    k = scores.shape[1]
    within = float(scores.var(axis=1, ddof=1).mean())
    between = max(float(scores.mean(axis=1).var(ddof=1)) - within / k, 0.0)
    return {"sd_init": within**0.5, "sd_draw": between**0.5, "sd_all": float(scores.std(ddof=1))}


def run(workers: int, stored: list[dict]) -> list[dict]:
    """Train what ``stored`` (earlier rows) lacks; returns the stored rows still in METHODS plus the new ones."""
    from trkit_vlm.demo.benchmark import ModelSpec, execute, plan_units
    from trkit_vlm.demo.suite import load_suite

    runs = []
    for label, variant in METHODS.items():
        method, adapter, loss, optim = VARIANTS[variant]
        for offset in INIT_OFFSETS:
            runs.append({"label": f"{label}\t{offset}", "method": method, "adapter": adapter, "loss": loss,
                         "optim": {**optim, "lr": LR, "epochs": EPOCHS}, "init_offset": offset})  # fmt: skip
    suite = load_suite(SUITE).select(tasks=list(TASKS))
    units = plan_units(suite, runs, "output/adaring_init_variance", "val", list(DRAWS), 50, transfer=False)
    rows = [r for r in stored if r["method"] in METHODS]
    have = {(r["method"], r["init_offset"], r["seed"], r["task"]) for r in rows}
    for u in units:  # the init seed depends on the draw, so it is set per unit
        u["runs"] = [
            {**r, "init_seed": None if r["init_offset"] is None else u["seed"] + r["init_offset"]}
            for r in u["runs"]
            if (r["label"].split("\t")[0], r["init_offset"], u["seed"], u["source"]) not in have
        ]
    units = [u for u in units if u["runs"]]
    for i, (unit, out) in enumerate(execute(units, ModelSpec(), workers, 1, False), 1):
        for r in out:
            label, offset = r["method"].split("\t")
            rows.append({"method": label, "init_offset": None if offset == "None" else int(offset), "seed": r["seed"],
                         "task": r["task"], "hm": r["hm"], "base": r["base"], "novel": r["novel"]})  # fmt: skip
        print(f"[{i}/{len(units)}] {unit['source']} draw {unit['seed']}", flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for label in METHODS:
        for task in TASKS:
            cell = {(r["seed"], r["init_offset"]): r for r in rows if r["method"] == label and r["task"] == task}
            entry = {"method": label, "task": task}
            for metric in ("hm", "novel"):
                scores = np.array([[cell[(d, o)][metric] for o in INIT_OFFSETS] for d in DRAWS])
                entry[metric] = {"mean": float(scores.mean()), **split_variance(scores)}
            out.append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--fresh", action="store_true", help="rerun every method (default: keep the stored runs)")
    args = ap.parse_args()
    path = RESULTS / "adaring_init_variance.json"
    stored = [] if args.fresh or not path.is_file() else json.loads(path.read_text())["runs"]
    rows = run(args.workers, stored)
    table = summarise(rows)
    print(f"\n{'method':36s} {'task':9s} {'HM':>6s} {'sd init':>8s} {'sd draw':>8s}   {'novel':>6s} {'sd init':>8s} "
          f"{'sd draw':>8s}")  # fmt: skip
    for e in table:
        h, n = e["hm"], e["novel"]
        print(f"{e['method']:36s} {e['task']:9s} {h['mean']:6.2f} {h['sd_init']:8.2f} {h['sd_draw']:8.2f}   "
              f"{n['mean']:6.2f} {n['sd_init']:8.2f} {n['sd_draw']:8.2f}")  # fmt: skip
    write_json(path, {
        "title": "Spread of validation scores: adapter initialisation vs few-shot draw (small Fashion-MNIST CLIP)",
        "command": "python benchmarks/adaring_init_variance.py --workers 2",
        "methods": METHODS, "tasks": list(TASKS), "draws": list(DRAWS), "init_offsets": list(INIT_OFFSETS),
        "lr": LR, "epochs": EPOCHS, "scored": "validation images, 50 per class; HM and novel accuracy in %",
        "table": table, "runs": rows, "env": env_info(),
    })  # fmt: skip


if __name__ == "__main__":
    main()
