"""``trkit-vlm train``: few-shot adapter training (see ``trkit_vlm.train``)."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  # AdaRing on Caltech101 (CoOp layout under ./data), 16 shots, seed 1, real ViT-B/16 weights from a file
  trkit-vlm train --method adaring --dataset caltech101 --root data --pretrained ViT-B-16.pt

  # the same from a config file, with overrides
  trkit-vlm train -c configs/mma_vitb16.yaml --set optim.lr=0.002 --set data.shots=4 --seed 2

  # resume an interrupted run (same config and output dir)
  trkit-vlm train -c configs/mma_vitb16.yaml --resume

  # 4 processes (DDP: nccl on GPUs, gloo on CPU)
  torchrun --nproc_per_node 4 -m trkit_vlm.train -c configs/mma_vitb16.yaml
"""


def register(subparsers) -> argparse.ArgumentParser:
    from trkit_vlm.train import build_arg_parser

    p = subparsers.add_parser(
        "train",
        help="train adapters few-shot (base-to-novel protocol)",
        description="Train MMA or AdaRing adapters on K shots per class and evaluate base / novel / HM accuracy.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build_arg_parser(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from trkit_vlm.train import run_from_args

    return run_from_args(args)
