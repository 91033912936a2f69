"""``trkit-vlm benchmark``: the adapter benchmark suite on the small CLIP (paired seeds, CIs), or its tuning."""

from __future__ import annotations

import argparse
import os
import time

NAME = "benchmark"
HELP = "the adapter benchmark suite: paired seeds, tasks, protocols, 95%% CIs (or --tune its recipes)"
DESCRIPTION = (
    "Run a benchmark suite (default configs/suites/adapters.yaml) on the project's small Fashion-MNIST "
    "CLIP: base-to-novel on each task, cross-task transfer and domain generalisation, every method on "
    "the same few-shot draws and scored images for each seed; writes results.json (every run), "
    "results.md (means and paired differences to the reference with 95%% CIs) and forest.png. "
    "--tune runs the one tuning procedure (lr x epochs grid on validation images, tuning seeds disjoint "
    "from the test seeds, edge choices extend the grid) and writes the recipes file the suite reads. "
    "The model is NOT OpenAI CLIP; its numbers are not comparable with published ones."
)
EXAMPLES = """examples:
  trkit-vlm benchmark --quick                       # every protocol on 3 seeds
  trkit-vlm benchmark --workers 2                   # the whole suite, two processes
  trkit-vlm benchmark --tune --method AdaRing --workers 2
  trkit-vlm benchmark --tune --protocol cross-task --workers 2
  trkit-vlm benchmark --method zero-shot --method MMA --method AdaRing --task contrast"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default="configs/suites/adapters.yaml", help="suite file (YAML or JSON)")
    p.add_argument("--output-dir", default="output/benchmark", help="results folder (default output/benchmark)")
    p.add_argument(
        "--method",
        action="append",
        default=None,
        metavar="LABEL",
        help="a method label of the suite (repeatable; default: all)",
    )
    p.add_argument(
        "--task", action="append", default=None, metavar="NAME", help="a task of the suite (repeatable; default: all)"
    )
    p.add_argument("--seeds", type=int, default=None, help="run the first N test seeds of the suite")
    p.add_argument("--quick", action="store_true", help="the first 3 seeds (a smoke run of every protocol)")
    p.add_argument("--tune", action="store_true", help="tune the methods' lr and epochs; write the recipes file")
    p.add_argument(
        "--protocol",
        action="append",
        default=None,
        metavar="NAME",
        help="with --tune: a protocol to tune (repeatable; default: every protocol of the suite; transfer "
        "protocols are tuned on their source task)",
    )
    p.add_argument("--recipes", default=None, help="recipes file to read / write (default: the suite's)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1; 2 on a 2-core machine)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--resume", action="store_true", help="keep the units already in results.json")
    p.add_argument("--no-runs", action="store_true", help="do not keep the run folders (results.json only)")


def run(args: argparse.Namespace) -> int:
    from trkit_vlm.cli.common import setup_threads

    setup_threads(args.threads)
    from trkit_vlm.demo.suite import load_suite
    from trkit_vlm.demo.suite_run import quick_suite, run_benchmark, tune

    suite = load_suite(args.suite).select(args.method, args.task)
    if args.recipes:
        suite.recipes = os.path.abspath(args.recipes)
    if args.quick or args.seeds:
        suite = quick_suite(suite, args.seeds or 3)
    print(f"trkit-vlm benchmark: {args.workers} process(es) x {args.threads} thread(s); the model is the "
          "project's small Fashion-MNIST CLIP (not OpenAI CLIP)", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    if args.tune:
        if suite.recipes is None:
            suite.recipes = os.path.join(args.output_dir, "suite_recipes.json")
        from trkit_vlm.demo.suite import BASE_TO_NOVEL

        every = ([BASE_TO_NOVEL] if suite.base_to_novel else []) + [p.name for p in suite.transfer]
        protocols = args.protocol or every
        for protocol in protocols:
            tune(suite, args.output_dir, suite.recipes, None, args.workers, args.threads, protocol=protocol)
        print(f"total {time.perf_counter() - t0:.0f} s. Recipes: {suite.recipes}")
        return 0
    res = run_benchmark(
        suite, args.output_dir, args.workers, args.threads, keep_runs=not args.no_runs, resume=args.resume
    )
    print()
    print(res["markdown"])
    print(f"total {time.perf_counter() - t0:.0f} s. Written: " + ", ".join(res["paths"].values()))
    return 0
