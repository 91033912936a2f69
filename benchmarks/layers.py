"""TRLinear vs nn.Linear, and CrossLayerTR vs L separate dense adapters (CPU, one thread).

For each weight shape and token count: forward time (no grad), forward+backward time and peak
extra memory allocated during the call, for
  dense nn.Linear | TRLinear auto | TRLinear forced "contract" | TRLinear forced "dense" |
  tltorch FactorizedLinear (blocktt = TT-matrix; tltorch has no tensor-ring linear layer),
all measured side by side in one run. Then CrossLayerTR (L=8 layers, 16x197 tokens, MMA adapter
shapes) vs 8 separate nn.Linear: sequential calls inside ``dense_weights_cache``, without it, and
``forward_all``.

    python benchmarks/layers.py [--quick]    # writes benchmarks/results/layers.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trkit.nn as tn  # noqa: E402

torch.set_num_threads(1)
RESULTS = Path(__file__).resolve().parent / "results" / "layers.json"




from _common import cpu_model, peak_alloc_bytes  # noqa: E402

def timeit(fn, min_time: float, max_reps: int = 200) -> float:
    fn()  # warm-up (plans, allocator)
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if times[-1] > 2.0 and len(times) >= 1:
            break
    return statistics.median(times)


def measure(module, x, min_time):
    def fwd():
        with torch.no_grad():
            module(x)

    def fwd_bwd():
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()

    return {"fwd_ms": 1e3 * timeit(fwd, min_time), "fwdbwd_ms": 1e3 * timeit(fwd_bwd, min_time),
            "fwd_peak_mb": peak_alloc_bytes(fwd) / 2**20, "fwdbwd_peak_mb": peak_alloc_bytes(fwd_bwd) / 2**20}


def tltorch_layer(in_f, out_f, in_modes, out_modes, target_params):
    try:
        import tltorch
    except ImportError:
        return None, "tltorch not installed"
    if len(in_modes) != len(out_modes):
        return None, "blocktt needs as many in as out modes"
    best = None
    for r in range(1, 64):  # TT-matrix rank with the parameter count closest to ours
        layer = tltorch.FactorizedLinear(in_modes, out_modes, factorization="blocktt", rank=r)
        n = tn.count_params(layer)
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (layer, n)
        if n > target_params:
            break
    return best[0], None


def linear_suite(quick: bool, min_time: float):
    big = 1024 if quick else 4096
    cases = [(768, 768, 8, None, None), (768, 32, 4, None, 2), (big, big, 16, None, None)]
    tokens_list = [1, 64, 1024 if quick else 4096]
    rows = []
    for in_f, out_f, rank, in_modes, out_modes in cases:
        torch.manual_seed(0)
        dense = nn.Linear(in_f, out_f)
        tr = tn.TRLinear(in_f, out_f, rank, in_modes=in_modes, out_modes=out_modes)
        tl, tl_note = tltorch_layer(in_f, out_f, tr.in_modes, tr.out_modes, tr.n_params)
        for tokens in tokens_list:
            x = torch.randn(tokens, in_f)
            row = {"shape": f"{in_f}x{out_f}", "tokens": tokens, "rank": rank, "in_modes": tr.in_modes,
                   "out_modes": tr.out_modes, "tr_params": tr.n_params, "dense_params": tn.count_params(dense),
                   "params_pct": 100 * tr.n_params / tn.count_params(dense), "auto_choice": tr.choose_path(tokens)}
            row["dense"] = measure(dense, x, min_time)
            for path in ("auto", "contract", "dense"):
                tr.path = path
                row[f"tr_{path}"] = measure(tr, x, min_time)
            tr.path = "auto"
            if tl is not None:
                row["tltorch_blocktt"] = measure(tl, x, min_time)
                row["tltorch_params"] = tn.count_params(tl)
            else:
                row["tltorch_note"] = tl_note
            for k in ("fwd_ms", "fwdbwd_ms"):
                better = min(row["tr_contract"][k], row["tr_dense"][k])
                row[f"auto_vs_best_{k}"] = row["tr_auto"][k] / better
                # noise-free view of the same question: the forced run of the chosen path vs the better one
                row[f"choice_vs_best_{k}"] = row[f"tr_{row['auto_choice']}"][k] / better
                row[f"auto_vs_nnlinear_{k}"] = row["tr_auto"][k] / row["dense"][k]
            rows.append(row)
            print_linear_row(row)
    return rows


def print_linear_row(r):
    tl = r.get("tltorch_blocktt")
    print(f"{r['shape']:>10} {r['tokens']:>6} {r['params_pct']:6.2f}% {r['auto_choice']:>8} | "
          f"fwd ms: lin {r['dense']['fwd_ms']:9.3f} auto {r['tr_auto']['fwd_ms']:9.3f} "
          f"con {r['tr_contract']['fwd_ms']:9.3f} den {r['tr_dense']['fwd_ms']:9.3f} "
          f"tlt {tl['fwd_ms'] if tl else float('nan'):9.3f} | "
          f"f+b ms: lin {r['dense']['fwdbwd_ms']:9.3f} auto {r['tr_auto']['fwdbwd_ms']:9.3f} "
          f"con {r['tr_contract']['fwdbwd_ms']:9.3f} den {r['tr_dense']['fwdbwd_ms']:9.3f} "
          f"tlt {tl['fwdbwd_ms'] if tl else float('nan'):9.3f} | "
          f"auto/best {r['auto_vs_best_fwd_ms']:.2f}/{r['auto_vs_best_fwdbwd_ms']:.2f} "
          f"choice/best {r['choice_vs_best_fwd_ms']:.2f}/{r['choice_vs_best_fwdbwd_ms']:.2f} "
          f"auto/lin {r['auto_vs_nnlinear_fwd_ms']:.2f} | peak MB f+b lin {r['dense']['fwdbwd_peak_mb']:.2f} "
          f"auto {r['tr_auto']['fwdbwd_peak_mb']:.2f}", flush=True)


def cross_layer_suite(quick: bool, min_time: float):
    L, tokens = 8, (4 * 197 if quick else 16 * 197)
    rows = []
    for d_in, d_out in [(768, 32), (32, 32), (32, 768)]:
        torch.manual_seed(0)
        adapters = nn.ModuleList(nn.Linear(d_in, d_out) for _ in range(L))
        tr = tn.CrossLayerTR(d_in, d_out, L, 4)
        xs = torch.randn(L, tokens, d_in)

        def dense_all():
            return [adapters[k](xs[k]) for k in range(L)]

        def tr_cached():
            with tn.dense_weights_cache(tr):
                return [tr(xs[k], k) for k in range(L)]

        def tr_plain():
            return [tr(xs[k], k) for k in range(L)]

        def tr_stacked():
            return [tr.forward_all(xs)]

        row = {"shape": f"{d_in}x{d_out}", "layers": L, "tokens": tokens, "ranks": tr.ranks,
               "tr_params": tr.n_params, "dense_params": tn.count_params(adapters)}
        for name, fn, mod in [("dense_adapters", dense_all, adapters), ("tr_cached", tr_cached, tr),
                              ("tr_uncached", tr_plain, tr), ("tr_forward_all", tr_stacked, tr)]:
            def fwd(fn=fn):
                with torch.no_grad():
                    fn()

            def fwd_bwd(fn=fn, mod=mod):
                mod.zero_grad(set_to_none=True)
                sum(y.sum() for y in fn()).backward()

            row[name] = {"fwd_ms": 1e3 * timeit(fwd, min_time), "fwdbwd_ms": 1e3 * timeit(fwd_bwd, min_time)}
        for name in ("tr_cached", "tr_uncached", "tr_forward_all"):
            for k in ("fwd_ms", "fwdbwd_ms"):
                row[f"{name}_vs_dense_{k}"] = row[name][k] / row["dense_adapters"][k]
        rows.append(row)
        print(f"{row['shape']:>8} L={L} tokens={tokens} params {row['tr_params']}/{row['dense_params']} | fwd ms: "
              f"dense {row['dense_adapters']['fwd_ms']:.3f} cached {row['tr_cached']['fwd_ms']:.3f} "
              f"uncached {row['tr_uncached']['fwd_ms']:.3f} forward_all {row['tr_forward_all']['fwd_ms']:.3f} | "
              f"f+b ms: dense {row['dense_adapters']['fwdbwd_ms']:.3f} cached {row['tr_cached']['fwdbwd_ms']:.3f} "
              f"uncached {row['tr_uncached']['fwdbwd_ms']:.3f} forward_all {row['tr_forward_all']['fwdbwd_ms']:.3f} | "
              f"ratio cached/dense {row['tr_cached_vs_dense_fwd_ms']:.2f} (f+b {row['tr_cached_vs_dense_fwdbwd_ms']:.2f})",
              flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (1024 instead of 4096, 4x197 tokens)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    min_time = 0.2 if args.quick else 0.5
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "quick": args.quick, "python": platform.python_version()}
    try:
        import tltorch
        env["tltorch"] = tltorch.__version__
    except ImportError:
        env["tltorch"] = None
    print(f"env: {env}")
    print("TRLinear vs nn.Linear (median ms; auto/best = auto path time / better of the two forced paths)")
    linear = linear_suite(args.quick, min_time)
    print("CrossLayerTR vs L separate dense adapters")
    cross = cross_layer_suite(args.quick, min_time)
    result = {"env": env, "linear": linear, "cross_layer": cross,
              "targets": {
                  "auto_vs_best_max": max(max(r["auto_vs_best_fwd_ms"], r["auto_vs_best_fwdbwd_ms"]) for r in linear),
                  "choice_vs_best_max": max(max(r["choice_vs_best_fwd_ms"], r["choice_vs_best_fwdbwd_ms"])
                                            for r in linear),
                  "small_batch_fwd_faster_than_dense": {
                      f"{r['shape']}@{r['tokens']}": r["auto_vs_nnlinear_fwd_ms"] < 1.0
                      for r in linear if r["tokens"] <= 64 and r["params_pct"] <= 5},
                  "cross_layer_cached_vs_dense_fwd": {r["shape"]: r["tr_cached_vs_dense_fwd_ms"] for r in cross},
              }}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(f.name, args.out)
    print(f"targets: {json.dumps(result['targets'], indent=1)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
