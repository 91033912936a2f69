"""Compressing trained MMA adapters into AdaRing on the quickstart task: how much of MMA's gain is kept.

For each seed: MMA trained with the quickstart's recipe (``trkit_vlm.demo.quickstart``), then compressed
with ``trkit_vlm.compression.compress_run`` at each budget, without and with a heal fine-tune, and, at
the same parameter counts (the compressed configs), AdaRing trained from scratch with the quickstart's
AdaRing recipe. Every variant is scored on the same test images (paired by seed):

    kept = (HM_variant - HM_zero-shot) / (HM_MMA - HM_zero-shot), mean over seeds,

with the 95% CI (t, n - 1) of the per-seed HM difference to MMA. Writes the JSON (``--out``), a chart of
HM against parameters (``--plot``), and prints the table. The small CLIP must be cached
(``trkit-vlm pretrain-small``); it is the project's own model, not OpenAI CLIP.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import env_info, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
# Two-sided 95% t quantiles by degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    out = {"mean": float(v.mean()), "values": [float(x) for x in v]}
    if len(v) > 1:
        sd = float(v.std(ddof=1))
        out["std"] = sd
        out["ci95"] = T95.get(len(v) - 1, 1.96) * sd / np.sqrt(len(v))
    return out


def _train_mma(bundle, data, seed: int, work: Path) -> dict:
    """The quickstart's MMA run for ``seed`` (reused when its metrics.json exists)."""
    from trkit_vlm.demo.quickstart import QuickstartConfig, run_config
    from trkit_vlm.training.train import train

    cfg = run_config(QuickstartConfig(output_dir=str(work)), "MMA", seed, bundle)
    metrics = cfg.run_dir() / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    return train(cfg, bundle=bundle, data=data, progress=False)


def _scratch(bundle, data, seed: int, compressed: Path, work: Path) -> dict:
    """AdaRing with the compressed run's config (same parameters), trained from the frozen model with the
    quickstart's AdaRing recipe and loss."""
    from trkit_vlm.demo.quickstart import ADARING_OPTIM, GA_LOSS
    from trkit_vlm.training.config import LossConfig, OptimConfig, load_config
    from trkit_vlm.training.train import train

    cfg = load_config(compressed / "config.json")
    cfg.adapter = {**cfg.adapter, "init": "zero_up"}  # start at the frozen model, as AdaRing trains
    cfg.optim, cfg.loss = OptimConfig(**ADARING_OPTIM), LossConfig(**GA_LOSS)
    cfg.output_dir = str(work)
    metrics = cfg.run_dir() / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    return train(cfg, bundle=bundle, data=data, progress=False)


def run(args) -> dict:
    from trkit_vlm.compression import compress_run
    from trkit_vlm.data.fashion_mnist import fashion_mnist_data
    from trkit_vlm.data.tasks import apply_task
    from trkit_vlm.demo.quickstart import QuickstartConfig, task_spec
    from trkit_vlm.demo.small_clip import load_small_clip
    from trkit_vlm.evaluation.evaluate import evaluate_base_novel

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    bundle = load_small_clip(train_if_missing=False, progress=False)
    data = apply_task(fashion_mnist_data(), task_spec(QuickstartConfig(eval_split=args.split)))
    zs = evaluate_base_novel(bundle.model, bundle.tokenizer, data, "a photo of a {}.")
    runs: list[dict] = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        mma = _train_mma(bundle, data, seed, work / "mma")
        runs.append({"variant": "MMA", "seed": seed, "budget": None, **_keep(mma), "time_s": time.perf_counter() - t0})
        print(f"seed {seed} MMA HM {mma['hm']:.2f} ({mma['n_trainable']:,} params)", flush=True)
        for budget in args.budgets:
            out = work / "compressed" / f"seed{seed}" / f"budget{budget:g}"
            t0 = time.perf_counter()
            heal = args.heal_epochs if budget in args.heal_budgets else 0
            res = compress_run(mma["run_dir"], out, budget=budget, heal_epochs=heal, bundle=bundle, data=data)
            elapsed = time.perf_counter() - t0
            settings = res["result"].settings
            runs.append({"variant": "compressed", "seed": seed, "budget": budget, **_keep(res["metrics"])})
            runs[-1]["ranks"] = res["result"].config.ranks[0]
            runs[-1]["output_rel_error"] = res["result"].output_rel_error
            runs[-1]["compress_and_heal_time_s"] = elapsed
            runs[-1]["calibration"] = settings["calibration"]
            line = f"seed {seed} budget {budget:g}: compressed HM {res['metrics']['hm']:.2f}"
            if res["heal"] is not None:
                runs.append({"variant": "compressed + heal", "seed": seed, "budget": budget, **_keep(res["heal"])})
                line += f", + heal {res['heal']['hm']:.2f}"
            if budget in args.scratch_budgets:
                scratch = _scratch(bundle, data, seed, out, work / "scratch" / f"budget{budget:g}")
                runs.append({"variant": "AdaRing from scratch", "seed": seed, "budget": budget, **_keep(scratch)})
                line += f", AdaRing from scratch {scratch['hm']:.2f}"
            print(line + f" ({runs[-1]['n_trainable']:,} params, {elapsed:.0f} s)", flush=True)
        if args.out:  # what is done so far survives an interrupted run
            write_json(args.out, {**_result(args, zs, runs), "partial": True})
    return _result(args, zs, runs)


def _result(args, zs: dict, runs: list[dict]) -> dict:
    return {
        "task": "quickstart: Fashion-MNIST under the contrast shift, 16 shots of 5 base classes",
        "split": args.split,
        "zero_shot": zs,
        "seeds": args.seeds,
        "budgets": args.budgets,
        "heal_epochs": args.heal_epochs,
        "heal_budgets": args.heal_budgets,
        "scratch_budgets": args.scratch_budgets,
        "rows": summarise(runs, zs),
        "runs": runs,
        "threads": args.threads,
        "env": env_info(),
        "model": "the project's small CLIP pre-trained on Fashion-MNIST (not OpenAI CLIP)",
    }


def _keep(m: dict) -> dict:
    return {k: m.get(k) for k in ("base", "novel", "hm", "n_trainable", "run_dir")}


def summarise(runs: list[dict], zs: dict) -> list[dict]:
    """Per (variant, budget): parameters, HM, kept (mean over seeds) and the paired HM difference to MMA."""
    mma = {r["seed"]: r["hm"] for r in runs if r["variant"] == "MMA"}
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["variant"], r["budget"]), []).append(r)
    rows = []
    for (variant, budget), rs in groups.items():
        kept = [(r["hm"] - zs["hm"]) / (mma[r["seed"]] - zs["hm"]) for r in rs]
        rows.append(
            {
                "variant": variant,
                "budget": budget,
                "n_trainable": float(np.mean([r["n_trainable"] for r in rs])),
                "hm": _stats([r["hm"] for r in rs]),
                "kept": _stats(kept),
                "hm_minus_mma": _stats([r["hm"] - mma[r["seed"]] for r in rs]),
            }
        )
    return rows


def table(result: dict) -> str:
    mma_params = next(r["n_trainable"] for r in result["rows"] if r["variant"] == "MMA")
    lines = [
        "| variant | budget | params (% MMA) | HM | kept | HM - MMA (95% CI) |",
        "|---|---|---|---|---|---|",
        f"| zero-shot | – | 0 | {result['zero_shot']['hm']:.2f} | 0 | – |",
    ]
    for r in sorted(result["rows"], key=lambda r: (r["budget"] or 99, r["variant"])):
        ci = r["hm_minus_mma"].get("ci95")
        diff = f"{r['hm_minus_mma']['mean']:+.2f}" + (f" ± {ci:.2f}" if ci is not None else "")
        budget = "–" if r["budget"] is None else format(r["budget"], "g")
        lines.append(
            f"| {r['variant']} | {budget} | {r['n_trainable']:,.0f} ({100 * r['n_trainable'] / mma_params:.1f}%) | "
            f"{r['hm']['mean']:.2f} | {r['kept']['mean']:.3f} | {diff} |"
        )
    return "\n".join(lines)


def plot_png(result: dict) -> bytes:
    """HM against trainable parameters (log x): MMA, compressed, compressed + heal, AdaRing from scratch."""
    import matplotlib  # imported when a chart is drawn: Agg must be chosen first

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {
        "compressed": ("o-", "C0"),
        "compressed + heal": ("s-", "C2"),
        "AdaRing from scratch": ("^--", "C1"),
        "MMA": ("*", "C3"),
    }
    for variant, (marker, colour) in styles.items():
        rs = sorted((r for r in result["rows"] if r["variant"] == variant), key=lambda r: r["n_trainable"])
        if not rs:
            continue
        x = [r["n_trainable"] for r in rs]
        y = [r["hm"]["mean"] for r in rs]
        err = [r["hm"].get("ci95", 0.0) for r in rs]
        ax.errorbar(x, y, yerr=err, fmt=marker, color=colour, capsize=2, ms=9 if variant == "MMA" else 5, label=variant)
        if variant == "compressed":
            for r in rs:
                ax.annotate(
                    f"{r['budget']:g}",
                    (r["n_trainable"], r["hm"]["mean"]),
                    fontsize=7,
                    xytext=(3, -9),
                    textcoords="offset points",
                )
    ax.axhline(result["zero_shot"]["hm"], color="grey", ls=":", lw=1, label="zero-shot")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (compressed: budget as a fraction of MMA's)")
    ax.set_ylabel("HM (%), test")
    ax.set_title(
        f"Small Fashion-MNIST CLIP (not OpenAI CLIP), quickstart task, seeds {result['seeds']}; mean ± 95% CI",
        fontsize=8,
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    p.add_argument("--budgets", type=_floats, default=[0.05, 0.1, 0.2, 0.5, 1.0])
    p.add_argument("--heal-epochs", type=int, default=10)
    p.add_argument("--heal-budgets", type=_floats, default=[0.05, 0.1, 0.2], help="budgets also healed")
    p.add_argument(
        "--scratch-budgets", type=_floats, default=[0.1], help="budgets whose ranks AdaRing also trains from scratch"
    )
    p.add_argument("--split", default="test", choices=["test", "val"], help="scored images (val: for choices)")
    p.add_argument("--work", default="output/bench_compress", help="run folders")
    p.add_argument("--out", default=str(RESULTS / "compress.json"))
    p.add_argument("--plot", default=str(DOCS_IMG / "compress.png"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    t0 = time.perf_counter()
    result = run(args)
    result["total_time_s"] = time.perf_counter() - t0
    print(table(result))
    write_json(args.out, result)
    if args.plot:
        from trkit_vlm.files import atomic_write_bytes

        atomic_write_bytes(args.plot, plot_png(copy.deepcopy(result)))
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
