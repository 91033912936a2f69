"""TRLinear vs nn.Linear, and CrossLayerTR vs L separate dense adapters (CPU, one thread).

For each weight shape and token count: forward time (no grad), forward+backward time and peak
extra memory allocated during the call, for
  dense nn.Linear | TRLinear auto | TRLinear forced "contract" | TRLinear forced "dense" |
  tltorch FactorizedLinear (blocktt = TT-matrix; tltorch has no tensor-ring linear layer).
All variants of one case run interleaved, round after round (side by side under the same load);
each figure is the median over rounds of the per-call time. For batches <= 64 the floor is
measured too: the plan's GEMM calls alone (same shapes, no views, copies or Python) and one
``F.linear``. Then CrossLayerTR (L=8 layers, 16x197 tokens, MMA adapter shapes) vs 8 separate
nn.Linear: per-layer calls inside ``dense_weights_cache``, without it, ``forward_all`` on a list
(per-layer outputs) and on one stacked tensor (compared with one stacked ``baddbmm``).

    python benchmarks/layers.py [--quick]    # writes benchmarks/results/layers.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import cpu_model, peak_alloc_bytes, write_json  # noqa: E402

import trkit.nn as tn  # noqa: E402

torch.set_num_threads(1)
RESULTS = Path(__file__).resolve().parent / "results"


def side_by_side(fns: dict, rounds: int, sample_s: float) -> dict[str, float]:
    """Median per-call seconds of each function, all run in turn within every round."""
    reps = {}
    for name, fn in fns.items():
        fn()  # warm-up: plans, allocator
        t0 = time.perf_counter()
        fn()
        once = time.perf_counter() - t0
        reps[name] = max(1, min(2000, int(sample_s / max(once, 1e-7))))
    times: dict[str, list] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            times[name].append((time.perf_counter() - t0) / reps[name])
    return {name: statistics.median(v) for name, v in times.items()}


def fwd_fn(module, x):
    def fwd():
        with torch.no_grad():
            module(x)

    return fwd


def fwd_bwd_fn(module, x):
    # a dense upstream gradient, as a real loss gives (y.sum() would give a stride-0 one that
    # every matmul backward first materialises)
    with torch.no_grad():
        g = torch.randn_like(module(x))

    def fwd_bwd():
        module.zero_grad(set_to_none=True)
        module(x).backward(g)

    return fwd_bwd


def tltorch_layer(in_modes, out_modes, target_params):
    try:
        import tltorch
    except ImportError:
        return None
    if len(in_modes) != len(out_modes):
        return None  # blocktt needs as many in as out modes
    best = None
    for r in range(1, 64):  # TT-matrix rank with the parameter count closest to ours
        layer = tltorch.FactorizedLinear(in_modes, out_modes, factorization="blocktt", rank=r)
        n = tn.count_params(layer)
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (layer, n)
        if n > target_params:
            break
    return best[0]


def gemm_floor(layer: tn.TRLinear, x: torch.Tensor, rounds: int) -> dict:
    """The plan's GEMM calls alone (shapes recorded by the profiler, fresh contiguous operands)
    vs one F.linear: what eager PyTorch cannot go below for this contraction."""
    from torch.profiler import profile

    with torch.no_grad():
        layer(x)  # warm: plans compiled, inference factors built (not part of a steady-state call)
        with profile(record_shapes=True) as prof:
            layer(x)
    calls = []
    for e in prof.events():
        if e.name in ("aten::mm", "aten::addmm"):
            shp = [s for s in e.input_shapes if s]
            a, b = shp[-2], shp[-1]
            calls.append((torch.randn(a), torch.randn(b), torch.randn(b[-1]) if e.name == "aten::addmm" else None))
    w, bias = torch.randn(layer.out_features, layer.in_features), torch.randn(layer.out_features)

    def gemms():
        for a, b, c in calls:
            torch.mm(a, b) if c is None else torch.addmm(c, a, b)

    t = side_by_side({"gemms": gemms, "linear": lambda: F.linear(x, w, bias)}, rounds, 0.02)
    return {"floor_n_gemms": len(calls), "floor_gemms_ms": 1e3 * t["gemms"], "floor_f_linear_ms": 1e3 * t["linear"]}


def linear_suite(quick: bool):
    big = 1024 if quick else 4096
    cases = [(768, 768, 8, None, None), (768, 32, 4, None, 2), (big, big, 16, None, None)]
    rows = []
    for in_f, out_f, rank, in_modes, out_modes in cases:
        torch.manual_seed(0)
        dense = nn.Linear(in_f, out_f)
        tr = tn.TRLinear(in_f, out_f, rank, in_modes=in_modes, out_modes=out_modes)
        paths = {
            p: tn.TRLinear(in_f, out_f, rank, in_modes=in_modes, out_modes=out_modes, path=p)
            for p in ("contract", "dense")
        }
        for p in paths.values():
            p.load_state_dict(tr.state_dict())
        tl = tltorch_layer(tr.in_modes, tr.out_modes, tr.n_params)
        for tokens in [1, 64, 1024 if quick else 4096]:
            x = torch.randn(tokens, in_f)
            small = tokens <= 64
            rounds, sample = (15, 0.03) if small else (3, 0.2)
            mods = {"dense": dense, "tr_auto": tr, "tr_contract": paths["contract"], "tr_dense": paths["dense"]}
            if tl is not None:
                mods["tltorch_blocktt"] = tl
            row = {
                "shape": f"{in_f}x{out_f}",
                "tokens": tokens,
                "rank": rank,
                "modes": f"{tr.in_modes}->{tr.out_modes}",
                "tr_params": tr.n_params,
                "params_pct": round(100 * tr.n_params / tn.count_params(dense), 2),
                "auto_choice": tr.choose_path(tokens),
            }
            with torch.no_grad():  # the forward rows run without autograd, where "factored" may be chosen
                row["auto_choice_fwd"] = tr.choose_path(tokens)
            for kind, make in (("fwd", fwd_fn), ("fwdbwd", fwd_bwd_fn)):
                t = side_by_side({k: make(m, x) for k, m in mods.items()}, rounds, sample)
                for k, v in t.items():
                    row[f"{k}_{kind}_ms"] = 1e3 * v
            for kind in ("fwd", "fwdbwd"):
                best = min(row[f"tr_contract_{kind}_ms"], row[f"tr_dense_{kind}_ms"])
                row[f"auto_vs_best_{kind}"] = row[f"tr_auto_{kind}_ms"] / best
                choice = row["auto_choice_fwd"] if kind == "fwd" else row["auto_choice"]
                # "factored" has no forced twin: the chosen path is then the auto run itself
                row[f"choice_vs_best_{kind}"] = (
                    row[f"tr_{choice}_{kind}_ms"] if choice != "factored" else row[f"tr_auto_{kind}_ms"]
                ) / best
                row[f"tr_vs_dense_{kind}"] = row[f"tr_auto_{kind}_ms"] / row[f"dense_{kind}_ms"]
            for k in ("dense", "tr_auto"):
                row[f"{k}_fwdbwd_peak_mb"] = peak_alloc_bytes(fwd_bwd_fn(mods[k], x)) / 2**20
            if tl is not None:
                row["tltorch_params"] = tn.count_params(tl)
            if small and row["auto_choice_fwd"] in ("contract", "factored"):
                row.update(gemm_floor(tr, x, rounds))
            rows.append(row)
            print(
                f"{row['shape']:>10} {tokens:>5} {row['params_pct']:5.2f}% {row['auto_choice_fwd']:>8}/"
                f"{row['auto_choice']:<8} | fwd ms "
                f"lin {row['dense_fwd_ms']:.4f} tr {row['tr_auto_fwd_ms']:.4f} (x{row['tr_vs_dense_fwd']:.2f}) | "
                f"f+b ms lin {row['dense_fwdbwd_ms']:.4f} tr {row['tr_auto_fwdbwd_ms']:.4f} "
                f"(x{row['tr_vs_dense_fwdbwd']:.2f}) | auto/best {row['auto_vs_best_fwd']:.2f}/"
                f"{row['auto_vs_best_fwdbwd']:.2f}"
                + (
                    f" | floor: {row['floor_n_gemms']} GEMMs "
                    f"{row['floor_gemms_ms']:.4f} vs F.linear "
                    f"{row['floor_f_linear_ms']:.4f}"
                    if "floor_gemms_ms" in row
                    else ""
                ),
                flush=True,
            )
    return rows


def cross_layer_suite(quick: bool):
    L, tokens = 8, (4 * 197 if quick else 16 * 197)
    rows = []
    for d_in, d_out in [(768, 32), (32, 32), (32, 768)]:
        torch.manual_seed(0)
        adapters = nn.ModuleList(nn.Linear(d_in, d_out) for _ in range(L))
        w_stack = nn.Parameter(torch.stack([a.weight.detach().t() for a in adapters]))
        b_stack = nn.Parameter(torch.stack([a.bias.detach() for a in adapters]).unsqueeze(1))
        tr = tn.CrossLayerTR(d_in, d_out, L, 4)
        xs = torch.randn(L, tokens, d_in)
        x_list = list(xs.unbind(0))

        def tr_cached():
            with tn.dense_weights_cache(tr):
                return [tr(xs[k], k) for k in range(L)]

        variants = {  # name: (callable returning outputs, module whose grads to clear)
            "dense_adapters": (lambda: [adapters[k](xs[k]) for k in range(L)], adapters),
            "tr_cached": (tr_cached, tr),
            "tr_uncached": (lambda: [tr(xs[k], k) for k in range(L)], tr),
            "tr_forward_all_list": (lambda: tr.forward_all(x_list), tr),
            "dense_stacked_baddbmm": (lambda: [torch.baddbmm(b_stack, xs, w_stack)], None),
            "tr_forward_all_stacked": (lambda: [tr.forward_all(xs)], tr),
        }
        row = {
            "shape": f"{d_in}x{d_out}",
            "layers": L,
            "tokens": tokens,
            "ranks": tr.ranks,
            "tr_params": tr.n_params,
            "dense_params": tn.count_params(adapters),
            "cached_choice": _cached_choice(tr, tokens),
            "forward_all_choice": tr.choose_path(tokens, True),
        }
        for kind in ("fwd", "fwdbwd"):
            fns = {}
            for name, (fn, mod) in variants.items():
                if kind == "fwd":
                    fns[name] = lambda fn=fn: _no_grad(fn)
                else:
                    with torch.no_grad():
                        grads = [torch.randn_like(y) for y in fn()]  # dense upstream gradients
                    fns[name] = lambda fn=fn, mod=mod, grads=grads: _backward(fn, mod, grads, w_stack, b_stack)
            t = side_by_side(fns, 5, 0.3)
            for name, v in t.items():
                row[f"{name}_{kind}_ms"] = 1e3 * v
            for name in ("tr_cached", "tr_uncached", "tr_forward_all_list"):
                row[f"{name}_vs_dense_{kind}"] = row[f"{name}_{kind}_ms"] / row[f"dense_adapters_{kind}_ms"]
            row[f"stacked_vs_dense_stacked_{kind}"] = (
                row[f"tr_forward_all_stacked_{kind}_ms"] / row[f"dense_stacked_baddbmm_{kind}_ms"]
            )
        rows.append(row)
        print(
            f"{row['shape']:>8} L={L} tokens={tokens} | fwd ms dense {row['dense_adapters_fwd_ms']:.3f} "
            f"cached {row['tr_cached_fwd_ms']:.3f} (x{row['tr_cached_vs_dense_fwd']:.2f}) uncached "
            f"x{row['tr_uncached_vs_dense_fwd']:.2f} forward_all(list) x{row['tr_forward_all_list_vs_dense_fwd']:.2f} "
            f"stacked x{row['stacked_vs_dense_stacked_fwd']:.2f} | f+b cached x{row['tr_cached_vs_dense_fwdbwd']:.2f} "
            f"uncached x{row['tr_uncached_vs_dense_fwdbwd']:.2f} stacked x{row['stacked_vs_dense_stacked_fwdbwd']:.2f}",
            flush=True,
        )
    return rows


def _cached_choice(tr, tokens):
    with tn.dense_weights_cache(tr):
        return tr.choose_path(tokens)


def _no_grad(fn):
    with torch.no_grad():
        fn()


def _backward(fn, mod, grads, *params):
    if mod is not None:
        mod.zero_grad(set_to_none=True)
    for p in params:
        p.grad = None
    torch.autograd.backward(fn(), grads)


def allocation_cost(L: int, tokens: int, d: int) -> dict:
    """A fresh (L, T, d) float32 tensor written once vs L separate (T, d) ones: large blocks come
    straight from mmap, so every call pays the page faults of first touch."""
    t = side_by_side(
        {
            "stacked": lambda: torch.empty(L, tokens, d).fill_(1.0),
            "per_layer": lambda: [torch.empty(tokens, d).fill_(1.0) for _ in range(L)],
        },
        5,
        0.2,
    )
    return {k: 1e3 * v for k, v in t.items()}


def targets_and_notes(linear, cross, alloc) -> tuple[list, list]:
    targets = []
    worst = max(linear, key=lambda r: max(r["auto_vs_best_fwd"], r["auto_vs_best_fwdbwd"]))
    worst_c = max(max(r["choice_vs_best_fwd"], r["choice_vs_best_fwdbwd"]) for r in linear)
    v = max(worst["auto_vs_best_fwd"], worst["auto_vs_best_fwdbwd"])
    targets.append(
        f"auto path within 1.2x of the better forced path: {'met' if v <= 1.2 else 'missed'} "
        f"(worst auto/best {v:.2f} at {worst['shape']}@{worst['tokens']}; the chosen path run forced "
        f"vs the better one: worst {worst_c:.2f})"
    )
    for r in linear:
        if r["tokens"] <= 64 and r["params_pct"] <= 5:
            ok = r["tr_vs_dense_fwd"] < 1.0
            floor = (
                f"; floor: the plan's {r['floor_n_gemms']} GEMM calls alone take {r['floor_gemms_ms'] * 1e3:.1f} us "
                f"vs {r['floor_f_linear_ms'] * 1e3:.1f} us for one F.linear"
                if "floor_gemms_ms" in r
                else ""
            )
            targets.append(
                f"forward faster than dense at {r['shape']}@{r['tokens']} ({r['params_pct']}% params): "
                f"{'met' if ok else 'missed'} (TR/dense {r['tr_vs_dense_fwd']:.2f}, "
                f"{r['tr_auto_fwd_ms'] * 1e3:.1f} vs {r['dense_fwd_ms'] * 1e3:.1f} us{floor})"
            )
    for r in cross:
        for name, label in (
            ("tr_cached", "per-layer calls in dense_weights_cache"),
            ("tr_uncached", "per-layer calls, no cache"),
            ("tr_forward_all_list", "forward_all(list)"),
        ):
            v = r[f"{name}_vs_dense_fwd"]
            targets.append(
                f"CrossLayerTR {r['shape']} forward of all {r['layers']} layers, {label}: "
                f"{'met' if v <= 1.1 else 'missed'} ({v:.2f}x dense adapters; fwd+bwd "
                f"{r[f'{name}_vs_dense_fwdbwd']:.2f}x)"
            )
    notes = [
        "Ratios are side by side in one run (variants interleaved round by round); the machine is shared "
        "with other jobs, so absolute times drift between runs.",
        "TRLinear contracts through trkit.contract.compiled: a path chosen by modelled time (FLOPs + per-call overhead "
        "+ copies) and run as generated straight-line code of views and mm/bmm/addmm calls (no einsum per step).",
        "Forward rows run under no_grad, where TRLinear's automatic choice may take the factored path "
        "(W = B @ A cut between output and input cores; the two factors cached while the cores are unchanged, "
        "only when they hold fewer numbers than the dense weight): auto_choice_fwd; auto_choice is the choice "
        "with autograd (forward+backward rows). 'Better forced path' compares with contract and dense only.",
        "At 1 token the dense 768x32 layer is one ~4-7 us GEMV call; a ring needs at least two dependent GEMM "
        "calls (the factored path's two; four when contracting core by core), each a separate eager dispatch: "
        "the floor columns time the chosen plan's GEMM calls alone, with no views, copies or Python.",
        f"forward_all on one stacked (L, T, d_out) tensor allocates one large block: a fresh float32 "
        f"(8, T, 768) tensor written once took {alloc['stacked']:.1f} ms vs {alloc['per_layer']:.1f} ms for 8 "
        f"separate (T, 768) ones (large blocks are mmapped and page-faulted on every call), so it is compared "
        f"with a stacked dense baddbmm, not with per-layer adapters.",
        "Forward+backward runs backward with a fixed random upstream gradient of the output's shape (as a "
        "real loss gives); y.sum().backward() would hand every matmul backward a stride-0 gradient to "
        "materialise first, which is not what training sees.",
        "tltorch has no tensor-ring linear layer; blocktt (TT-matrix) with the closest parameter count is shown "
        "when in and out have as many modes.",
    ]
    return targets, notes


def summary_rows(linear, cross) -> tuple[list, list]:
    """Compact ratio tables (the full per-variant timings stay in ``linear``/``cross_layer``)."""
    lin = [
        {
            "shape": r["shape"],
            "tokens": r["tokens"],
            "params_pct": r["params_pct"],
            "choice (fwd / fwd+bwd)": f"{r['auto_choice_fwd']} / {r['auto_choice']}",
            "dense_fwd_us": round(r["dense_fwd_ms"] * 1e3, 1),
            "tr_fwd_us": round(r["tr_auto_fwd_ms"] * 1e3, 1),
            "tr_vs_dense_fwd": round(r["tr_vs_dense_fwd"], 2),
            "tr_vs_dense_fwdbwd": round(r["tr_vs_dense_fwdbwd"], 2),
            "auto_vs_best_fwd": round(r["auto_vs_best_fwd"], 2),
            "auto_vs_best_fwdbwd": round(r["auto_vs_best_fwdbwd"], 2),
            "floor_gemms_us": round(r["floor_gemms_ms"] * 1e3, 1) if "floor_gemms_ms" in r else None,
            "floor_f_linear_us": round(r["floor_f_linear_ms"] * 1e3, 1) if "floor_f_linear_ms" in r else None,
        }
        for r in linear
    ]
    cl = [
        {
            "shape": r["shape"],
            "dense_adapters_fwd_ms": round(r["dense_adapters_fwd_ms"], 3),
            **{
                f"{n}_vs_dense_{k}": round(r[f"{n}_vs_dense_{k}"], 2)
                for n in ("tr_cached", "tr_uncached", "tr_forward_all_list")
                for k in ("fwd", "fwdbwd")
            },
            "stacked_vs_dense_stacked_fwd": round(r["stacked_vs_dense_stacked_fwd"], 2),
            "stacked_vs_dense_stacked_fwdbwd": round(r["stacked_vs_dense_stacked_fwdbwd"], 2),
        }
        for r in cross
    ]
    return lin, cl


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (1024 instead of 4096, 4x197 tokens)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or RESULTS / ("layers_quick.json" if args.quick else "layers.json")
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "quick": args.quick,
        "python": platform.python_version(),
    }
    try:
        import tltorch

        env["tltorch"] = tltorch.__version__
    except ImportError:
        env["tltorch"] = None
    print(f"env: {env}")
    print("TRLinear vs nn.Linear (median ms over interleaved rounds; auto/best = auto / better forced path)")
    linear = linear_suite(args.quick)
    print("CrossLayerTR vs L separate dense adapters")
    cross = cross_layer_suite(args.quick)
    L, T = 8, (4 * 197 if args.quick else 16 * 197)
    alloc = allocation_cost(L, T, 768)
    targets, notes = targets_and_notes(linear, cross, alloc)
    lin_summary, cross_summary = summary_rows(linear, cross)
    result = {
        "title": "TRLinear and CrossLayerTR vs dense layers (CPU, 1 thread)",
        "command": "python benchmarks/layers.py" + (" --quick" if args.quick else ""),
        "env": env,
        "summary_linear": lin_summary,
        "summary_cross_layer": cross_summary,
        "targets": targets,
        "notes": notes,
        "linear": linear,
        "cross_layer": cross,
    }
    write_json(out, result, default=str)
    print("\n".join(["targets:", *targets]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
