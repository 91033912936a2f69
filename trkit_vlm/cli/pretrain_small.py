"""``trkit-vlm pretrain-small``: pre-train (once) the small CLIP used by the quickstart."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from trkit_vlm.cli.common import setup_threads

NAME = "pretrain-small"
HELP = "pre-train the small Fashion-MNIST CLIP (cached; not OpenAI CLIP)"
DESCRIPTION = (
    "Pre-train the project's small CLIP on Fashion-MNIST (runs once; the weights are cached "
    "under $TRKIT_CACHE or ~/.cache/trkit, keyed by a hash of the recipe)."
)
EXAMPLES = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--cache-dir", default=None, help="cache root (default $TRKIT_CACHE or ~/.cache/trkit)")
    p.add_argument(
        "--data",
        default=None,
        help="Fashion-MNIST idx folder (default $TRKIT_FASHION_MNIST or /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default min(cores, 4))")
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    n = setup_threads(args.threads)
    from trkit_vlm.demo.small_clip import (
        PretrainRecipe,
        cached_weights_ok,
        pretrain_info,
        pretrain_small,
        weights_path,
    )

    recipe = PretrainRecipe()
    if args.steps is not None:
        recipe = dataclasses.replace(recipe, steps=args.steps)
    path = weights_path(recipe, args.cache_dir)
    cached = not args.force and cached_weights_ok(path)
    print(
        f"small CLIP recipe {recipe.key()} ({recipe.steps} steps, batch {recipe.batch_size}); "
        f"threads={n}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    path = pretrain_small(recipe, args.cache_dir, progress=not args.no_progress, force=args.force, data_root=args.data)
    info = pretrain_info(recipe, args.cache_dir) or {}
    m = info.get("metrics", {})
    print(f"{'reused cached' if cached else 'saved'} weights: {path}")
    if m:
        print(
            f"zero-shot accuracy on held-out training images (10 classes): {m['zero_shot_val_acc']:.1f}% | "
            f"pre-training took {m['train_seconds']:.0f} s ({m['seconds_per_step']:.2f} s/step, "
            f"{m['threads']} threads)"
        )
    print(json.dumps({"path": str(path), "key": recipe.key()}))
    return 0
