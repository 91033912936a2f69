"""``trkit-vlm quickstart``: pre-train (once) the small CLIP, then MMA vs AdaRing (+ ablations), base-to-novel."""

from __future__ import annotations

import argparse
import os
import time

from trkit_vlm.cli.common import parse_seeds, setup_threads

NAME = "quickstart"
HELP = "the AdaRing quickstart on the project's small Fashion-MNIST CLIP"
DESCRIPTION = (
    "Pre-train the small CLIP (once, cached), then train MMA, AdaRing and two AdaRing ablations "
    "on 16 shots of 5 base classes of a contrast-shifted Fashion-MNIST task, seeds 1-3, and "
    "report base / novel / HM accuracy, trainable parameters and time. About 14-16 minutes on 2 "
    "CPU cores from a fresh clone (8-11 of them pre-training); about 5 minutes once the model is "
    "cached. The model is NOT OpenAI CLIP; its numbers are not comparable with published ones."
)
EXAMPLES = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="output/quickstart", help="results folder (default output/quickstart)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated few-shot seeds (default 1,2,3)")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument(
        "--eval-per-class",
        type=int,
        default=None,
        help="score a fixed subset of this many test images per class (default: all 1,000)",
    )
    p.add_argument("--quick", action="store_true", help="one seed, 200 test images per class (a smoke run)")
    p.add_argument("--cache-dir", default=None, help="small-CLIP cache root (default $TRKIT_CACHE or ~/.cache/trkit)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default min(cores, 4))")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="training processes of one thread each (default 2 on a machine with 2 or more cores, else 1)",
    )
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds)
    n = setup_threads(args.threads)
    from trkit_vlm.demo.quickstart import QuickstartConfig, markdown_table, run_quickstart

    qc = QuickstartConfig(
        output_dir=args.output_dir,
        seeds=seeds[:1] if args.quick else seeds,
        shots=args.shots,
        eval_per_class=200 if args.quick and args.eval_per_class is None else args.eval_per_class,
        cache_dir=args.cache_dir,
        workers=args.workers if args.workers is not None else min(2, os.cpu_count() or 1),
    )
    if qc.workers < 1:
        from trkit.errors import InputError

        raise InputError(f"--workers must be >= 1, got {qc.workers}")
    print(
        f"trkit-vlm quickstart: threads={n}, {qc.workers} training process(es); the model is the project's "
        "small Fashion-MNIST CLIP (not OpenAI CLIP)",
        flush=True,
    )
    t0 = time.perf_counter()
    res = run_quickstart(qc, progress=not args.no_progress)
    print()
    print(markdown_table(res["rows"]))
    print(f"total {time.perf_counter() - t0:.0f} s. Written: " + ", ".join(res["paths"].values()))
    return 0
