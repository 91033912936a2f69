"""CPU seconds of one quickstart training run (train + scoring on all 10,000 test images) per variant.

The quickstart trains every variant for 3 seeds; this times seed 1 of each, in one process with one
thread, and also AdaRing's former recipe (ranks [1, 2], lr 0.1, 40 epochs, clipping at 1.0) for the
ratio. CPU time (``time.process_time``) is reported next to wall time because the machine is shared.

    python benchmarks/quickstart_cost.py [--only LABEL ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _common import env_info, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FORMER_ADARING = (
    "adaring",
    {"hidden": 32, "ranks": [1, 2]},
    {"lambda_text": 8.0},
    {"name": "sgd", "lr": 0.1, "epochs": 40, "batch_size": 16, "weight_decay": 5e-4, "max_grad_norm": 1.0},
)


def main() -> None:
    from trkit_vlm.data.fashion_mnist import fashion_mnist_data
    from trkit_vlm.data.tasks import apply_task
    from trkit_vlm.demo import quickstart as q
    from trkit_vlm.demo.small_clip import load_small_clip
    from trkit_vlm.training.train import train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", help="time only these variants (rows of earlier runs are kept)")
    a = p.parse_args()
    torch.set_num_threads(1)
    bundle = load_small_clip(progress=False)
    variants = {**q.VARIANTS, "AdaRing, former recipe (clipped, 40 epochs)": FORMER_ADARING}
    qc = q.QuickstartConfig(output_dir="/tmp/trkit_quickstart_cost", variants=variants)
    data = apply_task(fashion_mnist_data(), q.task_spec(qc))
    out = RESULTS / "quickstart_cost.json"
    rows = json.loads(out.read_text())["rows"] if out.is_file() and a.only else []
    rows = [r for r in rows if r["variant"] not in (a.only or [])]
    for label in a.only or variants:
        cfg = q.run_config(qc, label, 1, bundle)
        t0, c0 = time.perf_counter(), time.process_time()
        m = train(cfg, bundle=bundle, data=data, progress=False)
        rows.append(
            {
                "variant": label,
                "cpu_s": time.process_time() - c0,
                "wall_s": time.perf_counter() - t0,
                "hm": m["hm"],
                "n_trainable": m["n_trainable"],
            }
        )
        print(f"{label:<45} CPU {rows[-1]['cpu_s']:6.1f} s  wall {rows[-1]['wall_s']:6.1f} s", flush=True)
        write_json(out, {"rows": rows, "env": env_info()})  # after every row: a long sweep may be stopped
    timed = {r["variant"]: r["cpu_s"] for r in rows}
    if set(q.VARIANTS) <= set(timed):
        quickstart = sum(3 * timed[label] for label in q.VARIANTS)
        print(f"the quickstart's {3 * len(q.VARIANTS)} runs: {quickstart:.0f} CPU s (3 seeds x the rows above)")
        write_json(out, {"rows": rows, "quickstart_runs_cpu_s": quickstart, "env": env_info()})


if __name__ == "__main__":
    main()
