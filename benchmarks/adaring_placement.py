"""How the suite's AdaRing recipe was chosen: design variants on the suite's base-to-novel VALIDATION tasks.

Every variant trains on the same few-shot draws (seeds 1001, 1002: disjoint from the test seeds 1-20) and is
scored on validation images (held out from the small CLIP's pre-training; never the test set) of the four
base-to-novel tasks of configs/suites/adapters.yaml, at the suite's learning rates (0.02 / 0.05 / 0.1, 10
epochs). Each run is the suite's own unit of work (``trkit_vlm.demo.benchmark``), so the numbers are the
ones ``trkit-vlm benchmark --tune`` would see.

    python benchmarks/adaring_placement.py                   # the table from the stored runs
    python benchmarks/adaring_placement.py --run --workers 2  # run what is missing (about 8 s a run)
    python benchmarks/adaring_placement.py --run --variants "MMA|all layers R[3,6]"
    python benchmarks/adaring_placement.py --seeds 1001,1002,1003 --paired "MMA@0.05"  # draw-by-draw CIs

Runs are appended to benchmarks/results/adaring_placement_runs.jsonl as they finish (a rerun skips the ones
there); the table goes to benchmarks/results/adaring_placement.json, the paired comparison (--paired: each
variant minus one reference, draw by draw, with a 95% t interval) to adaring_placement_paired.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _common import env_info, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "adaring_placement_runs.jsonl"
SUITE = ROOT / "configs" / "suites" / "adapters.yaml"

SGD = {"name": "sgd", "batch_size": 16, "weight_decay": 0.0005}
GN = {**SGD, "precondition": "gauss_newton", "precondition_damping": 0.1}
TEXT = {"lambda_text": 8.0}
# The recipe the suite ran before this study: MMA's placement (the last 4 of 6 layers).
BEFORE = {"hidden": 32, "ranks": [2, 4], "rank_budget": 0.1, "learn_branch_scale": False, "init": "kaiming",
          "diversity_weight": 0.1}  # fmt: skip
# Every layer of both towers; the budget as a count, 10% of the suite's MMA (71,040 at its 4 layers).
ALL = {**BEFORE, "text_layers": "1-6", "image_layers": "1-6", "rank_budget": 7104}
AL36 = {**ALL, "ranks": [3, 6]}
CSR = {**GN, "core_step_ratio": 0.1}
ADAMW = {"name": "adamw", "batch_size": 16, "weight_decay": 0.01}
# A ring whose ranks can hold any per-layer weights of the small CLIP (width 128, hidden 32, 6 layers): R1 = 1,
# R2 = d_in (G_in square), R3 = the 6 layers, so each layer's slice is a free matrix; 141,044 parameters.
FREE = {**ALL, "ranks": [{"down_text": [1, 128, 6], "down_image": [1, 128, 6], "shared": [1, 32, 6],
                          "up_text": [1, 32, 6], "up_image": [1, 32, 6]}], "rank_budget": None}  # fmt: skip


def _v(method: str, adapter: dict, loss: dict, optim: dict) -> tuple:
    return (method, adapter, loss, optim)


# label -> (method, adapter fields, loss weights, optimiser without lr and epochs)
VARIANTS: dict[str, tuple] = {
    "MMA": _v("mma", {"hidden": 32}, {}, SGD),
    "AdaRing": _v("adaring", BEFORE, TEXT, GN),
    "R[3,6]": _v("adaring", {**BEFORE, "ranks": [3, 6]}, TEXT, GN),
    "R[4,8]": _v("adaring", {**BEFORE, "ranks": [4, 8]}, TEXT, GN),
    "bias none": _v("adaring", {**BEFORE, "bias": "none"}, TEXT, GN),
    "bias all": _v("adaring", {**BEFORE, "bias": "all"}, TEXT, GN),
    "damp1": _v("adaring", BEFORE, TEXT, {**GN, "precondition_damping": 1.0}),
    "magnitude": _v("adaring", {**BEFORE, "rank_score": "magnitude"}, TEXT, GN),
    "h16": _v("adaring", {**BEFORE, "hidden": 16, "rank_budget": 7104}, TEXT, GN),
    "adamw": _v("adaring", BEFORE, TEXT, ADAMW),
    "all layers": _v("adaring", ALL, TEXT, GN),
    "all layers R[3,6]": _v("adaring", AL36, TEXT, GN),
    "MMA h2 all layers": _v("mma", {"hidden": 2, "text_layers": "1-6", "image_layers": "1-6"}, {}, SGD),
    "AL36 li3": _v("adaring", AL36, {**TEXT, "lambda_image": 3.0}, GN),
    "AL36 li10": _v("adaring", AL36, {**TEXT, "lambda_image": 10.0}, GN),
    "AL36 li30": _v("adaring", AL36, {**TEXT, "lambda_image": 30.0}, GN),
    "AL36 kl1": _v("adaring", AL36, {**TEXT, "lambda_logits": 1.0}, GN),
    **{f"AL36 csr{r}": _v("adaring", AL36, TEXT, {**GN, "core_step_ratio": r}) for r in (0.02, 0.05, 0.1)},
    # After the suite: its recipe (AL36 csr0.1) lost novel accuracy on edges; fewer early layers or a
    # stronger pull to the frozen model are the candidates.
    "AL36 csr0.1 L2-6": _v("adaring", {**AL36, "text_layers": "2-6", "image_layers": "2-6"}, TEXT, CSR),
    "AL36 csr0.1 L3-6": _v("adaring", {**AL36, "text_layers": "3-6", "image_layers": "3-6"}, TEXT, CSR),
    "AL36 csr0.1 lt16": _v("adaring", AL36, {"lambda_text": 16.0}, CSR),
    "AL36 csr0.1 lt32": _v("adaring", AL36, {"lambda_text": 32.0}, CSR),
    "AL36 csr0.1 li1": _v("adaring", AL36, {**TEXT, "lambda_image": 1.0}, CSR),
    # The output scale (MMA's 0.001): the distractor task (a text shift) barely moves at 0.001 for any
    # adapter of this family; a larger scale is a larger step on the adapter's output.
    "MMA scale0.01": _v("mma", {"hidden": 32, "scale": 0.01}, {}, SGD),
    "AL36 csr0.1 scale0.01": _v("adaring", {**AL36, "scale": 0.01}, TEXT, CSR),
    # MMA at 0.01 gains on distractor (its text side moves); AdaRing's text-consistency term may hold it back.
    "AL36 csr0.1 scale0.01 noGA": _v("adaring", {**AL36, "scale": 0.01}, {}, CSR),
    # The suite's recipe does not move on distractor (training loss 1.313 at every epoch; MMA's only goes
    # from 1.312 to 1.309): at the adapters' 0.001 output scale its loss is nearly flat, and SGD's steps,
    # preconditioned or not, stay small there. AdamW's steps are normalised per weight (LoRA's optimiser in
    # the suite); the first AdamW screen above stopped at the edge of its grid (0.003), so it is run past it.
    "AL36 adamw": _v("adaring", AL36, TEXT, ADAMW),
    # Larger starting ranks, pruned to the same budget: R[2,4] -> R[3,6] on every layer gained 1.6 HM.
    "AL48 csr0.1": _v("adaring", {**ALL, "ranks": [4, 8]}, TEXT, CSR),
    # Scale 0.01 at lr 0.2 gains on the image tasks but distractor collapses (base up, novel down: the image
    # side moves too, an image-scale-only variant collapsed the same way); the image-feature L1 holds the
    # image features near the frozen model's.
    "AL36 csr0.1 scale0.01 li1": _v("adaring", {**AL36, "scale": 0.01}, {**TEXT, "lambda_image": 1.0}, CSR),
    # The suite's AdaRing loses novel accuracy on edges where LoRA (dropout 0.25 on its input) gains: the same
    # input dropout on the adapters; and a wider bottleneck at the same budget (hidden 16 scored lower than 32).
    **{f"AL36 csr0.1 drop{p}": _v("adaring", {**AL36, "dropout": p}, TEXT, CSR) for p in (0.1, 0.25)},
    **{f"AL36 csr0.1 h{h}": _v("adaring", {**AL36, "hidden": h}, TEXT, CSR) for h in (48, 64)},
    # Per-layer biases on the up projections too: a class-agnostic shift of each layer's residual stream.
    "AL36 csr0.1 bias all": _v("adaring", {**AL36, "bias": "all"}, TEXT, CSR),
    # The two variants with a positive (not resolved) paired mean on twelve draws, together.
    "AL36 csr0.1 L2-6 drop0.1": _v(
        "adaring", {**AL36, "text_layers": "2-6", "image_layers": "2-6", "dropout": 0.1}, TEXT, CSR
    ),
    # When the budget is reached (AdaLoRA's schedule: rank_final of the steps train at the final ranks; 0.3).
    **{f"AL36 csr0.1 rf{f}": _v("adaring", {**AL36, "rank_final": f}, TEXT, CSR) for f in (0.1, 0.5)},
    # The spread on edges is the random start (benchmarks/adaring_init_variance.py): more random directions at
    # the start, for the allocator to prune to the same budget, average over more of them.
    "AL612 csr0.1": _v("adaring", {**ALL, "ranks": [6, 12]}, TEXT, CSR),
    "AL36 csr0.1 magnitude": _v("adaring", {**AL36, "rank_score": "magnitude"}, TEXT, CSR),
    "AL36 csr0.1 h64 bias none": _v("adaring", {**AL36, "hidden": 64, "bias": "none"}, TEXT, CSR),
    # A start that does not depend on the seed: the down projections' input cores read the leading principal
    # directions of the frozen model's adapter inputs on the shots (init "pca"; the other cores stay random).
    "AL36 csr0.1 pca": _v("adaring", {**AL36, "init": "pca"}, TEXT, CSR),
    # The pca start gains on contrast and loses novel accuracy on edges (an image shift): the image-feature
    # L1 to the frozen model, or a stronger text term, as the brake; and the text term alone on twelve draws.
    "AL36 csr0.1 pca li1": _v("adaring", {**AL36, "init": "pca"}, {**TEXT, "lambda_image": 1.0}, CSR),
    "AL36 csr0.1 pca lt16": _v("adaring", {**AL36, "init": "pca"}, {"lambda_text": 16.0}, CSR),
    # Is the gap to MMA the 10% budget or the parameterisation? The same recipe at twice the budget, and
    # with no pruning (ranks 3 and 6 kept: 34,184 parameters, 48% of MMA's 71,040).
    "AL36 csr0.1 b20": _v("adaring", {**AL36, "rank_budget": 14208}, TEXT, CSR),
    "AL36 csr0.1 unpruned": _v("adaring", {**AL36, "rank_budget": None}, TEXT, CSR),
    # Is the edges loss AdaRing's or the placement's? MMA itself on all six layers (1.5x its parameters).
    "MMA all layers": _v("mma", {"hidden": 32, "text_layers": "1-6", "image_layers": "1-6"}, {}, SGD),
    # Ranks 2 and 4 unpruned (15,832 parameters): the reference for a patched screen (not kept) with one ring
    # for layers 1-2 and one for layers 3-6 at these ranks (29,912 parameters; docs/benchmarks/adapters-suite.md).
    "AL24 unpruned": _v("adaring", {**ALL, "ranks": [2, 4], "rank_budget": None}, TEXT, CSR),
    # MMA's optimiser as it is (no Gauss-Newton preconditioner), the step limit kept as the guard: does the
    # preconditioner make the outcome depend on the start?
    "AL36 csr0.1 noGN": _v("adaring", AL36, TEXT, {**SGD, "core_step_ratio": 0.1}),
    # What else AdaRing has and MMA has not: the text-consistency term (MMA trains on cross-entropy alone)
    # and the branch-diversity term.
    "AL36 csr0.1 noGA": _v("adaring", AL36, {}, CSR),
    "AL36 csr0.1 div0": _v("adaring", {**AL36, "diversity_weight": 0.0}, TEXT, CSR),
    # The pca start gains on contrast and the later layers keep edges: the two together.
    **{
        f"AL36 csr0.1 pca L{a}-6": _v(
            "adaring", {**AL36, "init": "pca", "text_layers": f"{a}-6", "image_layers": f"{a}-6"}, TEXT, CSR
        )
        for a in (2, 3)
    },
    # The weights' form or their rank? FREE (above; 1.3x MMA on all six layers) trained by the same recipe:
    # the cores' product form, without the rank limit.
    "AL free ring": _v("adaring", FREE, TEXT, CSR),
    # The free ring loses edges as the rank-limited rings do: is it the recipe? The free ring set up as MMA on
    # all layers would be: biases on every projection, no text-consistency term, and steps that move each
    # layer's weight as MMA's SGD does (Gauss-Newton with little damping: with these ranks the ring's tangent
    # space is every weight stack, so the preconditioned step is the dense one), no step limit.
    "AL free ring as MMA": _v("adaring", {**FREE, "bias": "all"}, {}, {**GN, "precondition_damping": 0.001}),
    # That collapses on blur; the suite's recipe with only the step limit removed: is the limit what costs edges?
    "AL free ring noCSR": _v("adaring", FREE, TEXT, GN),
    # The free ring's down projections start as products of two random matrices (a spread-out spectrum); with
    # the pca start G_in is orthogonal, so each layer's down weight starts iid Gaussian as MMA's does.
    "AL free ring pca": _v("adaring", {**FREE, "init": "pca"}, TEXT, CSR),
    # A dense start: MMA on all six layers (at lr 0.05) trained on the draw, compressed into one ring per projection
    # with at most 7,104 parameters (trkit-vlm compress), and that ring fine-tuned with AdamW (the compress
    # tutorial's heal, MMA's weight decay). Its adapter fields come from the compression (COMPRESSED below).
    "AL from MMA all layers": _v("adaring", {}, {}, {**ADAMW, "weight_decay": 0.0005}),
    # AdamW moves the text side (on distractor the heal can trade novel for base, as LoRA does): the GA loss's
    # text-consistency term, AdaRing's weight 8, in the fine-tune.
    "AL from MMA all layers lt8": _v("adaring", {}, TEXT, {**ADAMW, "weight_decay": 0.0005}),
    # The fine-tune with the suite's AdaRing recipe instead (SGD, Gauss-Newton preconditioner, step limit, text term).
    "AL from MMA all layers sgd": _v("adaring", {}, TEXT, CSR),
}
# variant -> (source variant, source lr, parameter budget): the suite's ``compress`` field
COMPRESSED = {label: ("MMA all layers", 0.05, 7104) for label in VARIANTS if label.startswith("AL from MMA all layers")}
ADAMW_LRS = (0.0003, 0.001, 0.003)
ADAMW_EXTRA_LRS = (0.01, 0.03, 0.1)  # past the AdamW grid's edge (--lrs)
ADAMW_LOW_LRS = (0.0001, 0.00009, 0.00003)  # below it (--lrs; 9e-5: the suite's tuned heal lr)
LRS = (0.02, 0.05, 0.1)
EXTRA_LRS = (0.2,)  # the suite's extension past 0.1, run with --lrs for a variant whose best is at 0.1
TASKS = ("contrast", "blur", "edges", "distractor")
# the runs file is read at these learning rates
KNOWN_LRS = (*LRS, *EXTRA_LRS, *ADAMW_LRS, *ADAMW_EXTRA_LRS, *ADAMW_LOW_LRS)


def run_key(label: str, lr: float, epochs: int) -> str:
    """The identity of a run's recipe (a changed variant is a new key; its old runs stay in the file)."""
    recipe = [*VARIANTS[label], lr, epochs] + ([COMPRESSED[label]] if label in COMPRESSED else [])
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def run_missing(labels: list[str], seeds: list[int], workers: int, epochs: int = 10, lrs=None) -> None:
    from trkit_vlm.demo.benchmark import ModelSpec, execute, plan_units
    from trkit_vlm.demo.suite import load_suite

    done = {(r["key"], r["seed"], r["task"]) for r in load_runs()}
    runs = []
    for label in labels:
        method, adapter, loss, optim = VARIANTS[label]
        for lr in lrs or (ADAMW_LRS if optim["name"] == "adamw" else LRS):
            runs.append({"label": f"{label}\t{lr}\t{run_key(label, lr, epochs)}", "method": method,
                         "adapter": adapter, "loss": loss, "optim": {**optim, "lr": lr, "epochs": epochs}})  # fmt: skip
            if label in COMPRESSED:
                source, source_lr, budget = COMPRESSED[label]
                s_method, s_adapter, s_loss, s_optim = VARIANTS[source]
                runs[-1]["compress"] = {"budget": budget, "source": {
                    "label": source, "method": s_method, "adapter": s_adapter, "loss": s_loss,
                    "optim": {**s_optim, "lr": source_lr, "epochs": epochs}}}  # fmt: skip
    suite = load_suite(SUITE).select(tasks=list(TASKS))
    units = []
    for u in plan_units(suite, runs, str(ROOT / "output" / "adaring_placement"), "val", seeds, 50, transfer=False):
        u["runs"] = [r for r in u["runs"] if (r["label"].split("\t")[2], u["seed"], u["source"]) not in done]
        if u["runs"]:
            units.append(u)
    for i, (unit, rows) in enumerate(execute(units, ModelSpec(), workers, 1, False), 1):
        with RUNS.open("a") as f:
            for r in rows:
                label, lr, key = r["method"].split("\t")
                f.write(json.dumps({"variant": label, "lr": float(lr), "key": key, "seed": r["seed"], "task": r["task"],
                                    "hm": r["hm"], "base": r["base"], "novel": r["novel"],
                                    "train_s": r["train_time_s"]}) + "\n")  # fmt: skip
        print(f"[{i}/{len(units)}] {unit['source']} seed {unit['seed']}", flush=True)


def load_runs() -> list[dict]:
    return [json.loads(line) for line in RUNS.read_text().splitlines()] if RUNS.is_file() else []


def complete_draws(seeds: list[int]) -> dict[tuple, dict[int, dict[str, dict]]]:
    """The stored runs of every (variant, lr) as ``{draw: {task: run}}``, only draws that scored every task."""
    keys = {run_key(label, lr, 10): (label, lr) for label in VARIANTS for lr in KNOWN_LRS}
    cells: dict[tuple, dict] = {}
    for r in load_runs():
        if r["key"] in keys and r["seed"] in seeds:
            cells.setdefault(keys[r["key"]], {}).setdefault(r["seed"], {})[r["task"]] = r
    full = {cell: {s: d for s, d in by_seed.items() if len(d) == len(TASKS)} for cell, by_seed in cells.items()}
    return {cell: by_seed for cell, by_seed in full.items() if by_seed}


def summarise(seeds: list[int]) -> dict:
    """Per variant and lr: mean validation HM over tasks and draws (only complete draws), per task, worst run."""
    table = []
    for (label, lr), full in complete_draws(seeds).items():
        rows = [r for d in full.values() for r in d.values()]
        table.append({
            "variant": label, "lr": lr, "draws": sorted(full), "hm": float(np.mean([r["hm"] for r in rows])),
            "per_task": {t: float(np.mean([d[t]["hm"] for d in full.values()])) for t in TASKS},
            "worst_run_hm": float(min(r["hm"] for r in rows)),
        })  # fmt: skip
    best = {}
    for row in table:
        if row["variant"] not in best or row["hm"] > best[row["variant"]]["hm"]:
            best[row["variant"]] = row
    return {"grid": sorted(table, key=lambda r: (r["variant"], r["lr"])), "best": best}


def paired_to(reference: str, seeds: list[int], labels: list[str]) -> list[dict]:
    """Each variant (at each of its lrs) minus ``reference`` ("LABEL@LR"), draw by draw: the mean validation HM
    over the tasks per draw, then the mean difference with its 95% t interval (only draws both completed)."""
    from trkit_vlm.evaluation.paired import paired_difference

    ref_label, ref_lr = reference.rsplit("@", 1)
    full = {cell: {s: float(np.mean([r["hm"] for r in d.values()])) for s, d in by.items()}
            for cell, by in complete_draws(seeds).items()}  # fmt: skip
    ref = full.get((ref_label, float(ref_lr)), {})
    rows = []
    for (label, lr), by in sorted(full.items()):
        common = sorted(set(by) & set(ref))
        if label not in labels or (label, lr) == (ref_label, float(ref_lr)) or len(common) < 2:
            continue
        d = paired_difference([by[s] for s in common], [ref[s] for s in common])
        rows.append({"variant": label, "lr": lr, "reference": reference, "draws": common,
                     "hm": float(np.mean([by[s] for s in common])), **d})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="store_true", help="run the variants' missing runs first")
    ap.add_argument("--variants", default="|".join(VARIANTS), help="labels separated by |")
    ap.add_argument("--seeds", default="1001,1002", help="few-shot draws (disjoint from the test seeds)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--lrs",
        default=None,
        help="learning rates to run, comma-separated (default: SGD 0.02,0.05,0.1; AdamW 0.0003,0.001,0.003)",
    )
    ap.add_argument(
        "--paired",
        metavar="LABEL@LR",
        help="also print each variant minus this one, draw by draw, with a 95%% t interval (e.g. 'MMA@0.05')",
    )
    args = ap.parse_args()
    labels, seeds = args.variants.split("|"), [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(labels) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    if args.run:
        lrs = tuple(float(x) for x in args.lrs.split(",")) if args.lrs else None
        unknown_lrs = sorted(set(lrs or ()) - set(KNOWN_LRS))
        if unknown_lrs:
            raise SystemExit(f"--lrs {unknown_lrs}: add them to KNOWN_LRS's tuples so the table finds their runs")
        run_missing(labels, seeds, args.workers, lrs=lrs)
    s = summarise(seeds)
    print(f"{'variant':24s} {'lr':>7s} {'HM':>6s}  " + " ".join(f"{t:>10s}" for t in TASKS) + "  worst run")
    for row in s["grid"]:
        mark = " *" if s["best"][row["variant"]] is row else ""
        tasks = " ".join(f"{row['per_task'][t]:10.1f}" for t in TASKS)
        print(f"{row['variant']:24s} {row['lr']:7g} {row['hm']:6.2f}  {tasks}  {row['worst_run_hm']:9.1f}{mark}")
    if args.paired:
        # The screening table above stays the two-draw one; paired comparisons on more draws go to their own file.
        rows = paired_to(args.paired, seeds, labels)
        print(f"\npaired with {args.paired} (mean validation HM over the tasks, draw by draw; 95% t interval):")
        for row in rows:
            print(f"{row['variant']:28s} {row['lr']:7g} {row['hm']:6.2f}  {row['mean']:+6.2f} "
                  f"[{row['ci_low']:+6.2f}, {row['ci_high']:+6.2f}]  {len(row['draws'])} draws")  # fmt: skip
        write_json(RESULTS / "adaring_placement_paired.json", {
            "title": "AdaRing variants minus a reference, paired by validation draw (small Fashion-MNIST CLIP)",
            "command": f"python benchmarks/adaring_placement.py --seeds {args.seeds} --variants '{args.variants}' "
                       f"--paired '{args.paired}'",
            "reference": args.paired, "seeds": seeds, "rows": rows, "env": env_info(),
        })  # fmt: skip
        return
    write_json(RESULTS / "adaring_placement.json", {
        "title": "AdaRing design variants on the suite's base-to-novel validation tasks (small Fashion-MNIST CLIP)",
        "command": "python benchmarks/adaring_placement.py", "seeds": seeds, "tasks": list(TASKS),
        "scored": "mean validation HM over the four tasks and the draws; * the best lr of each variant",
        "variants": {k: {"method": v[0], "adapter": v[1], "loss": v[2], "optim": v[3]} for k, v in VARIANTS.items()},
        **s, "best": list(s["best"].values()), "env": env_info(),
    })  # fmt: skip
    assert math.isfinite(sum(r["hm"] for r in s["grid"]))


if __name__ == "__main__":
    main()
