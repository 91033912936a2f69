"""``trkit-vlm compress``: turn a trained MMA adapter set into an AdaRing adapter under a budget."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trkit.errors import InputError

EXAMPLES = """examples:
  # an official MMA checkpoint (Dassl layout) -> AdaRing with 10% of its parameters
  trkit-vlm compress output/base2new/MMA/caltech101/seed1/adapter_learner/model.pth.tar-5 --budget 0.1 --out ring/

  # fit every projection to 5% relative error instead of a budget
  trkit-vlm compress mma_adapters.safetensors --tol 0.05 --out ring/

The output directory gets adapters.safetensors (load with trkit_vlm.adapters.load_adapters) and report.json.
"""


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compress",
        help="compress trained MMA adapters into AdaRing (user story 2)",
        description="Build the AdaRing adapter closest to a trained MMA adapter set under a "
        "parameter budget and report the error per projection.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    p.set_defaults(func=run)
    return p


def _read_source(path: str):
    if path.endswith(".safetensors"):
        from trkit_vlm.adapters.io import read_adapter_file

        config, _, tensors = read_adapter_file(path)
        if config.method != "mma":
            raise InputError(f"{path} holds {config.method} adapters, not MMA")
        return tensors
    return path


def run(args: argparse.Namespace) -> int:
    from trkit_vlm.compress import compress_mma
    from trkit_vlm.training.checkpoint import atomic_write_text

    budget = 0.1 if args.budget is None and args.tol is None else args.budget
    res = compress_mma(_read_source(args.checkpoint), budget=budget, tol=args.tol, model_name=args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.save(out / "adapters.safetensors")
    report = {
        "source": str(args.checkpoint),
        "budget": budget,
        "tol": args.tol,
        "n_params": res.n_params,
        "mma_params": res.mma_params,
        "fraction": res.fraction,
        "projections": res.projections,
        "output_rel_error": res.output_rel_error,
        "config": res.config.to_dict(),
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    print(res.table())
    print(f"wrote {out / 'adapters.safetensors'} and {out / 'report.json'}")
    return 0
