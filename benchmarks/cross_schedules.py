"""Schedules of the random test columns of a fixed-rank tr_cross, screened on the targets it misses.

Every pass of a fixed-rank cross adds ``PASS_EXTRA = 2`` random multi-indices to each fibre's test
side (``trkit.decompose._tt_cross.TTCross._with_random``); they are new entries in every pass. This
script swaps that rule for other general schedules (no per-function cases) by patching
``_with_random`` here, not in the library, and reports trkit's medians over the seeds of
``benchmarks/cross.py`` (9) for ``ackley`` and ``inv_sum`` (targets not met) and ``abs_sin`` (met,
the one that needs the columns), against teneva's figures in ``results/cross.json``:

- ``all``: the library's rule (2 in every pass);
- ``none``: no test columns; ``one``: 1 in every pass;
- ``skip1``: none in the first pass (its test side is random anyway), 2 afterwards;
- ``uptoN``: 2 in the first N passes only;
- ``moved``: 2 on a bond only if the last update of either of its pivot sets replaced a pivot;
- ``fixed``: 2 per bond, drawn once and reused in every pass (cached where the rows stay).

    python benchmarks/cross_schedules.py          # about 5 minutes on one core

``results/cross_schedules.json`` was measured before ``tr_cross``'s first pass from random pivots ran
at ``rank - oversample`` (the library's rule since; run again, every schedule here starts that way).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trkit.decompose import _tt_cross  # noqa: E402

torch.set_num_threads(1)

from _common import cpu_model, write_json  # noqa: E402
from cross import N_HELDOUT, cases, rel_err, trkit_run  # noqa: E402

VARIANTS = ["all", "none", "one", "skip1", "upto1", "upto2", "upto3", "moved", "fixed"]
GRID = {"ackley": {16: [3, 4, 5]}, "inv_sum": {13: [2], 14: [2, 3]}, "abs_sin": {25: [4, 5, 6]}}

_ORIGINAL_SWEEP = _tt_cross.TTCross.sweep
_ORIGINAL_RANDOM = _tt_cross.TTCross._with_random


def _changed(old, new) -> bool:
    if old is None or old.shape != new.shape:
        return True
    return {r.tobytes() for r in old} != {r.tobytes() for r in new}


def patch(variant: str) -> None:
    """Install ``variant``'s rule for the test columns on TTCross (``all``: the library's own)."""

    def sweep(self, left_to_right, extra=0):
        before = [list(self.left), list(self.right)]
        out = _ORIGINAL_SWEEP(self, left_to_right, extra)
        moved = getattr(self, "_moved", [True] * (self.d + 1))
        side, was = (self.left, before[0]) if left_to_right else (self.right, before[1])
        for b in range(1, self.d):  # moved[b]: the last update of bond b (either side) replaced a pivot
            moved[b] = _changed(was[b], side[b])
        self._moved = moved
        return out

    def with_random(self, pivots, modes, extra):
        # the bond: modes k+1.. (left-to-right, test on the right) or ..k-1 (right-to-left)
        bond = modes.start if modes.start > 0 else modes.stop
        p = self.n_passes
        if variant == "none":
            extra = 0
        elif variant == "one":
            extra = min(extra, 1)
        elif variant == "skip1":
            extra = 0 if p == 0 else extra
        elif variant.startswith("upto"):
            extra = extra if p < int(variant[4:]) else 0
        elif variant == "moved":
            extra = extra if getattr(self, "_moved", None) is None or self._moved[bond] else 0
        elif variant == "fixed" and extra > 0 and len(modes):
            store = self.__dict__.setdefault("_fixed", {})
            key = (modes.start, modes.stop)
            if key not in store:
                store[key] = np.stack([self.rng.integers(0, self.shape[j], extra) for j in modes], 1)
            return np.unique(np.vstack([pivots, store[key]]), axis=0)
        return _ORIGINAL_RANDOM(self, pivots, modes, extra)

    _tt_cross.TTCross.sweep = sweep if variant in ("moved",) else _ORIGINAL_SWEEP
    _tt_cross.TTCross._with_random = with_random if variant != "all" else _ORIGINAL_RANDOM


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=9)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cross_schedules.json"))
    args = ap.parse_args(argv)
    base = json.loads((Path(__file__).parent / "results" / "cross.json").read_text())
    targets = {v["function"]: v for v in base["verdicts"]}
    rows = []
    with threadpool_limits(limits=1):
        for case in [c for c in cases(False) if c.name in GRID]:
            v = targets[case.name]
            print(f"# {case.name}: teneva {v['compared_at']:.2e} with {v['teneva_min_evals']} evaluations", flush=True)
            rng = np.random.default_rng(12345)  # cross.py's held-out entries
            idx = np.stack([rng.integers(0, case.n, N_HELDOUT) for _ in range(case.d)], 1)
            ref = case.f(idx)
            for variant in args.variants.split(","):
                patch(variant)
                for rank, passes in GRID[case.name].items():
                    for p in passes:
                        evals, errs, times = [], [], []
                        for seed in range(args.seeds):
                            t0 = time.perf_counter()
                            ring, info = trkit_run(case, seed=seed, rank=rank, max_iter=p, stop_tol=0)
                            times.append(time.perf_counter() - t0)
                            evals.append(info.n_evals)
                            errs.append(rel_err(ring.entries(torch.from_numpy(idx)).numpy(), ref))
                        row = {"function": case.name, "variant": variant, "rank": rank, "passes": p,
                               "evals": int(np.median(evals)), "error": float(np.median(errs)),
                               "error_spread": [min(errs), max(errs)], "time_s": float(np.median(times))}  # fmt: skip
                        row["evals_ratio"] = row["evals"] / v["teneva_min_evals"]
                        row["met"] = bool(
                            row["error"] <= v["compared_at"]
                            and row["evals_ratio"] <= 1
                            and row["time_s"] <= v["teneva_min_time_s"]
                        )
                        rows.append(row)
                        print(f"  {variant:7s} rank {rank} {p} passes: evals {row['evals']:7d} "
                              f"({row['evals_ratio']:.3f}x) error {row['error']:.2e} {'met' if row['met'] else ''}",
                              flush=True)  # fmt: skip
    patch("all")
    write_json(
        args.out,
        {
            "title": "Schedules of the random test columns (fixed-rank tr_cross), medians over seeds",
            "command": "python benchmarks/cross_schedules.py",
            "env": {"cpu": cpu_model(), "seeds": args.seeds, "threads": 1},
            "teneva": {f: {k: targets[f][k] for k in ("compared_at", "teneva_min_evals")} for f in GRID},
            "rows": rows,
        },
        indent=1,
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
