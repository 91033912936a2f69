"""``trkit-vlm train``: few-shot adapter training (the library call is ``trkit_vlm.training.train``)."""

from __future__ import annotations

import argparse
import json
import os

from trkit_vlm.adapters.registry import available_methods, get_method

NAME = "train"
HELP = "train adapters few-shot (base-to-novel protocol)"
DESCRIPTION = "Train adapters on K shots per class and evaluate base / novel / HM accuracy."
EXAMPLES = """examples:
  # AdaRing on Caltech101 (CoOp layout under ./data), 16 shots, seed 1, real ViT-B/16 weights from a file
  trkit-vlm train --method adaring --dataset caltech101 --root data --pretrained ViT-B-16.pt

  # the same from a config file, with overrides
  trkit-vlm train -c configs/mma_vitb16.yaml --set optim.lr=0.002 --set data.shots=4 --seed 2

  # resume an interrupted run (same config and output dir)
  trkit-vlm train -c configs/mma_vitb16.yaml --resume

  # continue from saved adapters (a run folder: its model, data and recipe too; here a compressed run)
  trkit-vlm train --init-adapters ring/ --set optim.epochs=10

  # 4 processes (DDP: nccl on GPUs, gloo on CPU)
  torchrun --nproc_per_node 4 -m trkit_vlm train -c configs/mma_vitb16.yaml
"""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``trkit-vlm train``."""
    parser.add_argument("--config", "-c", help="YAML or JSON run config (defaults: MMA's ViT-B/16 recipe)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=0.002 (repeatable)",
    )
    methods = available_methods()
    parser.add_argument(
        "--method",
        choices=methods,
        help="adapter method (same as --set method=...): "
        + "; ".join(f"{m}: {get_method(m).summary}" for m in methods),
    )
    parser.add_argument("--dataset", help="dataset name (same as --set data.dataset=...)")
    parser.add_argument("--root", help="data root (same as --set data.root=...)")
    parser.add_argument("--model", help="open_clip model name")
    parser.add_argument("--pretrained", help="local CLIP checkpoint file")
    parser.add_argument("--shots", type=int, help="images per class")
    parser.add_argument("--seed", type=int, help="seed (few-shot sample, adapter init unless init_seed is set, order)")
    parser.add_argument(
        "--output-dir", "-o", help="results root (run folder is <root>/<dataset>/<method>/shots_K/seedS)"
    )
    parser.add_argument(
        "--init-adapters",
        metavar="FILE_OR_RUN",
        help="start from saved adapters (an adapter file or a run folder): their method and adapter config are "
        "used; a run folder without -c also gives the model, data and recipe",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint.pt")
    parser.add_argument("--stop-after-epoch", type=int, help="stop after this epoch (simulates preemption)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def config_from_args(args: argparse.Namespace):
    """The run config: the file (or the defaults), then the shortcut flags, then ``--set`` overrides."""
    from trkit_vlm.training.config import RunConfig, apply_overrides, load_config
    from trkit_vlm.training.init_adapters import config_with_init_adapters

    cfg = load_config(args.config) if args.config else None
    if args.init_adapters is not None:
        cfg = config_with_init_adapters(cfg, args.init_adapters)
    cfg = cfg if cfg is not None else RunConfig()
    flags = {
        "method": args.method,
        "data.dataset": args.dataset,
        "data.root": args.root,
        "model": args.model,
        "pretrained": args.pretrained,
        "data.shots": args.shots,
        "seed": args.seed,
        "output_dir": args.output_dir,
    }
    sets = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    return apply_overrides(cfg, sets + list(args.overrides)).validate()


def run(args: argparse.Namespace) -> int:
    from trkit_vlm.training.train import train

    cfg = config_from_args(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    metrics = train(cfg, progress=not args.no_progress, resume=args.resume, stop_after_epoch=args.stop_after_epoch)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 alone prints
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    return 0
