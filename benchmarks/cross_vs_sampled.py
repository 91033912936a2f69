"""tr_cross vs tr_als_sampled on a function of an index batch: which one to use (issue 14).

``1 / (1 + x_1 + ... + x_10)`` on a grid of 16 points of [0, 1] per axis (``16^10`` entries), at
rank 8 and 4, clean and with additive Gaussian noise of 1e-4 (5.8e-4 relative). Entries read
(every value ``f`` returned, repeats included), wall time (1 thread; median of 3 for the clean
rank-8 runs, one run otherwise) and the relative error against the clean function on 10,000
random entries neither method saw.

    python benchmarks/cross_vs_sampled.py    # about 2 minutes on one core
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trkit  # noqa: E402

torch.set_num_threads(1)

from _common import Counted, env_info, write_json  # noqa: E402

SHAPE = (16,) * 10
GRID = np.linspace(0, 1, 16)
NOISE = 1e-4


def clean(idx) -> np.ndarray:
    return 1.0 / (1.0 + GRID[np.asarray(idx)].sum(axis=1))


def run(method: str, f, rank: int, config: dict) -> tuple[trkit.TensorRing, int, float]:
    g = Counted(f)
    t0 = time.perf_counter()
    fn = trkit.tr_cross if method == "tr_cross" else trkit.tr_als_sampled
    ring = fn(g, rank, shape=SHAPE, **config)
    return ring, g.count, time.perf_counter() - t0


def main() -> int:
    test = np.random.default_rng(7).integers(0, 16, size=(10_000, 10))
    ref = clean(test)
    noise_rng = np.random.default_rng(3)

    def noisy(idx):
        return clean(idx) + NOISE * noise_rng.standard_normal(len(idx))

    rows = []
    methods = [("tr_cross", {"max_iter": 2}), ("tr_cross", {}), ("tr_als_sampled", {})]
    with threadpool_limits(limits=1):
        for rank in (8, 4):
            for data, f in (("clean", clean), ("noisy", noisy)):
                for method, config in methods:
                    repeats = 3 if (rank, data) == (8, "clean") else 1
                    runs = [run(method, f, rank, config) for _ in range(repeats)]
                    ring = runs[-1][0]
                    err = float(np.linalg.norm(ring.entries(test).double().numpy() - ref) / np.linalg.norm(ref))
                    label = ", ".join(f"{k}={v}" for k, v in config.items()) or "defaults"
                    row = {"rank": rank, "data": data, "method": method, "config": label}
                    row |= {"entries": runs[-1][1], "time_s": statistics.median(r[2] for r in runs), "error": err}
                    rows.append(row)
                    print(f"rank {rank} {data:5s} {method:15s} {label:16s} entries {row['entries']:10d} "
                          f"time {row['time_s']:7.2f}s error vs clean {err:.2g}", flush=True)  # fmt: skip
    rel_noise = NOISE / float(np.sqrt(np.mean(ref**2)))
    out = Path(__file__).parent / "results" / "cross_vs_sampled.json"
    write_json(out, {"title": "tr_cross vs tr_als_sampled", "command": "python benchmarks/cross_vs_sampled.py",
                     "env": env_info(), "relative_noise": rel_noise, "rows": rows})  # fmt: skip
    print(f"relative noise {rel_noise:.2g}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
