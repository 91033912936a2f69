"""``trkit-vlm compress``: turn a trained MMA adapter set into an AdaRing adapter under a budget."""

from __future__ import annotations

import argparse

NAME = "compress"
HELP = "compress trained MMA adapters into AdaRing"
DESCRIPTION = (
    "Build the AdaRing adapter closest to a trained MMA adapter set under a "
    "parameter budget and report the error per projection."
)
EXAMPLES = """examples:
  # an official MMA checkpoint (Dassl layout) -> AdaRing with 10% of its parameters
  trkit-vlm compress output/base2new/MMA/caltech101/seed1/adapter_learner/model.pth.tar-5 --budget 0.1 --out ring/

  # fit every projection to 5% relative error instead of a budget
  trkit-vlm compress mma_adapters.safetensors --tol 0.05 --out ring/

The output directory gets adapters.safetensors (load with trkit_vlm.adapters.load_adapters) and report.json.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        help="official MMA checkpoint (.pth.tar), MMA state dict (.pt) or trkit MMA adapter file (.safetensors)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--budget",
        type=float,
        default=None,
        help="parameters as a fraction of the MMA set's, biases included (default 0.1)",
    )
    g.add_argument("--tol", type=float, default=None, help="relative error per projection instead of a budget")
    p.add_argument(
        "--model", default=None, help="open_clip model the adapters were trained on (tower depths); default: inferred"
    )
    p.add_argument("--out", required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    from trkit_vlm.compress import compress_mma

    budget = 0.1 if args.budget is None and args.tol is None else args.budget
    res = compress_mma(args.checkpoint, budget=budget, tol=args.tol, model_name=args.model)
    adapters, report = res.write(args.out, source=args.checkpoint, budget=budget, tol=args.tol)
    print(res.table())
    print(f"wrote {adapters} and {report}")
    return 0
