"""Cross approximation benchmark: trkit.tr_cross vs teneva's TT-cross (and tntorch's cross).

Tensors too large to store, given as functions of an index batch. Every method runs on a grid of
ranks and sweep counts (its own knobs: teneva's fixed-rank ``cross`` with and without its cache,
tntorch's ``cross`` with ``ranks_tt``/``max_iter``, trkit's ``tr_cross`` with ``rank``/``max_iter``
and with ``tol``, and its ``oversample``: 2, 1 or 0 random test columns a pass), so each is
compared at its best. For every configuration we record distinct
function evaluations, wall time (1 thread) and the relative error on 10,000 random held-out
entries (the same for every method; never seen by any of them), and parameters.

Target (issue 14): at teneva's best held-out error ``E`` (errors below ``1e-14``, float64 rounding
level, count as equal), trkit reaches ``<= E`` with no more evaluations and no more time than the
cheapest teneva configurations that reach ``E``. Every configuration runs with 9 seeds (the
random first pivots); evaluations, times and errors are medians over them. (It was 3 until the
ackley study, benchmarks/cross_evals.py: over 12 seeds, medians of 3 seeds moved by about 30% with
the choice of seeds, for trkit and teneva alike, which decided the ackley verdict either way.)

    python benchmarks/cross.py            # full (about 30 minutes on one core)
    python benchmarks/cross.py --quick    # 3 functions, small grids
    python benchmarks/cross.py --wide --only gauss_chain,ackley,abs_sin   # one rank and sweep further
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.metadata  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trkit  # noqa: E402

_ = trkit.tr_cross  # resolve the lazy export now: its first use imports torch._dynamo (seconds), not timed

torch.set_num_threads(1)

from _common import Counted, cpu_model, write_json  # noqa: E402

FLOOR = 1e-14  # held-out errors below this are float64 rounding: compared as equal
# trkit's random test columns per pass (tr_cross's ``oversample``, default 2): a knob of its own,
# like teneva's cache, in the grid since the 9-seed run (0 and 1 added after ackley and inv_sum
# missed their targets with 2 alone)
OVERSAMPLE = (2, 1, 0)
N_HELDOUT = 10_000


@dataclass
class Case:
    name: str
    d: int
    n: int
    kind: str
    f: object
    formula: str
    ranks: list[int]  # grid for every fixed-rank method
    tols: list[float] = field(default_factory=list)  # trkit's tolerance mode
    wide: list[int] = field(default_factory=list)  # ranks past the grid's edge (--wide)


def _grid(a: float, b: float, n: int) -> np.ndarray:
    return np.linspace(a, b, n)


def cases(quick: bool, wide: bool = False) -> list[Case]:
    x16 = _grid(0, 1, 16)
    xa = _grid(-32.768, 32.768, 33)  # contains 0, where Ackley has its kink
    x8 = _grid(0, 1, 8)
    x64 = _grid(-2, 2, 64)
    theta = 2 * np.pi * np.arange(16) / 16

    def inv_sum(i):
        return 1.0 / (1.0 + x16[i].sum(1))

    def ackley(i):
        x = xa[i]
        return -20 * np.exp(-0.2 * np.sqrt((x**2).mean(1))) - np.exp(np.cos(2 * np.pi * x).mean(1)) + 20 + np.e

    def gauss_chain(i):
        x = x8[i]
        return np.exp(-2.0 * ((x[:, 1:] - x[:, :-1]) ** 2).sum(1))

    def cyclic_cos(i):
        t = theta[i]
        return np.prod(1 + 0.5 * np.cos(t - np.roll(t, -1, axis=1)), axis=1)

    def cauchy(i):
        return 1.0 / (1.0 + (x64[i] ** 2).sum(1))

    def abs_sin(i):
        return np.abs(np.sin(2 * x16[i].sum(1))) + 0.1

    all_cases = [
        Case("inv_sum", 10, 16, "smooth (the issue's)", inv_sum, "1/(1+x1+..+x10), x on 16 points of [0,1]",
             [6, 8, 10, 12, 13, 14], [1e-6, 1e-9, 1e-12]),
        Case("cyclic_cos", 10, 16, "periodic, cyclic coupling", cyclic_cos,
             "prod_k (1+cos(t_k-t_{k+1})/2), t_11=t_1, 16 angles", [4, 9, 10, 12], [1e-10]),
        Case("gauss_chain", 50, 8, "smooth, d=50", gauss_chain, "exp(-2 sum_k (x_k-x_{k+1})^2), x on 8 points of [0,1]",
             [4, 6, 8, 10], [1e-6], [12]),
        Case("cauchy", 6, 64, "smooth, n=64", cauchy, "1/(1+|x|^2), x on 64 points of [-2,2]", [6, 9, 12, 16],
             [1e-8]),
        Case("ackley", 7, 33, "non-smooth (kink at 0)", ackley, "Ackley, x on 33 points of [-32.768,32.768]",
             [4, 8, 12, 16], [1e-4], [20]),
        Case("abs_sin", 8, 16, "non-smooth (kinks)", abs_sin, "|sin(2(x1+..+x8))|+0.1, x on 16 points of [0,1]",
             [9, 16, 25], [3e-2], [36]),
    ]  # fmt: skip
    if wide:
        all_cases = [Case(**{**c.__dict__, "ranks": c.ranks + c.wide}) for c in all_cases]
    if quick:
        keep = {"inv_sum": [8, 10, 12], "cyclic_cos": [9, 12], "cauchy": [6, 9]}
        return [Case(**{**c.__dict__, "ranks": keep[c.name], "tols": c.tols[:1]}) for c in all_cases if c.name in keep]
    return all_cases


def rel_err(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(pred - ref) / np.linalg.norm(ref))


def tt_params(cores) -> int:
    return int(sum(np.asarray(c).size for c in cores))


def medians(points: list[dict]) -> list[dict]:
    """One point per (method, config): the median over seeds of evaluations, time and error."""
    groups: dict = {}
    for p in points:
        groups.setdefault((p["method"], p["config"]), []).append(p)
    out = []
    for group in groups.values():
        row = dict(group[0])
        for key in ("evals", "time_s", "error", "params", "params_truncated"):
            if key in row:
                row[key] = float(np.median([p[key] for p in group]))
        row["evals"], row["params"] = int(row["evals"]), int(row["params"])
        row["seeds"] = len(group)
        row["error_spread"] = [min(p["error"] for p in group), max(p["error"] for p in group)]
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------- teneva
def teneva_points(case: Case, idx, ref, sweeps: int, seeds: int) -> list[dict]:
    """One run per (rank, cache, seed): a point after every sweep (callback time excluded)."""
    import teneva

    points = []
    for rank, cache, seed in itertools.product(case.ranks, (True, False), range(seeds)):
        f = Counted(case.f)
        rec, start, spent = [], time.perf_counter(), [0.0]

        def cb(y, info, opts, rec=rec, start=start, spent=spent, f=f):
            t = time.perf_counter()
            err = rel_err(teneva.get_many(y, idx), ref)
            params = tt_params(teneva.truncate(y, max(err, FLOOR) / 4))
            rec.append((info["nswp"], f.count, t - start - spent[0], err, tt_params(y), params))
            spent[0] += time.perf_counter() - t

        y0 = teneva.rand([case.n] * case.d, rank, seed=seed)
        teneva.cross(f, y0, nswp=sweeps, dr_min=0, dr_max=0, cache={} if cache else None, cb=cb, info={})
        for s, evals, t, err, params, params_trunc in rec:
            points.append(
                {
                    "method": "teneva",
                    "config": f"rank {rank}, {s} sweep{'s' * (s > 1)}{', cache' if cache else ''}",
                    "rank": rank,
                    "sweeps": s,
                    "cache": cache,
                    "evals": evals,
                    "time_s": t,
                    "error": err,
                    "params": params,
                    "params_truncated": params_trunc,
                }
            )
    return points


# --------------------------------------------------------------------------------------------- tntorch
def tntorch_points(case: Case, idx, ref, iters: int, seeds: int) -> list[dict]:
    try:
        import tntorch as tn
    except ImportError:
        return []
    points = []
    domain = [torch.arange(case.n, dtype=torch.float64)] * case.d
    for rank, it, seed in itertools.product(case.ranks, range(1, iters + 1), range(seeds)):
        torch.manual_seed(seed)  # tntorch draws its first pivots from torch's generator
        f = Counted(case.f)

        def fm(x, f=f):
            return torch.from_numpy(f(x.long().numpy()))

        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a hint about maxvolpy
            tt = tn.cross(function=fm, domain=domain, function_arg="matrix", ranks_tt=rank, max_iter=it,
                          eps=1e-15, verbose=False, suppress_warnings=True)  # fmt: skip
        t = time.perf_counter() - t0
        cores = [c.numpy() for c in tt.cores]
        ring = trkit.TensorRing([torch.from_numpy(c) for c in cores])
        err = rel_err(ring.entries(torch.from_numpy(idx)).numpy(), ref)
        config = f"rank {rank}, {it} sweep{'s' * (it > 1)}"
        points.append({"method": "tntorch", "config": config, "evals": f.count, "time_s": t, "error": err})
        points[-1]["params"] = tt_params(cores)
    return points


# ----------------------------------------------------------------------------------------------- trkit
def trkit_run(case: Case, **kwargs):
    f = Counted(case.f)
    ring, info = trkit.tr_cross(f, shape=(case.n,) * case.d, return_info=True, **kwargs)
    assert f.count == info.n_evals  # the cache: never asked twice
    return ring, info


def trkit_points(case: Case, idx, ref, passes: list[int], seeds: int) -> list[dict]:
    points = []
    configs = []
    for over in OVERSAMPLE:  # the library's default (2) keeps the plain labels
        tag = "" if over == 2 else f", oversample {over}"
        configs += [({"rank": r, "max_iter": p, "stop_tol": 0, "oversample": over}, f"rank {r}, {p} passes{tag}")
                    for r in case.ranks for p in passes]  # fmt: skip
        configs += [({"rank": r, "oversample": over}, f"rank {r}, auto stop{tag}") for r in case.ranks]
    configs += [({"tol": t}, f"tol {t:g}") for t in case.tols]
    for (kwargs, label), seed in itertools.product(configs, range(seeds)):
        t0 = time.perf_counter()
        ring, info = trkit_run(case, seed=seed, **kwargs)
        t = time.perf_counter() - t0
        err = rel_err(ring.entries(torch.from_numpy(idx)).numpy(), ref)
        points.append({"method": "trkit", "config": label, "kwargs": kwargs, "evals": info.n_evals, "time_s": t})
        points[-1].update(error=err, params=ring.n_params, ranks=list(ring.ranks), passes=info.n_iter)
    return points


# ------------------------------------------------------------------------------------------ comparison
def cheapest(points: list[dict], level: float, key: str) -> dict | None:
    ok = [p for p in points if p["error"] <= level]
    return min(ok, key=lambda p: (p[key], p["error"])) if ok else None


def compare(case: Case, points: list[dict]) -> tuple[list[dict], dict]:
    """Table rows (teneva's cheapest configs at its best error, trkit's, tntorch's) and the verdict."""
    by = {m: [p for p in points if p["method"] == m] for m in ("teneva", "trkit", "tntorch")}
    best_teneva = min(p["error"] for p in by["teneva"])
    level = max(best_teneva, FLOOR)
    t_evals, t_time = cheapest(by["teneva"], level, "evals"), cheapest(by["teneva"], level, "time_s")
    ours = cheapest(by["trkit"], level, "evals")
    if ours is None:  # out of reach: report trkit's most accurate configuration
        ours = min(by["trkit"], key=lambda p: p["error"])
    rows = [t_evals] + ([t_time] if t_time["config"] != t_evals["config"] else []) + [ours]
    if by["tntorch"]:
        rows.append(cheapest(by["tntorch"], level, "evals") or min(by["tntorch"], key=lambda p: p["error"]))
    table = [
        {"function": case.name, "d": case.d, "n": case.n, "method": r["method"], "config": r["config"],
         "evals": r["evals"], "time_s": round(r["time_s"], 4), "heldout_error": r["error"], "params": r["params"],
         "ring_ranks": str(r.get("ranks", "")) if r["method"] == "trkit" else "", }
        for r in rows
    ]  # fmt: skip
    verdict = {
        "function": case.name,
        "teneva_best_error": best_teneva,
        "compared_at": level,
        "teneva_min_evals": t_evals["evals"],
        "teneva_min_time_s": t_time["time_s"],
        "trkit_error": ours["error"],
        "trkit_evals": ours["evals"],
        "trkit_time_s": ours["time_s"],
        "evals_ratio": ours["evals"] / t_evals["evals"],
        "time_ratio": ours["time_s"] / t_time["time_s"],
        "error_met": ours["error"] <= level,
        "trkit_params": ours["params"],
        "teneva_params_truncated": int(min(p["params_truncated"] for p in by["teneva"] if p["error"] <= level)),
    }
    verdict["met"] = verdict["error_met"] and verdict["evals_ratio"] <= 1 and verdict["time_ratio"] <= 1
    return table, verdict


def target_line(v: dict) -> str:
    return (
        f"{v['function']}: at teneva's best error {v['compared_at']:.1e}: trkit {v['trkit_error']:.1e} with "
        f"{v['evals_ratio']:.2f}x teneva's evaluations and {v['time_ratio']:.2f}x its time -> "
        f"{'met' if v['met'] else 'NOT met'}; parameters trkit {v['trkit_params']} vs teneva (truncated) "
        f"{int(v['teneva_params_truncated'])}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 functions, small grids")
    ap.add_argument("--out", default=None, help="JSON path (default results/cross[_quick].json)")
    ap.add_argument("--only", default=None, help="comma-separated function names")
    ap.add_argument("--seeds", type=int, default=9, help="seeds per configuration (medians over them)")
    ap.add_argument("--wide", action="store_true",
                    help="one rank past the grid on gauss_chain, ackley, abs_sin; 4 sweeps, 8 passes")  # fmt: skip
    args = ap.parse_args(argv)
    if args.out is None:
        name = "cross_quick" if args.quick else "cross_wide" if args.wide else "cross"
        args.out = str(Path(__file__).parent / "results" / f"{name}.json")
    import teneva

    try:
        tn_version = importlib.metadata.version("tntorch")
    except importlib.metadata.PackageNotFoundError:
        tn_version = None
    env = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "teneva": teneva.__version__,
        "tntorch": tn_version,
        "threads": 1,
        "torch_threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"],
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "quick": args.quick,
        "seeds": 1 if args.quick else args.seeds,
    }
    print(f"# threads: torch {torch.get_num_threads()}, BLAS 1 (threadpoolctl); CPU: {env['cpu']}")
    # one teneva (or tntorch) sweep is two passes, left-to-right and right-to-left
    sweeps, passes, seeds = (2, [2, 3, 4], 1) if args.quick else (3, [2, 3, 4, 5, 6], args.seeds)
    if args.wide:
        sweeps, passes = 4, [2, 3, 4, 5, 6, 7, 8]
    tables, verdicts, details = [], [], {}
    selected = [c for c in cases(args.quick, args.wide) if args.only is None or c.name in args.only.split(",")]
    with threadpool_limits(limits=1):
        for case in selected:
            print(f"# {case.name}: {case.formula}, shape {case.n}^{case.d}", flush=True)
            rng = np.random.default_rng(12345)
            idx = np.stack([rng.integers(0, case.n, N_HELDOUT) for _ in range(case.d)], 1)
            ref = case.f(idx)
            points = teneva_points(case, idx, ref, sweeps, seeds)
            points += trkit_points(case, idx, ref, passes, seeds)
            if tn_version is not None:
                points += tntorch_points(case, idx, ref, sweeps, seeds)
            points = medians(points)
            for p in points:
                print(f"  {p['method']:8s} {p['config']:30s} evals {p['evals']:9d} time {p['time_s']:7.3f}s "
                      f"error {p['error']:.2e} params {p['params']}")  # fmt: skip
            table, verdict = compare(case, points)
            tables += table
            verdicts.append(verdict)
            details[case.name] = {"formula": case.formula, "kind": case.kind, "points": points}
    print()
    head = f"{'function':12s} {'method':8s} {'config':30s} {'evals':>9s} {'time s':>8s} {'error':>9s} {'params':>8s}"
    print(head + "\n" + "-" * len(head))
    for r in tables:
        print(f"{r['function']:12s} {r['method']:8s} {r['config']:30s} {r['evals']:9d} {r['time_s']:8.3f} "
              f"{r['heldout_error']:9.2e} {r['params']:8d}")  # fmt: skip
    targets = [target_line(v) for v in verdicts]
    print("\n".join(targets))
    command = "python benchmarks/cross.py" + (" --quick" if args.quick else "") + (" --wide" if args.wide else "")
    command += f" --only {args.only}" if args.only else ""
    command += f" --seeds {args.seeds}" if args.seeds != 9 and not args.quick else ""
    data = {
        "title": "Cross approximation (tr_cross vs teneva, tntorch)",
        "command": command,
        "env": env,
        "comparison": tables,
        "verdicts": verdicts,
        "targets": targets,
        "notes": [
            "Every method is run on a grid of ranks and sweeps; the table shows, per function, teneva's "
            "cheapest configurations (fewest evaluations, least time) reaching its best held-out error, "
            "trkit's configuration with the fewest evaluations reaching it, and tntorch's.",
            f"Held-out error: relative, on {N_HELDOUT} random entries none of the methods saw. Errors "
            f"below {FLOOR:g} are float64 rounding and compared as equal.",
            f"Medians over {env['seeds']} seeds (random first pivots) per configuration.",
            "evals: distinct entries the function was asked for (teneva with its cache; tntorch has none). "
            "teneva params are after teneva.truncate at a quarter of its error.",
        ],
        "details": details,
    }
    write_json(args.out, data, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
