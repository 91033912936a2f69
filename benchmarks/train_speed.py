"""Training epoch time with and without the frozen-prefix cache (trkit_vlm.prefix_cache), same run.

Usage: python benchmarks/train_speed.py [--quick]
Writes benchmarks/results/train_speed.json (train_speed_quick.json with --quick).

For each model (a small 12-layer CLIP config and ViT-B-16, both RANDOM weights: speed only) and each
method (MMA, AdaRing; default placement = last 2/3 of the layers), the same few-shot run is trained
twice on real JPEG files with a fixed view per image (data.augment=false): prefix_cache="off" and
"memory". Reported: median epoch time (epochs after the first), the one-off cache build, and
the speed-up of the epoch and of the whole training (build included). Two loss settings: CE only, and
CE + image consistency (lambda_image > 0, which needs frozen image features: a second forward per
batch without the cache, stored once with it). One thread, side by side in one process.
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

warnings.filterwarnings("ignore", message=".*RANDOM weights.*")

SMALL = "bench-small-12l"
SMALL_CONFIG = {  # 12 layers like ViT-B so the default placement (layers 5..12) matches, narrow and short
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 192, "layers": 12, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 12},
}




from _common import cpu_model  # noqa: E402

def make_dataset(root: Path, n_classes: int, n_train: int, size: int = 256) -> Path:
    """CoOp layout with real JPEG files (smooth random colour fields, ``size`` px)."""
    rng = np.random.default_rng(0)
    split = {"train": [], "val": [], "test": []}
    for c in range(n_classes):
        (root / "images" / f"c{c}").mkdir(parents=True, exist_ok=True)
        for name, n in (("train", n_train), ("val", 0), ("test", 1)):
            for i in range(n):
                small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((size, int(size * 0.75)), Image.BICUBIC)
                rel = f"c{c}/{name}_{i}.jpg"
                img.save(root / "images" / rel, quality=90)
                split[name].append([rel, c, f"class {c}"])
    (root / "split_zhou_Bench.json").write_text(json.dumps(split))
    return root


def run_one(model: str, method: str, cache: str, lam_img: float, data_root: Path, out: Path, args) -> dict:
    from trkit_vlm.config import RunConfig
    from trkit_vlm.train import train

    cfg = RunConfig(model=model, method=method, output_dir=str(out), seed=1, prefix_cache=cache)
    cfg.data.dataset, cfg.data.root, cfg.data.shots, cfg.data.augment = "coop", str(data_root), args.shots, False
    cfg.data.subsample = "all"
    cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.eval_batch_size = args.epochs, args.batch, 32
    cfg.loss.lambda_image = lam_img
    cfg.output_dir = str(out / f"{model}-{method}-{cache}-{lam_img}")
    m = train(cfg, progress=False)
    ep = m["epoch_time_s"]
    return {"epoch_s": statistics.median(ep[1:] if len(ep) > 1 else ep), "epochs_s": ep,
            "build_s": m["prefix_cache"]["cache_build_s"], "train_s": m["train_time_s"],
            "image_prefix_layers": m["prefix_cache"]["image_prefix_layers"], "text_cached": m["prefix_cache"]["text"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer images and epochs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.shots, args.batch, args.epochs = (4, 8, 3) if args.quick else (8, 8, 4)
    n_classes = 4

    from trkit_vlm.models import register_model_config
    register_model_config(SMALL, SMALL_CONFIG)
    models = [SMALL, "ViT-B-16"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_dataset(Path(tmp) / "data", n_classes, args.shots)
        for model in models:
            for method in ("mma", "adaring"):
                for lam in (0.0, 1.0):
                    if method == "adaring" and lam and args.quick:
                        continue
                    off = run_one(model, method, "off", lam, root, Path(tmp) / "out", args)
                    on = run_one(model, method, "memory", lam, root, Path(tmp) / "out", args)
                    row = {"model": model, "method": method, "lambda_image": lam, "images": n_classes * args.shots,
                           "batch": args.batch, "epochs": args.epochs, "off": off, "cached": on,
                           "epoch_speedup": off["epoch_s"] / on["epoch_s"],
                           "train_speedup": off["train_s"] / (on["train_s"] + on["build_s"])}
                    rows.append(row)
                    print(f"{model:<16} {method:<8} lam_img={lam:<4} epoch {off['epoch_s']:7.3f}s -> "
                          f"{on['epoch_s']:7.3f}s  x{row['epoch_speedup']:.2f}  (build {on['build_s']:.2f}s, "
                          f"whole run x{row['train_speedup']:.2f})", flush=True)
    env = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "cpu": cpu_model(), "python": platform.python_version(), "device": "cpu", "quick": args.quick,
           "weights": "random (speed only)"}
    print()
    print("| model | method | lambda_image | epoch off (s) | epoch cached (s) | epoch speed-up | cache build (s) "
          "| whole run speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {r['lambda_image']} | {r['off']['epoch_s']:.3f} | "
              f"{r['cached']['epoch_s']:.3f} | {r['epoch_speedup']:.2f}x | {r['cached']['build_s']:.2f} | "
              f"{r['train_speedup']:.2f}x |")
    out = Path(__file__).parent / "results" / f"train_speed{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
