"""Training epoch time with and without the frozen-prefix cache (trkit_vlm.training.prefix_cache), same run,
and how close the cache gets to the best speed-up any cache could give (an Amdahl bound).

Usage: python benchmarks/train_speed.py [--quick]
Writes benchmarks/results/train_speed.json (train_speed_quick.json with --quick).

For each model (a small 12-layer CLIP config and ViT-B-16, both RANDOM weights: speed only), method
(MMA, AdaRing), loss (CE only; CE + image and text consistency with the frozen model) and adapter
placement (layers k..12 of both towers; k = 5 is MMA's default), the same few-shot run is trained
twice on real JPEG files with a fixed view per image (data.augment=false): prefix_cache="off" and
"memory". Reported: median epoch time (epochs after the first), the one-off cache build, the epoch
speed-up, and the bound.

Bound: the blocks from the first adapted layer k on must run forward, and (from k+1 on) backward, in
both towers every step, whatever is cached. Each block's forward and backward time is measured on its
own (the run's model and adapters, training-shaped inputs) between the epochs of the pair;
``layers_min_s`` = steps x sum of those times = the least time a cached epoch can take, and
``bound`` = measured uncached epoch / layers_min_s. One thread; both runs of a pair in one process
with their epochs alternating.
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
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import cpu_model, write_json  # noqa: E402
from PIL import Image  # noqa: E402

warnings.filterwarnings("ignore", message=".*RANDOM weights.*")

SMALL = "bench-small-12l"
SMALL_CONFIG = {  # 12 layers like ViT-B so the default placement (layers 5..12) matches, narrow and short
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 192, "layers": 12, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 12},
}
LOSSES = {"ce": (0.0, 0.0), "ce+consistency": (1.0, 1.0)}  # (lambda_text, lambda_image)


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


def _trainer(case: dict, cache: str, data_root: Path, out: Path):
    """A training run of ``case`` with ``prefix_cache=cache``, set up as ``train()`` does it."""
    from trkit_vlm.training.config import RunConfig
    from trkit_vlm.training.distributed import init_distributed
    from trkit_vlm.training.loop import Trainer
    from trkit_vlm.training.seeding import seed_everything
    from trkit_vlm.training.train import build_model, prepare_data

    cfg = RunConfig(
        model=case["model"],
        method=case["method"],
        seed=1,
        prefix_cache=cache,
        output_dir=str(
            out / f"{case['model']}-{case['method']}-{case['loss']}-{case['start']}-{case['classes']}-{cache}"
        ),
    )
    cfg.data.dataset, cfg.data.root, cfg.data.shots, cfg.data.augment = "coop", str(data_root), case["shots"], False
    cfg.data.subsample = "all"
    cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.eval_batch_size = case["epochs"], case["batch"], 32
    cfg.loss.lambda_text, cfg.loss.lambda_image = LOSSES[case["loss"]]
    cfg.adapter = {"image_layers": [case["start"], case["depth"]], "text_layers": [case["start"], case["depth"]]}
    cfg.validate()
    seed_everything(cfg.seed)  # as train() does: random backbone weights come from this seed
    info = init_distributed(cfg.device)
    fs, train_data = prepare_data(cfg, None, info)
    bundle, model, _ = build_model(cfg, None, info.device)
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, bundle, model, train_data, fs, info, run_dir, progress=False)


def run_pair(case: dict, data_root: Path, out: Path) -> dict:
    """Both runs of a case in one process, their epochs alternating (which goes first alternates too),
    so load from other jobs hits both sides alike. Also the largest adapter-weight difference at the end
    (the cache must not change the result)."""
    from trkit_vlm.adapters import get_adapters

    runs = {c: _trainer(case, c, data_root, out) for c in ("off", "memory")}
    timer = LayerTimer(runs["memory"], runs["off"], case["start"], case["loss"] != "ce")
    times: dict = {c: [] for c in runs}
    for epoch in range(case["epochs"]):
        for c in ("off", "memory") if epoch % 2 == 0 else ("memory", "off"):
            t0 = time.perf_counter()
            runs[c].train_epoch(epoch)
            times[c].append(time.perf_counter() - t0)
        timer.sample()
    a, b = (get_adapters(runs[c].model).state_dict() for c in ("off", "memory"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    res = {c: {"epoch_s": statistics.median(t[1:] if len(t) > 1 else t), "epochs_s": t} for c, t in times.items()}
    on = runs["memory"]
    res["memory"].update(build_s=on.timing["cache_build_s"], image_prefix_layers=on.n_image if on.cached else 0)
    for c, r in runs.items():
        res[c]["text_context"] = int(r.forward.text_ids.shape[1])
    res["weight_diff"] = diff
    res["layers"] = timer.medians()
    return res


# ------------------------------------------------------------------------------ per-layer timings


def _detach_pass_weights(model, tower: str) -> None:
    """AdaRing builds all layers' dense weights once per tower pass; their backward (into the cores)
    also runs once per pass. Timing blocks one at a time would charge it to every block, so the
    per-pass weights are made leaves here and that once-per-pass cost is left out (the bound stays a
    bound). A no-op for adapters without per-pass state (MMA)."""
    from trkit_vlm.adapters import get_adapters

    dense = getattr(get_adapters(model), "_dense", {})
    if dense.get(tower):
        dense[tower] = [{p: w.detach().requires_grad_(True) for p, w in d.items()} for d in dense[tower]]


class LayerTimer:
    """Seconds per block, sampled between the epochs of a pair so that both see the same machine load.

    Uses the cached run's own model (its real adapter placement), inputs shaped as in training:
    ``image`` (a batch of prefix tokens), ``text`` (the prompts as the uncached pass runs them, from the
    embeddings) and ``text_cut`` (the cached pass's prefix states). Both training paths cut the prompts
    after the longest EOT, so both have the same context. Kinds: ``fwd``
    (recording the graph) and ``bwd`` (gradient to the block input and the adapters) for the adapted
    blocks; ``fwd_nograd`` for the frozen prefix blocks (as the uncached pass runs them);
    ``fwd_frozen`` (adapters off, every block) for the consistency loss's frozen pass.
    """

    def __init__(self, trainer_on, trainer_off, start: int, consistency: bool):
        from trkit_vlm.training import prefix_cache as pc

        self.model, self.k, self.consistency = trainer_on.model, start - 1, consistency
        b = trainer_on.local_bs
        with torch.no_grad():
            self.inputs = {
                "image": trainer_on.store["tokens"][:b, 0].clone(),
                "text": pc.text_prefix(self.model, trainer_off.forward.text_ids, 0),
                "text_cut": trainer_on.forward.text_states,
            }
        self.depth = len(self.model.visual.transformer.resblocks)
        kinds = ("fwd", "bwd", "fwd_nograd", "fwd_frozen")
        self.samples = {n: {k: [[] for _ in range(self.depth)] for k in kinds} for n in self.inputs}

    def sample(self) -> None:
        """One timing of every block this case needs."""
        from trkit_vlm.adapters import adapter_parameters, adapters_disabled
        from trkit_vlm.training import prefix_cache as pc

        m = self.model
        for name, x in self.inputs.items():
            tower = "image" if name == "image" else "text"
            tr = m.visual.transformer if tower == "image" else m.transformer
            mask = None if tower == "image" else pc.causal_mask(m, x.shape[1])
            rec = self.samples[name]
            for i in range(len(tr.resblocks)):

                def run(inp, i=i, tower=tower, msk=mask):
                    return pc.run_blocks(m, tower, inp, i, i + 1, attn_mask=msk)

                if i < self.k and name != "text_cut":
                    with torch.no_grad():
                        rec["fwd_nograd"][i].append(_seconds(lambda: run(x)))
                if self.consistency and name == "image":
                    with torch.no_grad(), adapters_disabled(m):
                        rec["fwd_frozen"][i].append(_seconds(lambda: run(x)))
                if i >= self.k:
                    xi = x.detach().requires_grad_(True)
                    with pc.tower_pass(m, tower):
                        _detach_pass_weights(m, tower)
                        t0 = time.perf_counter()
                        y = run(xi)
                        t1 = time.perf_counter()
                        y.backward(torch.ones_like(y))
                        rec["bwd"][i].append(time.perf_counter() - t1)
                    rec["fwd"][i].append(t1 - t0)
        for p in adapter_parameters(m):  # the timing's gradients must not reach the next step
            p.grad = None

    def medians(self) -> dict:
        out: dict = {"context": int(self.inputs["text"].shape[1]), "context_cut": int(self.inputs["text_cut"].shape[1])}
        for name, rec in self.samples.items():
            out[name] = {k: [statistics.median(v) if v else None for v in per_layer] for k, per_layer in rec.items()}
        return out


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def layers_min_step_s(lt: dict, start: int) -> float:
    """Least block time of one cached step: forward of layers ``start..L`` and backward of ``start+1..L``
    (block ``start``'s input is a cached constant, so only its adapter branch needs a gradient; counted
    as 0, which keeps this a true lower bound) in the image tower and the cut text tower."""
    k = start - 1
    return sum(sum(lt[t]["fwd"][k:]) + sum(lt[t]["bwd"][k + 1 :]) for t in ("image", "text_cut"))


def off_blocks_step_s(lt: dict, start: int, consistency: bool) -> float:
    """Block time of one uncached step (frozen prefix without graph, the rest forward + backward, the
    whole EOT-cut text tower, plus the frozen image pass of the consistency loss)."""
    k = start - 1
    t = sum(
        sum(lt[w]["fwd_nograd"][:k]) + sum(lt[w]["fwd"][k:]) + sum(lt[w]["bwd"][k + 1 :]) for w in ("image", "text")
    )
    return t + (sum(lt["image"]["fwd_frozen"]) if consistency else 0.0)


# ------------------------------------------------------------------------------------------ main


def plan(quick: bool) -> list[dict]:
    """The cases: a placement sweep on the small model, the default placement on ViT-B-16."""
    cases = []
    small = {"model": SMALL, "depth": 12, "classes": 4, "shots": 8, "batch": 8, "epochs": 3 if quick else 4}
    for start in (5, 9, 11):
        for method in ("mma", "adaring"):
            for loss in LOSSES:
                cases.append({**small, "method": method, "loss": loss, "start": start})
    if not quick:  # many classes: the per-step text pass grows with the class count
        for method in ("mma", "adaring"):
            cases.append({**small, "classes": 48, "shots": 1, "method": method, "loss": "ce", "start": 5})
    vit = {
        "model": "ViT-B-16",
        "depth": 12,
        "classes": 4,
        "shots": 2 if quick else 4,
        "batch": 8,
        "epochs": 2 if quick else 3,
    }
    for method in ("mma", "adaring"):
        for loss in ("ce",) if quick else tuple(LOSSES):
            cases.append({**vit, "method": method, "loss": loss, "start": 5})
    if not quick:
        cases.append({**vit, "method": "mma", "loss": "ce", "start": 11})
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer cases, images and epochs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(
        f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
        flush=True,
    )
    from trkit_vlm.models import register_model_config

    register_model_config(SMALL, SMALL_CONFIG)

    rows, details, t_start = [], [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data_roots: dict = {}
        for case in plan(args.quick):
            dkey = (case["classes"], case["shots"])
            if dkey not in data_roots:
                data_roots[dkey] = make_dataset(Path(tmp) / f"data{case['classes']}x{case['shots']}", *dkey)
            pair = run_pair(case, data_roots[dkey], Path(tmp) / "out")
            off, on = pair["off"], pair["memory"]
            lt = pair["layers"]
            steps = case["classes"] * case["shots"] // case["batch"]
            least = steps * layers_min_step_s(lt, case["start"])
            row = {
                "model": case["model"],
                "method": case["method"],
                "loss": case["loss"],
                "adapters": f"{case['start']}-{case['depth']}",
                "classes": case["classes"],
                "images": case["classes"] * case["shots"],
                "steps_per_epoch": steps,
                "epoch_off_s": round(off["epoch_s"], 3),
                "epoch_cached_s": round(on["epoch_s"], 3),
                "speedup": round(off["epoch_s"] / on["epoch_s"], 2),
                "layers_min_s": round(least, 3),
                "cached_rest_s": round(on["epoch_s"] - least, 3),
                "bound": round(off["epoch_s"] / least, 2),
                "of_bound_pct": round(100 * (off["epoch_s"] / on["epoch_s"]) / (off["epoch_s"] / least), 1),
                "off_blocks_s": round(steps * off_blocks_step_s(lt, case["start"], case["loss"] != "ce"), 3),
                "build_s": round(on["build_s"], 2),
                "text_ctx": (off["text_context"], on["text_context"]),
                "weight_diff": float(f"{pair['weight_diff']:.1e}"),
            }
            rows.append(row)
            details.append(
                {
                    **{k: row[k] for k in ("model", "method", "loss", "adapters", "classes")},
                    "epochs_off_s": off["epochs_s"],
                    "epochs_cached_s": on["epochs_s"],
                    "layer_s": lt,
                }
            )
            print(
                f"{row['model']:<16} {row['method']:<8} {row['loss']:<15} {row['adapters']:>5} C={row['classes']:<3}"
                f" epoch {off['epoch_s']:7.3f}s -> {on['epoch_s']:7.3f}s  x{row['speedup']:.2f}"
                f"  bound x{row['bound']:.2f} ({row['of_bound_pct']:.0f}% of it)"
                f"  [{time.perf_counter() - t_start:.0f}s]",
                flush=True,
            )

    env = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "device": "cpu",
        "quick": args.quick,
        "weights": "random (speed only)",
        "augment": False,
        "wall_s": round(time.perf_counter() - t_start),
    }
    print()
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    result = {
        "title": "Training epoch time with the frozen-prefix cache" + (" (quick)" if args.quick else ""),
        "command": f"python benchmarks/train_speed.py{' --quick' if args.quick else ''}",
        "env": env,
        "rows": rows,
        "targets": targets(rows),
        "notes": notes(rows),
        "details": {"per_case": details},
    }  # JSON only (render_docs skips "details")
    out = Path(__file__).parent / "results" / f"train_speed{'_quick' if args.quick else ''}.json"
    write_json(out, result)
    print(f"wrote {out}")
    return 0


def targets(rows: list[dict]) -> list[str]:
    """The target of >= 3x faster epochs with the cache (no augmentation), per default-placement row."""
    out = []
    for r in rows:
        if r["adapters"] != "5-12" or r["classes"] != 4:
            continue
        met = "met" if r["speedup"] >= 3 else "missed"
        out.append(
            f">= 3x epoch speed-up, {r['model']} {r['method']} {r['loss']} (adapters 5-12): {met}, "
            f"x{r['speedup']:.2f} (bound for any cache x{r['bound']:.2f})"
        )
    reach = sorted(
        {
            f"{r['model']} {r['method']} {r['loss']} adapters {r['adapters']} (x{r['speedup']:.2f})"
            for r in rows
            if r["speedup"] >= 3
        }
    )
    out.append("placements reaching >= 3x: " + ("; ".join(reach) if reach else "none"))
    return out


def _span(rows: list[dict], key: str, **match) -> str:
    vals = [r[key] for r in rows if all(r[k] == v for k, v in match.items())]
    return f"x{min(vals):.2f}-x{max(vals):.2f}" if vals else "n/a"


def notes(rows: list[dict]) -> list[str]:
    d = {"adapters": "5-12", "classes": 4}
    return [
        "bound = epoch_off_s / layers_min_s. layers_min_s = steps x (forward of blocks k..12 + backward of "
        "blocks k+1..12) in the image tower and the EOT-cut text tower, each block timed on its own "
        "(inputs shaped as in training, the run's own adapters) between the epochs of the pair. No cache "
        "can skip these: the adapters sit in them and their gradient flows back through them. Loss, "
        "optimiser and pooling are left out, so it is an upper bound on the speed-up (up to timing noise).",
        "Why >= 3x is out of reach at the default placement (adapters 5-12): an uncached step runs 12 block "
        "forwards and 7 input-gradient backwards per tower (block 5's input needs none), a cached one 8 "
        "forwards and 7 backwards; with a backward costing about a forward that is ~19/15, and the "
        f"measured bound is {_span(rows, 'bound', loss='ce', **d)} for CE only. The consistency loss adds "
        "the frozen image pass (12 more forwards) to the uncached step only: bound "
        f"{_span(rows, 'bound', loss='ce+consistency', **d)}. Measured speed-ups there: "
        f"{_span(rows, 'speedup', loss='ce', **d)} (CE), {_span(rows, 'speedup', loss='ce+consistency', **d)} "
        "(CE + consistency). Fewer adapted layers raise the bound: see the 9-12 and 11-12 rows.",
        "cached_rest_s = epoch_cached_s - layers_min_s: what a cached epoch spends outside the blocks it "
        "must run (loss, optimiser, pooling, adapters' per-pass work such as AdaRing building its dense "
        "weights from the cores and the backward into them, Python). Near 0 or below: the cache leaves "
        "nothing but the must-run blocks (timing noise makes it negative at times).",
        "off_blocks_s: the same per-block times summed for the uncached step (frozen prefix without graph, "
        "whole text tower, frozen pass for the consistency loss); epoch_off_s minus it is data loading, "
        "optimiser, loss and Python overhead.",
        "text_ctx (uncached, cached): both training paths run the prompts cut after the longest prompt's "
        "EOT token (exact: under the causal mask later tokens never reach the pooled one), so the speed-up "
        "is the cache's alone (before this change the uncached path ran the full context and the ratios "
        "were higher, e.g. 2.0x instead of 1.27x at 48 classes).",
        "weight_diff: largest |difference| of any adapter weight between the uncached and the cached run "
        "after the last epoch (same seed, same batches): the cache changes float rounding only.",
        "Each pair trains both runs in one process, epochs alternating (first epoch of each excluded from the "
        "median). Small model: 12-layer CLIP (image 64 px, patch 8, width 192; text width 128, context 32), "
        "4 classes x 8 shots (48 x 1 in the many-class rows), batch 8. ViT-B-16 with reduced data "
        "(4 classes x 4 shots, 2 steps per epoch, 3 epochs; 2 shots and 2 epochs in --quick) because one "
        "uncached ViT-B-16 step takes several seconds on this CPU. Random weights: speed only. Shared 2-core "
        "machine with other jobs running: read the ratios.",
    ]


if __name__ == "__main__":
    sys.exit(main())
