"""Where a fixed-rank tr_cross spends its function evaluations, and how its error varies by seed.

For one function of ``benchmarks/cross.py`` (default: ackley 33^7 at rank 16, the target it misses)
this records, per pass and per core, the fibre entries the pass asks for and how many of them are
new (sent to ``f``) rather than answered from the cache; it splits the new ones into the random
test columns (``PASS_EXTRA`` per fibre, always new) and the rest. It then runs trkit and teneva's
cache-backed cross on more seeds than cross.py's three, to show how far a 3-seed median moves.

    python benchmarks/cross_evals.py                     # ackley, rank 16, 12 seeds (~3 minutes)
    python benchmarks/cross_evals.py --function abs_sin --rank 25
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trkit  # noqa: E402
from trkit.decompose import _tt_cross  # noqa: E402
from trkit.decompose import cross as cross_module  # noqa: E402

torch.set_num_threads(1)

from _common import Counted, cpu_model, write_json  # noqa: E402
from cross import N_HELDOUT, cases  # noqa: E402


def heldout(case):
    rng = np.random.default_rng(12345)  # cross.py's held-out entries
    idx = np.stack([rng.integers(0, case.n, N_HELDOUT) for _ in range(case.d)], 1)
    return idx, case.f(idx)


def rel(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(pred - ref) / np.linalg.norm(ref))


def trkit_run(case, rank: int, passes: int, seed: int, idx, ref, per_core: list | None = None) -> list[tuple]:
    """(evaluations, held-out error) after every pass; per core (pass, core, entries, new) into ``per_core``."""
    f, rec = Counted(case.f), []
    fibre = _tt_cross.TTCross._fibre

    def counted_fibre(self, k, left, right):
        before = self.box.n_evals
        out = fibre(self, k, left, right)
        if per_core is not None:
            per_core.append((len(rec) + 1, k, int(out.size), self.box.n_evals - before, out.shape))
        return out

    def cb(ring, info):
        rec.append((f.count, rel(ring.entries(torch.from_numpy(idx)).numpy(), ref)))

    _tt_cross.TTCross._fibre = counted_fibre
    try:
        trkit.tr_cross(f, rank, shape=(case.n,) * case.d, max_iter=passes, stop_tol=0, seed=seed, callback=cb)
    finally:
        _tt_cross.TTCross._fibre = fibre
    return rec


def teneva_run(case, rank: int, sweeps: int, seed: int, idx, ref) -> list[tuple]:
    import teneva

    f, rec = Counted(case.f), []

    def cb(y, info, opts):
        rec.append((f.count, rel(teneva.get_many(y, idx), ref)))

    y0 = teneva.rand([case.n] * case.d, rank, seed=seed)
    teneva.cross(f, y0, nswp=sweeps, dr_min=0, dr_max=0, cache={}, cb=cb, info={})
    return rec


def summary(runs: list[list[tuple]], label: str) -> list[dict]:
    out = []
    for p in range(min(len(r) for r in runs)):
        evals = np.array([r[p][0] for r in runs])
        errs = np.array([r[p][1] for r in runs])
        row = {"method": label, "step": p + 1, "evals_median": int(np.median(evals))}
        row.update(
            {f"error_{q}": float(np.quantile(errs, v)) for q, v in (("q25", 0.25), ("median", 0.5), ("q75", 0.75))}
        )
        row["error_median_seeds_0_2"] = float(np.median(errs[:3]))
        row["evals_median_seeds_0_2"] = int(np.median(evals[:3]))
        out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--function", default="ackley")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--passes", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    case = next(c for c in cases(False, True) if c.name == args.function)
    idx, ref = heldout(case)
    out = args.out or str(Path(__file__).parent / "results" / f"cross_evals_{case.name}.json")
    with threadpool_limits(limits=1):
        per_core: list = []
        trkit_run(case, args.rank, args.passes, 0, idx, ref, per_core)
        passes = []
        for p in sorted({c[0] for c in per_core}):
            cores = [c for c in per_core if c[0] == p]
            entries, new = sum(c[2] for c in cores), sum(c[3] for c in cores)
            # random test columns: the fibre side beyond the bond's rank (PASS_EXTRA of them)
            test = sum(
                c[2] // c[4][2] * (c[4][2] - args.rank) if c[4][2] > args.rank else
                c[2] // c[4][0] * (c[4][0] - args.rank) if c[4][0] > args.rank else 0
                for c in cores
            )  # fmt: skip
            passes.append({"pass": p, "entries": entries, "new": new, "cached": entries - new,
                           "test_column_entries": test,
                           "cores": [{"core": c[1], "entries": c[2], "new": c[3]} for c in cores]})  # fmt: skip
            print(f"pass {p}: fibre entries {entries:6d}, new {new:6d}, cached {entries - new:6d}, "
                  f"random test columns {test:5d} | " + " ".join(f"k{c[1]}:{c[3]}/{c[2]}" for c in cores))  # fmt: skip
        trk = [trkit_run(case, args.rank, args.passes, s, idx, ref) for s in range(args.seeds)]
        ten = [teneva_run(case, args.rank, (args.passes + 1) // 2, s, idx, ref) for s in range(args.seeds)]
    rows = summary(trk, "trkit pass") + summary(ten, "teneva sweep")
    for r in rows:
        print(f"{r['method']} {r['step']}: evals {r['evals_median']:7d}  error q25 {r['error_q25']:.2e} "
              f"median {r['error_median']:.2e} q75 {r['error_q75']:.2e} (seeds 0-2: {r['error_median_seeds_0_2']:.2e} "
              f"at {r['evals_median_seeds_0_2']})")  # fmt: skip
    params = sum(a * case.n * b for a, b in zip([1] + [args.rank] * (case.d - 1), [args.rank] * (case.d - 1) + [1]))
    write_json(out, {
        "title": f"tr_cross evaluations per pass and core, {case.name} {case.n}^{case.d} at rank {args.rank}",
        "command": f"python benchmarks/cross_evals.py --function {case.name} --rank {args.rank}",
        "env": {"cpu": cpu_model(), "numpy": np.__version__, "torch": torch.__version__, "threads": 1},
        "pass_extra": cross_module.PASS_EXTRA,
        "train_params_at_rank": params,
        "seed_0_per_pass": passes,
        "seeds": args.seeds,
        "per_step": rows,
        "notes": [
            "A pass asks for every fibre X[left_k, :, right_k+1] (plus PASS_EXTRA random test columns); "
            "entries of earlier passes come from the cache. train_params_at_rank: the entries one pass "
            "at this rank needs with nothing cached and no test columns.",
            "teneva: cross with cache, dr_min=dr_max=0 (fixed rank), one sweep = two passes.",
        ],
    })  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
