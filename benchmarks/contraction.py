"""Planned contraction benchmark: FLOPs of our plans vs opt_einsum, and wall time vs tensorly.

Usage: python benchmarks/contraction.py [--quick]
Writes benchmarks/results/contraction.json (contraction_quick.json with --quick).
All timings in one process, one thread, side by side; median of --repeats with min-max spread.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import opt_einsum  # noqa: E402
import tensorly as tl  # noqa: E402
import torch  # noqa: E402

import trkit  # noqa: E402
from trkit import contract as C  # noqa: E402
from trkit.contract import _planned  # noqa: E402  (the opt_einsum backend's plan cache, timed directly)
from trkit.ring import TensorRing, dense_equation  # noqa: E402

FULL = [
    (4, 32, 8),
    (4, 32, 16),
    (6, 8, 4),
    (6, 12, 8),
    (6, 16, 4),
    (8, 6, 4),
    (8, 4, 8),
    (8, 6, 12),
    (10, 4, 4),
    (10, 4, 2),
    (10, 5, 6),
]
QUICK = [(4, 16, 4), (6, 6, 4), (8, 4, 4), (10, 3, 2)]


from _common import cpu_model, write_json  # noqa: E402


def timeit(fn, repeats: int) -> dict:
    fn()  # warm-up: plan caches, allocator
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts)}


def flops_of(eq, shapes, optimize):
    _, info = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=optimize)
    return int(info.opt_cost)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def large_ring(quick: bool) -> dict:
    d, n, r = 12, 10, 8
    a = TensorRing.random([n] * d, r, seed=0, dtype=torch.float64)
    b = TensorRing.random([n] * d, r, seed=1, dtype=torch.float64)
    m = 10_000 if quick else 100_000
    idx = torch.randint(0, n, (m, d), generator=torch.Generator().manual_seed(0))
    rss0 = rss_mb()
    out = {
        "case": f"order {d}, mode {n}, rank {r}",
        "dense_entries": float(n) ** d,
        "core_bytes": sum(c.numel() * c.element_size() for c in a.cores),
    }
    out["norm"] = timeit(lambda: a.norm(), 3)
    out["inner"] = timeit(lambda: trkit.inner(a, b), 3)
    out["peak_rss_growth_norm_inner_mb"] = rss_mb() - rss0
    out[f"entries_{m}"] = timeit(lambda: a.entries(idx), 3)
    out["norm_value"], out["sqrt_inner_aa"] = float(a.norm()), float(trkit.inner(a, a).sqrt())
    out["peak_rss_growth_mb"] = rss_mb() - rss0
    out["peak_rss_mb"] = rss_mb()
    return out


def case(d: int, n: int, r: int, repeats: int) -> dict:
    tr = TensorRing.random([n] * d, r, seed=d * 1000 + n * 10 + r, dtype=torch.float64)
    tr2 = TensorRing.random([n] * d, r, seed=7, dtype=torch.float64)
    eq, shapes = dense_equation(d), [tuple(c.shape) for c in tr.cores]
    row = {"order": d, "mode": n, "rank": r, "dense_entries": n**d}
    shape, ranks = tr.shape, tr.ranks
    C.ring_dense_plan.cache_clear()
    t0 = time.perf_counter()
    plan = C.ring_dense_plan(shape, ranks)
    row["plan_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(100):
        C.ring_dense_plan(shape, ranks)
    row["plan_cached_s"] = (time.perf_counter() - t0) / 100
    C.clear_cache()  # the opt_einsum backend's planned einsum: first vs cached call
    t0 = time.perf_counter()
    _planned.expression(eq, tuple(shapes), "best", None)
    row["einsum_plan_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(100):
        _planned.expression(eq, tuple(shapes), "best", None)
    row["einsum_plan_cached_s"] = (time.perf_counter() - t0) / 100
    row["flops_ours"] = plan.flops
    row["flops_naive"] = C.naive_flops(eq, *shapes)
    row["flops_dp"] = flops_of(eq, shapes, "dp")
    row["flops_optimal"] = flops_of(eq, shapes, "optimal") if d <= 6 else None
    best = min(f for f in (row["flops_dp"], row["flops_optimal"], plan.flops) if f is not None)
    row["ours_over_best"] = plan.flops / best
    tl.set_backend("pytorch")
    cores, cores2 = tr.cores, tr2.cores
    row["to_dense_ours"] = timeit(tr.to_dense, repeats)
    row["to_dense_tensorly"] = timeit(lambda: tl.tr_to_tensor(cores), repeats)
    row["norm_ours"] = timeit(tr.norm, repeats)
    row["norm_tensorly_dense"] = timeit(lambda: torch.linalg.norm(tl.tr_to_tensor(cores).reshape(-1)), repeats)
    row["inner_ours"] = timeit(lambda: trkit.inner(tr, tr2), repeats)
    row["inner_tensorly_dense"] = timeit(
        lambda: torch.dot(tl.tr_to_tensor(cores).reshape(-1), tl.tr_to_tensor(cores2).reshape(-1)), repeats
    )
    ref = tl.tr_to_tensor(cores)
    row["max_abs_diff_vs_tensorly"] = float((tr.to_dense() - ref).abs().max())
    row["norm_rel_diff"] = float(abs(tr.norm() - torch.linalg.norm(ref.reshape(-1))) / torch.linalg.norm(ref))
    return row


def fmt_t(t: dict) -> str:
    return f"{t['median_s'] * 1e3:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small cases only")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = {
        "torch": torch.__version__,
        "tensorly": tl.__version__,
        "opt_einsum": opt_einsum.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "dtype": "float64",
        "quick": args.quick,
    }
    print("env:", json.dumps(env))
    big = large_ring(args.quick)  # first, so its peak RSS is not hidden by the dense cases
    rows = [case(d, n, r, args.repeats) for d, n, r in (QUICK if args.quick else FULL)]

    print("\nFLOPs (opt_einsum accounting) and planning time")
    print(
        f"{'d':>3} {'n':>3} {'r':>3} {'N':>9} {'ours':>10} {'naive':>10} {'dp':>10} {'optimal':>10} "
        f"{'ours/best':>9} {'plan 1st ms':>11} {'cached us':>9} {'einsum 1st ms':>13} {'cached us':>9}"
    )
    for w in rows:
        opt = f"{w['flops_optimal']:.3g}" if w["flops_optimal"] is not None else "-"
        print(
            f"{w['order']:>3} {w['mode']:>3} {w['rank']:>3} {w['dense_entries']:>9.2g} {w['flops_ours']:>10.3g} "
            f"{w['flops_naive']:>10.3g} {w['flops_dp']:>10.3g} {opt:>10} {w['ours_over_best']:>9.3f} "
            f"{w['plan_first_s'] * 1e3:>11.2f} {w['plan_cached_s'] * 1e6:>9.2f} "
            f"{w['einsum_plan_first_s'] * 1e3:>13.2f} {w['einsum_plan_cached_s'] * 1e6:>9.2f}"
        )
    print(f"\nWall time, ms (median of {args.repeats}; [min-max]); tensorly = tl.tr_to_tensor, pytorch backend")
    print(
        f"{'d':>3} {'n':>3} {'r':>3} {'to_dense ours':>22} {'tensorly':>22} {'speedup':>7} "
        f"{'norm ours':>10} {'dense':>9} {'inner ours':>10} {'dense':>9}"
    )
    for w in rows:
        a, b = w["to_dense_ours"], w["to_dense_tensorly"]
        print(
            f"{w['order']:>3} {w['mode']:>3} {w['rank']:>3} "
            f"{fmt_t(a):>8} [{a['min_s'] * 1e3:.2f}-{a['max_s'] * 1e3:.2f}] "
            f"{fmt_t(b):>8} [{b['min_s'] * 1e3:.2f}-{b['max_s'] * 1e3:.2f}] "
            f"{b['median_s'] / a['median_s']:>7.2f} {fmt_t(w['norm_ours']):>10} "
            f"{fmt_t(w['norm_tensorly_dense']):>9} {fmt_t(w['inner_ours']):>10} "
            f"{fmt_t(w['inner_tensorly_dense']):>9}"
        )
    print(
        f"\nLarge ring ({big['case']}, dense would be {big['dense_entries']:.0e} entries; "
        f"cores {big['core_bytes'] / 1024:.0f} KiB):"
    )
    for k in [k for k in big if isinstance(big[k], dict)]:
        print(f"  {k:<14} {big[k]['median_s'] * 1e3:8.2f} ms [{big[k]['min_s'] * 1e3:.2f}-{big[k]['max_s'] * 1e3:.2f}]")
    print(
        f"  norm {big['norm_value']:.6e} vs sqrt(inner(a,a)) {big['sqrt_inner_aa']:.6e}; "
        f"peak RSS growth: norm+inner {big['peak_rss_growth_norm_inner_mb']:.1f} MB, with entries "
        f"{big['peak_rss_growth_mb']:.1f} MB (peak RSS {big['peak_rss_mb']:.0f} MB)"
    )

    targets = {
        "planned_flops_within_1.2x_of_best": all(w["ours_over_best"] <= 1.2 for w in rows),
        "to_dense_never_slower_than_tensorly": all(
            w["to_dense_ours"]["median_s"] <= w["to_dense_tensorly"]["median_s"] for w in rows
        ),
        "to_dense_2x_faster_for_order_ge_6": all(
            w["to_dense_tensorly"]["median_s"] >= 2 * w["to_dense_ours"]["median_s"] for w in rows if w["order"] >= 6
        ),
        "cached_plan_under_5pct_of_first": all(
            w["plan_cached_s"] < 0.05 * w["plan_first_s"]
            and w["einsum_plan_cached_s"] < 0.05 * w["einsum_plan_first_s"]
            for w in rows
        ),
        "large_ring_rss_growth_mb": big["peak_rss_growth_mb"],
    }
    print("\ntargets:", json.dumps(targets))
    out = Path(__file__).parent / "results" / ("contraction_quick.json" if args.quick else "contraction.json")
    write_json(out, {"env": env, "cases": rows, "large_ring": big, "targets": targets})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
