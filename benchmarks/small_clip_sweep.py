"""Choices for the quickstart, made on VALIDATION images only (held out from Fashion-MNIST's training set).

1. ``--shift``: the contrast-shift strength of the task (zero-shot vs a few-shot reference per strength).
2. ``--tune``: each adapter method's optimiser recipe and AdaRing's loss weights, by validation HM.

Writes benchmarks/results/small_clip_shift_sweep.json and small_clip_quickstart_tuning.json.
The test images are never touched here.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def shift(bundle, quick: bool) -> dict:
    from trkit_vlm.tasks import shift_sweep
    strengths = (0.0, 0.2, 0.3, 0.4) if quick else (0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6)
    return shift_sweep(bundle, strengths=strengths, seeds=(1,) if quick else (1, 2, 3),
                       eval_per_class=50 if quick else 200)


def tune(bundle, strength: float, quick: bool, out_dir: str) -> dict:
    from trkit_vlm import quickstart as q
    from trkit_vlm.tasks import shifted_data
    data = shifted_data(strength, eval_split="val", eval_per_class=50 if quick else 200)
    grid = [dict(name="sgd", lr=lr, epochs=ep, batch_size=16, weight_decay=5e-4)
            for lr in (0.0015, 0.01, 0.05) for ep in (5, 20)]
    grid += [dict(name="adamw", lr=lr, epochs=ep, batch_size=16, weight_decay=1e-4)
             for lr in (1e-3, 5e-3) for ep in (5, 20)]
    losses = {"none": q.NO_LOSS, "text8": {"lambda_text": 8.0, "lambda_image": 0.0},
              "text8_image10": {"lambda_text": 8.0, "lambda_image": 10.0},
              "text2_image1": {"lambda_text": 2.0, "lambda_image": 1.0}}
    seeds = (1,) if quick else (1, 2)
    if quick:
        grid = grid[:2]
    rows = []
    variants = {"MMA": ("mma", {"hidden": 32}), "AdaRing": ("adaring", {"hidden": 32, "ranks": [1, 2]})}

    def run(label, optim, lname):
        method, adapter = variants[label]
        qc = q.QuickstartConfig(output_dir=out_dir, seeds=seeds, variants={label: (method, adapter, losses[lname])},
                                optim=optim, strength=strength, eval_split="val")
        t0 = time.perf_counter()
        res = q.run_quickstart(qc, progress=False, bundle=bundle, data=data, log=lambda *a: None)
        r = next(r for r in res["rows"] if r["method"] == label)
        row = {"variant": label, "optim": optim, "loss": lname, "base": r["base_mean"], "novel": r["novel_mean"],
               "hm": r["hm_mean"], "n_trainable": r["n_trainable"], "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)

    # Phase 1: every optimiser recipe, plain cross-entropy, both methods.
    for label in variants:
        for optim in grid:
            run(label, optim, "none")
    # Phase 2: AdaRing's loss weights on its 2 best recipes from phase 1.
    best = sorted((r for r in rows if r["variant"] == "AdaRing"), key=lambda r: -r["hm"])[:2]
    for r in best:
        for lname in losses:
            if lname != "none":
                run("AdaRing", r["optim"], lname)
    return {"rows": rows, "seeds": list(seeds), "split": "validation", "strength": strength}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shift", action="store_true")
    p.add_argument("--tune", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--strength", type=float, default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    from trkit_vlm.quickstart import _env
    from trkit_vlm.small_clip import load_small_clip
    bundle = load_small_clip()
    RESULTS.mkdir(exist_ok=True)
    strength = a.strength
    if a.shift:
        res = shift(bundle, a.quick)
        res["env"] = _env()
        name = "small_clip_shift_sweep" + ("_quick" if a.quick else "")
        (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2))
        strength = res["chosen_strength"] if strength is None else strength
        print("chosen strength:", res["chosen_strength"])
    if a.tune:
        from trkit_vlm.tasks import DEFAULT_SHIFT_STRENGTH
        res = tune(bundle, DEFAULT_SHIFT_STRENGTH if strength is None else strength, a.quick, "/tmp/trkit_tuning")
        res["env"] = _env()
        name = "small_clip_quickstart_tuning" + ("_quick" if a.quick else "")
        (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
