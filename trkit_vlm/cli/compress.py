"""``trkit-vlm compress``: turn a trained MMA adapter set into an AdaRing run folder under a budget."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "compress"
HELP = "compress trained MMA adapters into AdaRing (a run folder)"
DESCRIPTION = (
    "Build the AdaRing adapter closest to a trained MMA adapter set under a parameter budget, weighing "
    "each projection's error by its effect on the adapted blocks' outputs on the run's own few-shot "
    "images and prompts. The output folder is a run folder: trkit-vlm eval, table and train "
    "--init-adapters take it."
)
EXAMPLES = """examples:
  # an MMA run folder -> an AdaRing run folder with 10% of its parameters, evaluated (metrics.json)
  trkit-vlm compress output/quickstart/runs/mma/fashion_mnist/mma/shots_16/seed1 --budget 0.1 --out ring/

  # the same, then a 10-epoch heal fine-tune on the run's few-shot data (a run folder under ring/heal/)
  trkit-vlm compress output/quickstart/runs/mma/fashion_mnist/mma/shots_16/seed1 --budget 0.1 \
      --heal-epochs 10 --out ring/

  # an official MMA checkpoint (Dassl layout) with the run config it was trained with
  trkit-vlm compress output/base2new/MMA/caltech101/seed1/adapter_learner/model.pth.tar-5 \
      -c configs/mma_vitb16.yaml --budget 0.1 --out ring/

  # adapters only (no model or data given: data-free weighting, no evaluation)
  trkit-vlm compress mma_adapters.safetensors --tol 0.05 --out ring/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        help="MMA run folder (config.json + adapters.safetensors), trkit MMA adapter file (.safetensors), "
        "official MMA checkpoint (.pth.tar) or state dict (.pt)",
    )
    p.add_argument("--out", required=True, help="output run folder (checked before any work)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--budget",
        type=float,
        default=None,
        help="parameters as a fraction of the MMA set's, biases included (default 0.1; above the exact "
        "fit's size, the exact fit)",
    )
    g.add_argument("--tol", type=float, default=None, help="relative weight error per projection instead of a budget")
    p.add_argument(
        "--config",
        "-c",
        help="for a checkpoint or file source: the run config (model, data, prompts) it was trained with",
    )
    p.add_argument("--model", help="open_clip model (for a run folder: must be the run's); trkit-small-clip-28 works")
    p.add_argument("--pretrained", help="with -c: CLIP weights file (default: the config's; the small CLIP: its cache)")
    p.add_argument("--scale", type=float, help="MMA's output scale for official checkpoints (default 0.001)")
    p.add_argument("--data-free", action="store_true", help="weigh errors on N(0, 1) inputs, not the run's data")
    p.add_argument("--ridge", type=float, default=0.01, help="share of plain weight error in the weighting")
    p.add_argument("--no-eval", action="store_true", help="do not evaluate (no metrics.json)")
    p.add_argument("--heal-epochs", type=int, default=0, help="fine-tune the compressed adapter N epochs")
    p.add_argument(
        "--heal-set",
        dest="heal_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the heal recipe (the source run's with AdamW, lr 3e-4), e.g. --heal-set optim.lr=0.001 "
        "(repeatable)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default min(cores, 4))")


def _base_config(args: argparse.Namespace):
    """The run config a file source belongs to (-c, with --model/--pretrained), or None."""
    from trkit_vlm.training.config import apply_overrides, load_config

    if args.config is None:
        return None
    cfg = load_config(args.config)
    sets = [f"{k}={v}" for k, v in (("model", args.model), ("pretrained", args.pretrained)) if v is not None]
    return apply_overrides(cfg, sets)


def run(args: argparse.Namespace) -> int:
    from trkit.errors import InputError
    from trkit_vlm.cli.common import setup_threads
    from trkit_vlm.compression.run import check_out_dir, compress_run

    setup_threads(args.threads)
    check_out_dir(args.out, args.source)
    if args.heal_epochs < 0:
        raise InputError(f"--heal-epochs must be >= 0, got {args.heal_epochs}")
    budget = 0.1 if args.budget is None and args.tol is None else args.budget
    is_run = Path(args.source).is_dir()
    if is_run:
        _check_run_options(args)
    base = None if is_run else _base_config(args)
    res = compress_run(
        args.source,
        args.out,
        budget=budget,
        tol=args.tol,
        base_config=base,
        data_aware=not args.data_free,
        evaluate=not args.no_eval,
        heal_epochs=args.heal_epochs,
        heal_overrides=args.heal_overrides,
        scale=args.scale,
        ridge=args.ridge,
        model_name=args.model if not is_run and base is None else None,
    )
    result, out = res["result"], res["out"]
    print(result.table())
    for key in ("metrics", "heal"):
        m = res[key]
        if m is not None:
            print(f"{m['method']}: base {m['base']:.2f} novel {m['novel']:.2f} HM {m['hm']:.2f} ({m['run_dir']})")
    if (out / "config.json").is_file():
        print(f"wrote run folder {out} (config.json, adapters.safetensors, report.json)")
    else:
        print(
            f"wrote {out / 'adapters.safetensors'} and {out / 'report.json'}; not a run folder (no model or data "
            "known): compress a run folder, or give the run config with -c"
        )
    return 0


def _check_run_options(args: argparse.Namespace) -> None:
    """A run folder brings its model and weights: --model may repeat the run's, --pretrained and -c may not."""
    import json

    from trkit.errors import InputError

    if args.config is not None or args.pretrained is not None:
        raise InputError(f"{args.source} is a run folder: its config.json gives the model, weights and data")
    model = json.loads((Path(args.source) / "config.json").read_text()).get("model") if args.model else None
    if args.model is not None and args.model != model:
        raise InputError(f"{args.source} was trained on {model!r}; --model {args.model!r} differs")
