"""Decomposition benchmark: trkit vs tensorly (TR-SVD, TR-ALS) vs quimb (cyclic MPS ALS).

Same tensors, same run, one thread everywhere. For every case we record time, relative error
and parameters of each method; "time to target" is how long trkit's TR-ALS (SVD init
included) takes to reach the *best* error any competitor's ALS reached (to within 1e-4
relative); "-" when it never does. Competitors get the same sweep budget (100, quick: 30)
and stop on their own criteria. Writes a table to
stdout and JSON to benchmarks/results/decompose.json.

    .venv/bin/python benchmarks/decompose.py            # full
    .venv/bin/python benchmarks/decompose.py --quick    # small sizes, fewer sweeps
    .venv/bin/python benchmarks/decompose.py --only noise --out /tmp/x.json   # re-run matching cases

Errors below ``EXACT`` (1e-13) all count as exact: the target is never set below it (at that
level the last digits depend on summation order, not on the method).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trkit  # noqa: E402

torch.set_num_threads(1)


from _common import cpu_model, write_json  # noqa: E402

EXACT = 1e-13  # relative errors below this are exact to working precision (float64)


def rel(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(x - y) / np.linalg.norm(x))


def make_cases(quick: bool):
    rng = np.random.default_rng(0)
    cases = []
    n, r = (16, 3) if quick else (32, 4)
    ring = trkit.TensorRing.random((n,) * 4, r, seed=1).to_numpy()
    cases.append((f"exact ring {n}^4 r{r}", ring, r))
    cases.append((f"ring {n}^4 r{r} + 1e-3 noise", ring + 1e-3 * ring.std() * rng.standard_normal(ring.shape), r))
    from skimage.data import camera

    cam = camera().astype(np.float64)
    if quick:
        cam = cam[::8, ::8]  # 64 x 64 = 4^6
        cases.append(("camera 64x64 as 4^6 r4", cam.reshape((4,) * 6), 4))
    else:
        cases.append(("camera as 8^6 r8", cam.reshape((8,) * 6), 8))
        cases.append(("camera as 8^6 r16", cam.reshape((8,) * 6), 16))
    nf, df = (6, 5) if quick else (10, 6)
    idx = np.indices((nf,) * df).sum(0)
    cases.append((f"1/(i1+..+i{df}+1) n={nf} r4", 1.0 / (idx + 1.0), 4))
    rows, cols = (16, 32) if quick else (64, 64)
    u = rng.standard_normal((8, rows, 12)) @ np.diag(0.7 ** np.arange(12))
    v = rng.standard_normal((12, cols))
    w = u @ v + 0.01 * rng.standard_normal((8, rows, cols))  # 8 layers sharing a row space
    shape = (8,) * (4 if quick else 5)
    cases.append((f"8 weight matrices {rows}x{cols} as 8^{len(shape)} r6", w.reshape(shape), 6))
    return cases


def run_tensorly_svd(x, r):
    import tensorly as tl
    from tensorly.decomposition import tensor_ring

    t0 = time.perf_counter()
    try:
        tr = tensor_ring(x, rank=[r] * (x.ndim + 1))
    except Exception as exc:  # tensorly raises when r*r > n_1
        return {"time_s": time.perf_counter() - t0, "error": None, "failed": str(exc)[:80]}
    t = time.perf_counter() - t0
    return {"time_s": t, "error": rel(x, tl.tr_to_tensor(tr)), "params": int(sum(c.size for c in tr))}


def run_tensorly_als(x, r, iters):
    import tensorly as tl
    from tensorly.decomposition import tensor_ring_als

    t0 = time.perf_counter()
    tr = tensor_ring_als(x, rank=[r] * (x.ndim + 1), n_iter_max=iters, random_state=0)
    t = time.perf_counter() - t0
    return {"time_s": t, "error": rel(x, tl.tr_to_tensor(tr)), "params": int(sum(c.size for c in tr))}


def run_quimb(x, r, iters):
    import quimb.tensor as qtn

    d, n = x.ndim, x.shape[0]
    target = qtn.Tensor(x, inds=tuple(f"k{i}" for i in range(d)))
    mps = qtn.MPS_rand_state(d, bond_dim=r, phys_dim=n, cyclic=True, seed=0)
    t0 = time.perf_counter()
    fit = mps.fit(target, method="als", steps=iters)
    t = time.perf_counter() - t0
    dense = fit.contract(output_inds=tuple(f"k{i}" for i in range(d))).data
    return {"time_s": t, "error": rel(x, np.asarray(dense)), "params": int(sum(t_.size for t_ in fit))}


def timed(fn, repeats: int = 3):
    """Median wall time of ``repeats`` calls (the machine is shared) and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def run_ours(x, r, iters, target):
    xt = torch.from_numpy(np.ascontiguousarray(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_svd, ring_svd = timed(lambda: trkit.tr_svd(xt, rank=r))
    out = {"svd_rank": {"time_s": t_svd, "error": rel(x, ring_svd.to_numpy()), "params": ring_svd.n_params}}
    tol = max(target, 1e-10)
    t_tol, (ring_tol, info_tol) = timed(lambda: trkit.tr_svd(xt, tol=tol, return_info=True))
    out["svd_tol"] = {
        "time_s": t_tol,
        "tol": tol,
        "error": info_tol.rel_error,
        "params": ring_tol.n_params,
        "ranks": list(ring_tol.ranks),
        "meets_tol": info_tol.rel_error <= tol,
    }
    out["als"] = als_to_target(xt, r, iters, target)
    return out


def als_to_target(xt, r, iters, target, init="svd"):
    """trkit TR-ALS from ``init``; time to first reach ``target`` (start-up and init included)."""
    trace = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ring, info = trkit.tr_als(
            xt,
            r,
            init=init,
            max_iter=iters,
            stop_tol=1e-9,
            return_info=True,
            callback=lambda _ring, sweep: trace.append((time.perf_counter() - t0, sweep.rel_error)),
        )
    t_total = time.perf_counter() - t0
    if not trace:  # the TR-SVD start was already exact: no sweep ran
        trace = [(t_total, info.rel_error)]
    # "equal error" = within 1e-4 relative (the fit formula and the dense error differ in the last digits)
    reach = next((t for t, e in trace if e <= target * (1 + 1e-4)), None)
    return {
        "time_s": t_total,
        "error": info.rel_error,
        "params": ring.n_params,
        "sweeps": info.n_iter,
        "time_to_target_s": reach,
        "target": target,
        "trace": [[round(t, 4), e] for t, e in trace],
    }


def tensorly_start(x, r) -> trkit.TensorRing:
    """The cores tensorly's ``tensor_ring_als(random_state=0)`` starts from."""
    import tensorly as tl

    cores = tl.random.random_tr(x.shape, [r] * (x.ndim + 1), random_state=tl.check_random_state(0))
    return trkit.TensorRing([torch.from_numpy(np.asarray(c)) for c in cores])


def quimb_start(x, r) -> trkit.TensorRing:
    """The cores quimb's fit starts from (``MPS_rand_state(seed=0)``, cyclic), as ``(left, n, right)``."""
    import quimb.tensor as qtn

    mps = qtn.MPS_rand_state(x.ndim, bond_dim=r, phys_dim=x.shape[0], cyclic=True, seed=0)
    return trkit.TensorRing([torch.from_numpy(np.asarray(t.data)).permute(0, 2, 1).contiguous() for t in mps])


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, fewer sweeps")
    ap.add_argument("--out", default=None, help="JSON path (default results/decompose[_quick].json)")
    ap.add_argument("--only", default=None, help="run only the cases whose name contains this text")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(Path(__file__).parent / "results" / ("decompose_quick.json" if args.quick else "decompose.json"))
    iters = 30 if args.quick else 100
    import quimb
    import tensorly as tl

    tl.set_backend("numpy")
    env = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "tensorly": tl.__version__,
        "quimb": quimb.__version__,
        "threads": 1,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "quick": args.quick,
        "als_max_sweeps": iters,
    }
    print(
        f"# threads: torch {torch.get_num_threads()}, BLAS 1 (threadpoolctl), OMP_WAIT_POLICY="
        f"{os.environ['OMP_WAIT_POLICY']}; CPU: {env['cpu']}"
    )
    results = []
    with threadpool_limits(limits=1):
        for name, x, r in make_cases(args.quick):
            if args.only and args.only not in name:
                continue
            print(f"# {name}: shape {x.shape}, rank {r}", flush=True)
            row = {"case": name, "shape": list(x.shape), "rank": r}
            row["tensorly_svd"] = run_tensorly_svd(x, r)
            row["tensorly_als"] = run_tensorly_als(x, r, iters)
            row["quimb_als"] = run_quimb(x, r, iters)
            target = max(min(row["tensorly_als"]["error"], row["quimb_als"]["error"]), EXACT)
            row.update({f"trkit_{k}": v for k, v in run_ours(x, r, iters, target).items()})
            # the same start as each competitor: compares the solvers, not the luck of the start
            xt = torch.from_numpy(np.ascontiguousarray(x))
            row["trkit_als_tensorly_start"] = als_to_target(
                xt, r, iters, max(row["tensorly_als"]["error"], EXACT), tensorly_start(x, r)
            )
            row["trkit_als_quimb_start"] = als_to_target(
                xt, r, iters, max(row["quimb_als"]["error"], EXACT), quimb_start(x, r)
            )
            for other, key in (("tensorly_als", "tensorly"), ("quimb_als", "quimb")):
                t_same = row[f"trkit_als_{key}_start"]["time_to_target_s"]
                row[f"speedup_vs_{key}_same_start"] = None if t_same is None else row[other]["time_s"] / t_same
            t_ours = row["trkit_als"]["time_to_target_s"]
            row["speedup_vs_tensorly_als"] = None if t_ours is None else row["tensorly_als"]["time_s"] / t_ours
            row["speedup_vs_quimb"] = None if t_ours is None else row["quimb_als"]["time_s"] / t_ours
            results.append(row)
    head = (
        f"{'case':38s} {'tl-SVD err':>10s} {'tl-ALS s':>9s} {'tl-ALS err':>10s} {'quimb s':>8s} "
        f"{'quimb err':>9s} | {'ours SVD err':>12s} {'ours ALS s':>10s} {'ALS err':>9s} {'to tgt s':>8s} "
        f"{'x tl':>6s} {'x quimb':>7s} | {'x tl same':>9s} {'x q same':>8s} | {'svd(tol) err':>12s} "
        f"{'tol':>8s} {'params':>7s}"
    )
    print(head)
    print("-" * len(head))
    for row in results:
        tls, tla, q = row["tensorly_svd"], row["tensorly_als"], row["quimb_als"]
        s, a, st = row["trkit_svd_rank"], row["trkit_als"], row["trkit_svd_tol"]
        print(
            f"{row['case']:38s} {fmt(tls['error'], '10.3e')} {tla['time_s']:9.2f} {tla['error']:10.3e} "
            f"{q['time_s']:8.2f} {q['error']:9.3e} | {s['error']:12.3e} {a['time_s']:10.2f} {a['error']:9.3e} "
            f"{fmt(a['time_to_target_s'], '8.2f')} {fmt(row['speedup_vs_tensorly_als'], '6.1f')} "
            f"{fmt(row['speedup_vs_quimb'], '7.1f')} | {fmt(row['speedup_vs_tensorly_same_start'], '9.1f')} "
            f"{fmt(row['speedup_vs_quimb_same_start'], '8.1f')} | {st['error']:12.3e} {st['tol']:8.1e} "
            f"{st['params']:7d}"
        )
    out = Path(args.out)
    write_json(out, report(results, env, args.quick), indent=2)
    print(f"# wrote {out}")


def summary_row(row: dict) -> dict:
    """One flat line a case for the docs table (details stay under ``details``)."""
    tls, tla, q = row["tensorly_svd"], row["tensorly_als"], row["quimb_als"]
    s, a, st = row["trkit_svd_rank"], row["trkit_als"], row["trkit_svd_tol"]
    return {
        "case": row["case"],
        "tensorly SVD err": tls["error"],
        "tensorly ALS s": tla["time_s"],
        "tensorly ALS err": tla["error"],
        "quimb ALS s": q["time_s"],
        "quimb err": q["error"],
        "trkit SVD(rank) s": s["time_s"],
        "trkit SVD(rank) err": s["error"],
        "trkit ALS s": a["time_s"],
        "trkit ALS err": a["error"],
        "trkit to target s": a["time_to_target_s"],
        "x tensorly ALS": row["speedup_vs_tensorly_als"],
        "x quimb": row["speedup_vs_quimb"],
        "same start: trkit to tensorly err s": row["trkit_als_tensorly_start"]["time_to_target_s"],
        "x tensorly ALS (same start)": row["speedup_vs_tensorly_same_start"],
        "same start: trkit to quimb err s": row["trkit_als_quimb_start"]["time_to_target_s"],
        "x quimb (same start)": row["speedup_vs_quimb_same_start"],
        "SVD(tol) tol": st["tol"],
        "SVD(tol) s": st["time_s"],
        "SVD(tol) err": st["error"],
        "SVD(tol) params": st["params"],
        "meets tol": st["meets_tol"],
    }


def report(results: list[dict], env: dict, quick: bool) -> dict:
    rows = [summary_row(r) for r in results]
    vs_quimb = [(r["case"], r["x quimb"]) for r in rows]
    beaten = [c for c, v in vs_quimb if v is not None and v >= 1]
    targets = [
        f"tr_svd(tol) meets its tolerance on every case: {'met' if all(r['meets tol'] for r in rows) else 'MISSED'}",
        f"TR-ALS reaches the best competitor error faster than quimb: met on {len(beaten)}/{len(rows)} cases ("
        + ", ".join(f"{c}: {'-' if v is None else f'{v:.2f}x'}" for c, v in vs_quimb)
        + ")",
    ]

    def verdict(tool: str, need: float) -> str:
        # per case the better of trkit's default (SVD) start and the competitor's own start
        parts, ok = [], True
        for r in rows:
            own, same = r[f"x {tool}"], r[f"x {tool} (same start)"]
            best = max([v for v in (own, same) if v is not None], default=None)
            ok &= best is not None and best >= need
            parts.append(f"{r['case']}: " + "/".join("never" if v is None else f"{v:.1f}x" for v in (own, same)))
        return ("met" if ok else "MISSED") + " (default start / same start: " + "; ".join(parts) + ")"

    targets += [
        f">= 10x faster than tensorly TR-ALS at equal or lower error on every case: {verdict('tensorly ALS', 10)}",
        f"at least as fast as quimb at equal or lower error on every case: {verdict('quimb', 1)}",
    ]
    exact = next((r for r in rows if r["case"].startswith("exact ring")), None)
    if exact is not None and not quick:  # 2.32 s before the Gram bases and candidate pruning
        targets.append(
            f"tr_svd(tol) on {exact['case']} under 0.5 s (was 2.32 s): "
            f"{'met' if exact['SVD(tol) s'] < 0.5 else 'missed'} ({exact['SVD(tol) s']:.3f} s; "
            f"rank mode {exact['trkit SVD(rank) s']:.3f} s)"
        )
    notes = [
        "Same tensors, same process, one BLAS thread for everyone; the machine is shared, so read ratios.",
        "'to target' = time for trkit TR-ALS (SVD init included) to reach the best error of tensorly/quimb ALS "
        "(within 1e-4 relative; errors below 1e-13 all count as exact); '-' when it never does (then 'x' "
        "columns are '-').",
        "SVD(tol) runs at that target tolerance (at least 1e-10); its times are medians of 3 runs.",
        "Competitors get the same sweep budget and stop on their own criteria.",
        "'same start': trkit TR-ALS started from exactly the cores tensorly (random_state=0) or quimb (seed=0) "
        "start from, timed until it reaches that tool's final error. ALS is a non-convex fit whose local minimum "
        "depends on the start (on the weight-stack case tensorly's own seeds 0/1/2 end at 0.7168/0.7217/0.7195), "
        "so this compares the solvers; the default-start columns show what trkit's SVD start gives.",
        "Per-sweep ALS error traces are in the JSON under details.",
        "On the exact ring trkit's TR-SVD start is already exact (~1e-14), so tr_als returns without a sweep; "
        "from a random start (tensorly's or quimb's) it needs about 10 sweeps to reach exactness (tensorly ends "
        "at ~3e-9, quimb 1.16 at ~1e-15; below 1e-13 counts as exact).",
    ]
    cmd = "python benchmarks/decompose.py" + (" --quick" if quick else "")
    return {
        "title": "Decompositions: TR-SVD and TR-ALS vs tensorly and quimb" + (" (quick)" if quick else ""),
        "command": cmd,
        "env": env,
        "summary": rows,
        "targets": targets,
        "notes": notes,
        "details": {r["case"]: r for r in results},
    }


if __name__ == "__main__":
    main()
