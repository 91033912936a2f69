"""AdaRing's design choices on the quickstart task, on VALIDATION images only, with paired statistics.

Every variant trains on the same few-shot draws (seeds 1001.., disjoint from the test seeds 1-20) and is
scored on the same held-out validation images of the contrast-shifted Fashion-MNIST task; a claim that
one variant beats another is the mean of the per-seed HM differences with its 95% t-interval.

    python benchmarks/adaring_validation.py --study precondition --seeds 1001-1010

Runs are appended to benchmarks/results/adaring_validation_runs.jsonl as they finish (a rerun skips
the ones there); the studies' tables go to benchmarks/results/adaring_validation.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _common import env_info, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "adaring_validation_runs.jsonl"

MMA_RECIPE = {"name": "sgd", "lr": 0.05, "epochs": 20, "batch_size": 16, "weight_decay": 5e-4}
GN = {**MMA_RECIPE, "precondition": "gauss_newton"}
SGD_GN = {**MMA_RECIPE, "precondition": "scaled_gd"}
CLIPPED = {"name": "sgd", "lr": 0.1, "epochs": 40, "batch_size": 16, "weight_decay": 5e-4, "max_grad_norm": 1.0}
KGCOOP = {"lambda_text": 8.0}
RING = {"hidden": 32, "ranks": [1, 2]}
FIXED = {**RING, "learn_branch_scale": False}


def _v(method: str, adapter: dict, loss: dict, optim: dict) -> dict:
    return {"method": method, "adapter": adapter, "loss": loss, "optim": optim}


# name -> (method, adapter fields, loss weights, optimiser)
VARIANTS: dict[str, dict] = {
    "MMA": _v("mma", {"hidden": 32}, {}, MMA_RECIPE),
    "AdaRing, clipped (lr 0.1, 40 ep, clip 1)": _v("adaring", RING, KGCOOP, CLIPPED),
    "AdaRing, MMA recipe, no preconditioner": _v("adaring", RING, KGCOOP, MMA_RECIPE),
    "AdaRing, GN": _v("adaring", RING, KGCOOP, GN),
    "AdaRing, GN, fixed scales": _v("adaring", FIXED, KGCOOP, GN),
    "AdaRing, GN, fixed scales, kaiming": _v("adaring", {**FIXED, "init": "kaiming"}, KGCOOP, GN),
    "AdaRing, ScaledGD, fixed scales": _v("adaring", FIXED, KGCOOP, SGD_GN),
    "AdaRing, ScaledGD, kaiming": _v("adaring", {**RING, "init": "kaiming"}, KGCOOP, SGD_GN),
}

for _d in (0.1, 1.0):
    _gn = {**GN, "precondition_damping": _d}
    VARIANTS[f"AdaRing, GN damping {_d}, fixed scales"] = _v("adaring", FIXED, KGCOOP, _gn)
    VARIANTS[f"AdaRing, GN damping {_d}, fixed scales, kaiming"] = _v(
        "adaring", {**FIXED, "init": "kaiming"}, KGCOOP, _gn
    )

# The recipe the precondition study chose: Gauss-Newton at damping 0.1, fixed branch scales, kaiming init.
GN_CHOSEN = {**GN, "precondition_damping": 0.1}
BASE = {"hidden": 32, "learn_branch_scale": False, "init": "kaiming"}
BUDGET = 0.1  # rank_budget: 10% of MMA's parameters at the same width and layers (7,104 here)


def _ring(ranks, **extra) -> dict:
    return {**BASE, "ranks": ranks, **extra}


VARIANTS.update(
    {
        "fixed [1,2] (4,388)": _v("adaring", _ring([1, 2]), KGCOOP, GN_CHOSEN),
        "fixed single [3] (6,900)": _v("adaring", _ring([3]), KGCOOP, GN_CHOSEN),
        "fixed hetero [1,(3,3,2)] (6,892)": _v("adaring", _ring([1, [3, 3, 2]]), KGCOOP, GN_CHOSEN),
        "adapted hetero [2,4] -> 10%": _v("adaring", _ring([2, 4], rank_budget=BUDGET), KGCOOP, GN_CHOSEN),
        "adapted single [4] -> 10%": _v("adaring", _ring([4], rank_budget=BUDGET), KGCOOP, GN_CHOSEN),
    }
)

# Diversity weight and generalization-aware loss weights, tuned on the rank-adapted heterogeneous AdaRing.
ADAPTED = _ring([2, 4], rank_budget=BUDGET)
DIVERSITY_GRID = (0.01, 0.1, 1.0, 10.0)
for _w in DIVERSITY_GRID:
    VARIANTS[f"adapted hetero, diversity {_w}"] = _v("adaring", {**ADAPTED, "diversity_weight": _w}, KGCOOP, GN_CHOSEN)
LOSS_GRID = {
    "KgCoOp 8 + KL 1": {**KGCOOP, "lambda_logits": 1.0},
    "KgCoOp 8 + text L1 25 + KL 1": {**KGCOOP, "lambda_text_l1": 25.0, "lambda_logits": 1.0},
    "text L1 25 + image L1 1 + KL 1": {"lambda_text_l1": 25.0, "lambda_image": 1.0, "lambda_logits": 1.0},
    "no GA loss": {},
}
for _n, _loss in LOSS_GRID.items():
    VARIANTS[f"adapted hetero, {_n}"] = _v("adaring", ADAPTED, _loss, GN_CHOSEN)


def _ablations(prefix: str, recipe: dict, single_rank: int, optim: dict) -> dict[str, dict]:
    """One ablation per part of an AdaRing recipe, each at its parameter budget: fixed ranks, one branch
    (no diversity term), no diversity term, no GA loss."""
    return {
        f"{prefix}, fixed ranks [1,(3,3,2)]": _v(
            "adaring", {**recipe, "ranks": [1, [3, 3, 2]], "rank_budget": None}, KGCOOP, optim
        ),
        f"{prefix}, single branch [{single_rank}] -> 10%": _v(
            "adaring", {**recipe, "ranks": [single_rank], "diversity_weight": 0.0}, KGCOOP, optim
        ),
        f"{prefix}, no diversity": _v("adaring", {**recipe, "diversity_weight": 0.0}, KGCOOP, optim),
        f"{prefix}, no GA loss": _v("adaring", recipe, {}, optim),
    }


# The final recipe (chosen on validation by the studies above) and one ablation per part, each at the
# same parameter budget; run once on the TEST split (--split test, seeds 1-10).
DIVERSITY = 0.1
FINAL = {**ADAPTED, "diversity_weight": DIVERSITY}
VARIANTS["AdaRing"] = _v("adaring", FINAL, KGCOOP, GN_CHOSEN)
VARIANTS.update(_ablations("AdaRing", FINAL, 4, GN_CHOSEN))
VARIANTS["AdaRing, clipped recipe"] = _v("adaring", FINAL, KGCOOP, CLIPPED)

# The suite's recipe (docs/benchmarks/adapters-suite.md) on the quickstart's task: every layer of both
# towers, ranks 3 and 6 pruned to the same 10% of MMA (7,104), and the per-core step limit.
EVERY_LAYER = {**FINAL, "ranks": [3, 6], "text_layers": "all", "image_layers": "all"}
STEP_LIMIT = {**GN_CHOSEN, "core_step_ratio": 0.1}
VARIANTS["AdaRing, every layer [3,6], step limit"] = _v("adaring", EVERY_LAYER, KGCOOP, STEP_LIMIT)
# The baseline's output scale (published 0.001; on the benchmark suite 0.01 gained +3.3 HM): a sensitivity
# check at the quickstart's MMA recipe, not a re-tuned MMA.
VARIANTS["MMA, scale 0.01"] = _v("mma", {"hidden": 32, "scale": 0.01}, {}, MMA_RECIPE)
# Its ablations (the quickstart's recipe from then on), each at the same budget; run on the TEST split.
VARIANTS.update(_ablations("every layer", EVERY_LAYER, 6, STEP_LIMIT))

STUDIES: dict[str, dict] = {
    # Item 1: does the preconditioner let AdaRing train at MMA's recipe without clipping?
    "precondition": {
        "variants": [
            "MMA",
            "AdaRing, clipped (lr 0.1, 40 ep, clip 1)",
            "AdaRing, MMA recipe, no preconditioner",
            "AdaRing, GN",
            "AdaRing, GN, fixed scales",
            "AdaRing, GN, fixed scales, kaiming",
            "AdaRing, ScaledGD, fixed scales",
            "AdaRing, ScaledGD, kaiming",
            "AdaRing, GN damping 0.1, fixed scales",
            "AdaRing, GN damping 0.1, fixed scales, kaiming",
            "AdaRing, GN damping 1.0, fixed scales",
            "AdaRing, GN damping 1.0, fixed scales, kaiming",
        ],
        "compare": [
            ("AdaRing, GN damping 1.0, fixed scales", "AdaRing, GN, fixed scales"),
            ("AdaRing, GN damping 0.1, fixed scales", "AdaRing, GN, fixed scales"),
            ("AdaRing, GN damping 1.0, fixed scales, kaiming", "AdaRing, GN, fixed scales, kaiming"),
            ("AdaRing, GN damping 1.0, fixed scales", "AdaRing, GN damping 1.0, fixed scales, kaiming"),
            ("AdaRing, GN damping 1.0, fixed scales", "MMA"),
            ("AdaRing, GN damping 1.0, fixed scales, kaiming", "MMA"),
            ("AdaRing, GN damping 1.0, fixed scales", "AdaRing, clipped (lr 0.1, 40 ep, clip 1)"),
            ("AdaRing, GN, fixed scales", "AdaRing, MMA recipe, no preconditioner"),
            ("AdaRing, GN, fixed scales", "AdaRing, GN"),
            ("AdaRing, GN, fixed scales", "AdaRing, GN, fixed scales, kaiming"),
            ("AdaRing, GN, fixed scales", "AdaRing, ScaledGD, fixed scales"),
            ("AdaRing, GN, fixed scales", "AdaRing, clipped (lr 0.1, 40 ep, clip 1)"),
            ("AdaRing, GN, fixed scales", "MMA"),
        ],
    },
    # Item 2/3: rank adaptation on/off and heterogeneous vs single branch, at equal parameter counts.
    "ranks": {
        "variants": [
            "MMA",
            "fixed [1,2] (4,388)",
            "fixed single [3] (6,900)",
            "fixed hetero [1,(3,3,2)] (6,892)",
            "adapted hetero [2,4] -> 10%",
            "adapted single [4] -> 10%",
        ],
        "compare": [
            ("adapted hetero [2,4] -> 10%", "fixed hetero [1,(3,3,2)] (6,892)"),
            ("adapted single [4] -> 10%", "fixed single [3] (6,900)"),
            ("fixed hetero [1,(3,3,2)] (6,892)", "fixed single [3] (6,900)"),
            ("adapted hetero [2,4] -> 10%", "adapted single [4] -> 10%"),
            ("adapted hetero [2,4] -> 10%", "fixed [1,2] (4,388)"),
            ("adapted hetero [2,4] -> 10%", "MMA"),
            ("fixed single [3] (6,900)", "MMA"),
        ],
    },
    # Item 3: the diversity weight (0 is "adapted hetero [2,4] -> 10%").
    "diversity": {
        "variants": ["adapted hetero [2,4] -> 10%"] + [f"adapted hetero, diversity {w}" for w in DIVERSITY_GRID],
        "compare": [(f"adapted hetero, diversity {w}", "adapted hetero [2,4] -> 10%") for w in DIVERSITY_GRID],
    },
    # Item 4: the generalization-aware loss weights (KgCoOp 8 alone is "adapted hetero [2,4] -> 10%").
    "loss": {
        "variants": ["adapted hetero [2,4] -> 10%"] + [f"adapted hetero, {n}" for n in LOSS_GRID],
        "compare": [(f"adapted hetero, {n}", "adapted hetero [2,4] -> 10%") for n in LOSS_GRID],
    },
    # The quickstart's recipe against the suite's all-layer recipe, both at the quickstart's lr and epochs.
    "placement": {
        "variants": ["MMA", "AdaRing", "AdaRing, every layer [3,6], step limit", "MMA, scale 0.01"],
        "compare": [
            ("AdaRing, every layer [3,6], step limit", "AdaRing"),
            ("AdaRing, every layer [3,6], step limit", "MMA"),
            ("AdaRing", "MMA"),
            ("MMA, scale 0.01", "MMA"),
            ("AdaRing, every layer [3,6], step limit", "MMA, scale 0.01"),
        ],
    },
    # The quickstart's recipe since the placement study, against MMA and its ablations (test split).
    "ablation-every-layer": {
        "variants": [
            "MMA",
            "AdaRing, every layer [3,6], step limit",
            "every layer, fixed ranks [1,(3,3,2)]",
            "every layer, single branch [6] -> 10%",
            "every layer, no diversity",
            "every layer, no GA loss",
            "MMA, scale 0.01",
        ],
        "compare": [
            ("AdaRing, every layer [3,6], step limit", "MMA"),
            ("AdaRing, every layer [3,6], step limit", "MMA, scale 0.01"),
            ("MMA, scale 0.01", "MMA"),
            ("AdaRing, every layer [3,6], step limit", "every layer, fixed ranks [1,(3,3,2)]"),
            ("AdaRing, every layer [3,6], step limit", "every layer, single branch [6] -> 10%"),
            ("AdaRing, every layer [3,6], step limit", "every layer, no diversity"),
            ("AdaRing, every layer [3,6], step limit", "every layer, no GA loss"),
        ],
    },
    # The final ablations (test split): each part of AdaRing against its ablation at equal parameters.
    "ablation": {
        "variants": [
            "MMA",
            "AdaRing",
            "AdaRing, fixed ranks [1,(3,3,2)]",
            "AdaRing, single branch [4] -> 10%",
            "AdaRing, no diversity",
            "AdaRing, no GA loss",
        ],
        "compare": [
            ("AdaRing", "MMA"),
            ("AdaRing", "AdaRing, fixed ranks [1,(3,3,2)]"),
            ("AdaRing", "AdaRing, single branch [4] -> 10%"),
            ("AdaRing", "AdaRing, no diversity"),
            ("AdaRing", "AdaRing, no GA loss"),
        ],
    },
}


def variant_key(spec: dict, eval_per_class: int | None, split: str = "val") -> str:
    key = {"spec": spec, "eval_per_class": eval_per_class}
    if split != "val":
        key["split"] = split
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_runs() -> list[dict]:
    if not RUNS.is_file():
        return []
    return [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()]


def t_quantile(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of ``a - b`` (paired by seed) with its 95% t-interval."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else float("nan")
    half = t_quantile(n) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half, "sd": sd}


def run_variant(
    name: str, spec: dict, seed: int, bundle, data, eval_per_class: int | None, out_dir: str, split: str = "val"
) -> dict:
    from trkit_vlm.demo import quickstart as q
    from trkit_vlm.training.train import train

    qc = q.QuickstartConfig(
        output_dir=out_dir,
        seeds=(seed,),
        eval_split=split,
        eval_per_class=eval_per_class,
        variants={name: (spec["method"], spec["adapter"], spec["loss"], spec["optim"])},
    )
    cfg = q.run_config(qc, name, seed, bundle)
    t0, c0 = time.perf_counter(), time.process_time()
    m = train(cfg, bundle=bundle, data=data, progress=False)
    cpu = time.process_time() - c0  # CPU time of this process: the machine is shared, wall time is noisy
    log = [json.loads(line) for line in Path(m["run_dir"], "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r.get("type") == "epoch"]
    return {
        "variant": name,
        "key": variant_key(spec, eval_per_class, split),
        "split": split,
        "seed": seed,
        **{k: m[k] for k in ("base", "novel", "hm")},
        "n_trainable": m["n_trainable"],
        "rank_adaptation": m.get("rank_adaptation"),
        "train_time_s": m["train_time_s"],
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": cpu,
        "grad_norm_median": [r.get("grad_norm_median") for r in epochs],
        "update_norm_median": [r.get("update_norm_median") for r in epochs],
        "clip_fraction": [r.get("clip_fraction") for r in epochs],
        "final_train_loss": m.get("final_train_loss"),
    }


def summarise(study: str, seeds: list[int], eval_per_class: int | None, split: str = "val") -> dict:
    spec = STUDIES[study]
    runs = load_runs()
    by = {}
    for r in runs:
        by[(r["variant"], r["key"], r["seed"])] = r
    table, rows = [], {}
    for name in spec["variants"]:
        key = variant_key(VARIANTS[name], eval_per_class, split)
        rs = [by[(name, key, s)] for s in seeds if (name, key, s) in by]
        rows[name] = {r["seed"]: r for r in rs}
        if not rs:
            continue
        n = len(rs)
        hm = [r["hm"] for r in rs]
        table.append(
            {
                "variant": name,
                "n_seeds": n,
                "base": sum(r["base"] for r in rs) / n,
                "novel": sum(r["novel"] for r in rs) / n,
                "hm": sum(hm) / n,
                "hm_min": min(hm),
                "n_trainable": rs[0]["n_trainable"],
                "train_time_s": sum(r["train_time_s"] for r in rs) / n,
            }
        )
    comparisons = []
    for a, b in spec["compare"]:
        common = sorted(set(rows.get(a, {})) & set(rows.get(b, {})))
        if len(common) >= 2:
            res = paired([rows[a][s]["hm"] for s in common], [rows[b][s]["hm"] for s in common])
            comparisons.append({"a": a, "b": b, **res})
    return {
        "study": study,
        "split": split,
        "seeds": seeds,
        "eval_per_class": eval_per_class,
        "table": table,
        "compare": comparisons,
    }


def print_summary(s: dict) -> None:
    print(f"\n## {s['study']} ({s['split']}, seeds {s['seeds'][0]}-{s['seeds'][-1]}, paired)")
    print("| variant | seeds | Base | Novel | HM (mean of seeds) | worst HM | params | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in s["table"]:
        print(
            f"| {r['variant']} | {r['n_seeds']} | {r['base']:.2f} | {r['novel']:.2f} | {r['hm']:.2f} | "
            f"{r['hm_min']:.2f} | {r['n_trainable']:,} | {r['train_time_s']:.1f} |"
        )
    print("\n| A | B | seeds | HM(A) - HM(B) | 95% CI |")
    print("|---|---|---|---|---|")
    for c in s["compare"]:
        print(f"| {c['a']} | {c['b']} | {c['n']} | {c['mean']:+.2f} | [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] |")


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=sorted(STUDIES), action="append", required=True)
    p.add_argument("--seeds", default="1001-1010")
    p.add_argument("--eval-per-class", type=int, default=200)
    p.add_argument("--split", choices=("val", "test"), default="val", help="test: only the final ablations")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", action="append", help="run only these variants (summaries show all)")
    p.add_argument("--summary", action="store_true", help="no training: summarise the runs recorded")
    p.add_argument("--out", default="/tmp/trkit_adaring_validation")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    seeds = parse_seeds(a.seeds)
    if a.split == "val" and min(seeds) <= 20:
        raise SystemExit("seeds 1-20 are the test seeds; choose validation seeds above 20 (e.g. 1001-1010)")
    if a.split == "test" and (max(seeds) > 20 or set(a.study) - {"ablation", "ablation-every-layer"}):
        raise SystemExit(
            "the test split is for the final ablation studies (--study ablation / ablation-every-layer) on test "
            "seeds 1-20"
        )
    if not a.summary:
        from trkit_vlm.data.fashion_mnist import fashion_mnist_data
        from trkit_vlm.data.tasks import apply_task
        from trkit_vlm.demo import quickstart as q
        from trkit_vlm.demo.small_clip import load_small_clip

        bundle = load_small_clip(progress=False)
        qc = q.QuickstartConfig(eval_split=a.split, eval_per_class=a.eval_per_class)
        data = apply_task(fashion_mnist_data(), q.task_spec(qc))
        done = {(r["variant"], r["key"], r["seed"]) for r in load_runs()}
        todo = [n for st in a.study for n in STUDIES[st]["variants"] if not a.only or n in a.only]
        for seed in seeds:  # seed-major: a partial sweep still gives paired comparisons
            for name in dict.fromkeys(todo):
                spec = copy.deepcopy(VARIANTS[name])
                if (name, variant_key(spec, a.eval_per_class, a.split), seed) in done:
                    continue
                row = run_variant(name, spec, seed, bundle, data, a.eval_per_class, a.out, a.split)
                RUNS.parent.mkdir(exist_ok=True)
                with open(RUNS, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(
                    f"{name:<48} seed {seed}: base {row['base']:.2f} novel {row['novel']:.2f} HM {row['hm']:.2f} "
                    f"({row['n_trainable']:,} params, {row['seconds']:.0f} s)",
                    flush=True,
                )
    out_path = RESULTS / "adaring_validation.json"
    saved = json.loads(out_path.read_text()) if out_path.is_file() else {"studies": {}}
    for st in a.study:
        s = summarise(st, seeds, a.eval_per_class, a.split)
        print_summary(s)
        saved["studies"][st if a.split == "val" else f"{st} ({a.split})"] = s
    saved["env"] = env_info()
    write_json(out_path, saved, indent=1)


if __name__ == "__main__":
    main()
