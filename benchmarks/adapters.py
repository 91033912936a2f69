"""Adapter parameter counts (ViT-B-16) and the cost of MMA / AdaRing adapters next to the frozen model.

Parameter table: zero-shot, CoOp (16 ctx), CLIP-Adapter, LoRA (r=4 on q, v), CLIP-LoRA (r=2 on q, k, v),
MMA, AdaRing default and variants — prompt/LoRA/CLIP-Adapter from closed forms on the ViT-B-16 shapes,
MMA and AdaRing counted on the built modules. Then, on a ViT-B-16 with RANDOM weights (shapes are what
matter for cost), CPU, one thread, batch 8 images + 10 class prompts:
  - inference: image tower only (text features cached), no grad;
  - train step: text tower on the prompts + image tower + CE + backward into the adapters.
Frozen, MMA, AdaRing (default: dense weights built once per tower pass; and forced ring contraction in
every layer) side by side in one run, timed in interleaved rounds (medians).

    python benchmarks/adapters.py [--quick]   # writes benchmarks/results/adapters.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trkit_vlm as tv  # noqa: E402
from trkit_vlm.adapters import (
    AdaRingConfig,
    MMAConfig,
    adaring_param_count,
    count_trainable,  # noqa: E402
    get_adapters,
    mma_param_count,
)
from trkit_vlm.models import tower_info_from_config  # noqa: E402

torch.set_num_threads(1)
RESULTS = Path(__file__).resolve().parent / "results" / "adapters.json"
MMA_PAPER = 674_560

VARIANTS = {
    "AdaRing default (ranks 2+4, bias hidden)": AdaRingConfig(),
    "AdaRing ranks 4 (one branch)": AdaRingConfig(ranks=[4]),
    "AdaRing ranks 2+4, bias all": AdaRingConfig(ranks=[2, 4], bias="all"),
    "AdaRing ranks 1+2+4": AdaRingConfig(ranks=[1, 2, 4]),
    "AdaRing ranks 2+4, hidden 64": AdaRingConfig(ranks=[2, 4], hidden=64),
    "AdaRing ranks 4+8": AdaRingConfig(ranks=[4, 8]),
}


from _common import cpu_model, peak_alloc_bytes, write_json  # noqa: E402


def param_table(info) -> list[dict]:
    t, v = info["text"], info["image"]
    embed = 512
    rows = [
        ("CLIP zero-shot", 0, "nothing trained"),
        ("CoOp (16 ctx)", 16 * t["width"], "16 x text width"),
        ("CLIP-Adapter (visual, reduction 4)", 2 * embed * (embed // 4), "Linear(512,128)+Linear(128,512), no bias"),
        (
            "LoRA r=4 on q,v (both towers)",
            sum(x["depth"] * 2 * 4 * (2 * x["width"]) for x in (t, v)),
            "depth x 2 proj x r(d_in+d_out)",
        ),
        (
            "CLIP-LoRA r=2 on q,k,v (both towers)",
            sum(x["depth"] * 3 * 2 * (2 * x["width"]) for x in (t, v)),
            "depth x 3 proj x r(d_in+d_out)",
        ),
    ]
    out = [{"method": m, "trainable": n, "pct_of_mma": 100 * n / MMA_PAPER, "source": s} for m, n, s in rows]
    mma = MMAConfig().build(info)
    n_mma = sum(p.numel() for p in mma.parameters())
    assert n_mma == mma_param_count(t["width"], v["width"], 32, 8)
    out.append(
        {
            "method": "MMA (layers 5-12, hidden 32)",
            "trainable": n_mma,
            "pct_of_mma": 100 * n_mma / MMA_PAPER,
            "source": "built module",
        }
    )
    for name, cfg in VARIANTS.items():
        n = sum(p.numel() for p in cfg.build(info).parameters())
        assert n == adaring_param_count(cfg, info)
        out.append({"method": name, "trainable": n, "pct_of_mma": 100 * n / MMA_PAPER, "source": "built module"})
    return out


def interleaved(fns: dict, reps: int) -> dict:
    """Median and spread per function, timed in rounds (A, B, C, A, B, C, ...) after one warm-up
    round, so load from other processes on the shared machine falls on every side alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for r in range(reps):
        keys = list(fns)
        keys = keys[r % len(keys) :] + keys[: r % len(keys)]  # rotate who goes first
        for k in keys:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), max(v) - min(v)) for k, v in times.items()}


def peak_mb(fn) -> float:
    return peak_alloc_bytes(fn) / 2**20


def speed_rows(name: str, batch: int, n_cls: int, reps: int) -> list[dict]:
    import copy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        bundle = tv.load_clip(name)
    base = bundle.model
    size = base.visual.image_size[0] if isinstance(base.visual.image_size, tuple) else base.visual.image_size
    img = torch.randn(batch, 3, size, size)
    tok = bundle.tokenizer([f"a photo of a class{i}." for i in range(n_cls)])
    labels = torch.arange(batch) % n_cls
    models = {}
    for label, cfg in (
        ("frozen", None),
        ("MMA", MMAConfig()),
        ("AdaRing default", AdaRingConfig()),
        ("AdaRing default, ring contraction per layer", AdaRingConfig()),
    ):
        m = copy.deepcopy(base)
        if cfg is None:
            for p in m.parameters():
                p.requires_grad_(False)
        else:
            tv.add_adapters(m, cfg)
            if "ring contraction" in label:  # no per-pass dense weights: each layer contracts with the cores
                get_adapters(m).tower_pre_forward = lambda tower: None
        models[label] = m
    del base

    def infer(m):
        def run():
            with torch.no_grad():
                m.encode_image(img, normalize=True)

        return run

    def step(m):
        def run():
            for p in m.parameters():
                p.grad = None
            f = m.encode_image(img, normalize=True)
            t = m.encode_text(tok, normalize=True)
            F.cross_entropy(m.logit_scale.exp() * f @ t.T, labels).backward()

        return run

    inf = interleaved({k: infer(m) for k, m in models.items()}, reps)
    stp = interleaved({k: step(m) for k, m in models.items() if k != "frozen"}, reps)
    rows = []
    for k, m in models.items():
        row = {
            "setup": k,
            "trainable": count_trainable(m),
            "infer_ms": 1e3 * inf[k][0],
            "infer_spread_ms": 1e3 * inf[k][1],
            "infer_peak_mb": peak_mb(infer(m)),
        }
        if k in stp:
            row.update(step_ms=1e3 * stp[k][0], step_spread_ms=1e3 * stp[k][1], step_peak_mb=peak_mb(step(m)))
        rows.append(row)
        print(
            f"{k:<46} infer {row['infer_ms']:9.1f} ms (spread {row['infer_spread_ms']:.1f})  "
            + (f"train step {row['step_ms']:9.1f} ms (spread {row['step_spread_ms']:.1f})  " if k in stp else "")
            + f"peak {row.get('step_peak_mb', row['infer_peak_mb']):8.1f} MB",
            flush=True,
        )
    frozen = rows[0]["infer_ms"]
    mma = rows[1]["step_ms"]
    for r in rows:
        r["infer_vs_frozen"] = r["infer_ms"] / frozen
        if "step_ms" in r:
            r["step_vs_mma"] = r["step_ms"] / mma
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ViT-B-32, batch 2, 5 repeats")
    args = ap.parse_args(argv)
    name, batch, reps = ("ViT-B-32", 2, 5) if args.quick else ("ViT-B-16", 8, 7)
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "cpu": cpu_model(),
        "model": name,
        "weights": "random (shapes only)",
        "batch": batch,
        "classes": 10,
        "repeats": reps,
    }
    print("settings:", env)
    params = param_table(tower_info_from_config("ViT-B-16"))
    print(f"\n{'method':<44}{'trainable':>12}{'% of MMA':>10}")
    for r in params:
        print(f"{r['method']:<44}{r['trainable']:>12,}{r['pct_of_mma']:>9.2f}%")
    print()
    speed = speed_rows(name, batch, 10, reps)
    ada = next(r for r in speed if r["setup"] == "AdaRing default")
    ada_c = next(r for r in speed if r["setup"].startswith("AdaRing default, ring"))
    n_ada = next(r["trainable"] for r in params if r["method"].startswith("AdaRing default"))
    targets = [
        f"AdaRing default <= 10% of MMA params: {n_ada:,} = {100 * n_ada / MMA_PAPER:.2f}% -> "
        f"{'met' if n_ada <= MMA_PAPER / 10 else 'MISSED'}",
        f"AdaRing train step <= 1.1x MMA: {ada['step_vs_mma']:.3f}x (ring contraction per layer "
        f"{ada_c['step_vs_mma']:.3f}x) -> {'met' if ada['step_vs_mma'] <= 1.1 else 'MISSED'}",
        f"AdaRing inference (cached text) <= 1.05x frozen image tower: {ada['infer_vs_frozen']:.3f}x "
        f"(ring contraction per layer {ada_c['infer_vs_frozen']:.3f}x) -> "
        f"{'met' if ada['infer_vs_frozen'] <= 1.05 else 'MISSED'}",
    ]
    print("\n".join(targets))
    out = {
        "env": env,
        "params": params,
        "speed": speed,
        "targets": targets,
        "notes": [
            "Parameter counts are for ViT-B-16 (text 512 x 12, image 768 x 12), biases included.",
            "Speed on a shared 2-core CPU; read ratios measured in the same run, not absolute times.",
        ],
    }
    path = RESULTS if not args.quick else RESULTS.with_name("adapters_quick.json")
    write_json(path, out, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
