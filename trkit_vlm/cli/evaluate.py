"""``trkit-vlm eval``: evaluate a trained run (base / novel / HM / all), on its dataset or another one."""

from __future__ import annotations

import argparse
import json

NAME = "eval"
HELP = "evaluate a trained run (base / novel / HM / all, cross-dataset)"
DESCRIPTION = (
    "Evaluate a run folder's adapters: base, novel, HM = 2BN/(B+N) "
    "and all-class accuracy; --dataset for cross-dataset transfer."
)
EXAMPLES = """examples:
  # base / novel / HM / all-class accuracy of a finished run
  trkit-vlm eval output/caltech101/adaring/shots_16/seed1

  # cross-dataset: the same adapters on another dataset (all its classes)
  trkit-vlm eval output/imagenet/adaring/shots_16/seed1 --dataset oxford_pets --root data

  # zero-shot CLIP (no adapters) as a reference
  trkit-vlm eval --zero-shot --model ViT-B-16 --pretrained ViT-B-16.pt --dataset dtd --root data
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", help="run folder (holding config.json and adapters.safetensors)")
    p.add_argument("--dataset", help="evaluate on this dataset instead of the run's own")
    p.add_argument("--root", help="data root for --dataset")
    p.add_argument("--split", default="test", choices=["test", "val"], help="split to evaluate (default test)")
    p.add_argument("--zero-shot", action="store_true", help="no adapters: plain CLIP")
    p.add_argument("--model", help="open_clip model name (default: the run's)")
    p.add_argument("--pretrained", help="checkpoint file (default: the run's)")
    p.add_argument("--batch-size", type=int, help="evaluation batch size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")


def run(args: argparse.Namespace) -> int:
    from trkit_vlm.evaluation.run import evaluate_run

    res = evaluate_run(
        args.run_dir,
        args.dataset,
        args.root,
        args.split,
        args.zero_shot,
        args.model,
        args.pretrained,
        args.batch_size,
        args.device,
    )
    print(json.dumps(res, indent=2))
    return 0
