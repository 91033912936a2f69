"""The ``trkit`` command line: decompose tensors, inspect and reconstruct ring files.

    trkit decompose INPUT [--tol 1e-2 | --rank 8] [--method svd|als|adaptive|sampled]
                          [--reshape 8,8,8,8,8,8] [--key NAME] --out ring.safetensors [--plot curve.png]
    trkit info FILE
    trkit reconstruct FILE --out x.npy

Inputs: ``.npy`` (memory-mapped), ``.npz`` (``--key``), ``.pt``/``.pth``
(``torch.load(weights_only=True)``), ``.safetensors`` and images (grey or RGB, via PIL). Problems
with the input or an output path give one line on stderr and exit code 2, found before any long
computation; outputs are written atomically (see :mod:`trkit.files`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from trkit._cli_input import CLIError, available_memory, check_values, exact_in_float32, load_array
from trkit._version import __version__
from trkit.cli_runner import run_cli
from trkit.files import check_output_path, format_bytes

__all__ = ["main", "build_parser", "load_array", "CLIError"]

# Below this --tol, float32 arithmetic cannot be trusted to meet the target: --dtype auto uses float64.
FLOAT32_MIN_TOL = 1e-5


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise CLIError(f"{what} must be positive integers, got {text!r}")
    return vals


def _write(out: Path, write) -> None:
    """Run ``write()`` (an atomic write to ``out``); a failure becomes one error line."""
    try:
        write()
    except OSError as exc:
        reason = exc.strerror if exc.errno is None else os.strerror(exc.errno)
        raise CLIError(f"cannot write {out}: {reason or exc} (no partial file was left)") from None


@contextlib.contextmanager
def _out_of_memory_is_an_error(args, x):
    """Turn numpy's MemoryError and torch's allocator RuntimeError into one line with hints."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        text = str(exc)
        if isinstance(exc, RuntimeError) and not any(
            s in text for s in ("can't allocate memory", "not enough memory", "Cannot allocate memory")
        ):
            raise
        hints = ["--method sampled"] if args.method != "sampled" else []
        hints += [] if str(x.dtype).endswith("float32") else ["--dtype float32"]  # numpy or torch dtype
        hints += ["a smaller --rank" if args.rank else "a larger --tol"]
        raise CLIError(
            f"{args.input}: out of memory while decomposing {tuple(x.shape)} ({format_bytes(x.nbytes)}); "
            f"try {', '.join(hints[:-1]) + ' or ' if len(hints) > 1 else ''}{hints[-1]}"
        ) from None


def _decompose(x, method: str, tol, rank, args):
    import trkit

    if method == "svd":
        return trkit.tr_svd(x, rank=rank, tol=tol, max_rank=args.max_rank, return_info=True)
    if method == "adaptive":
        if tol is None:
            raise CLIError("--method adaptive needs --tol")
        return trkit.tr_als_adaptive(
            x, tol=tol, max_rank=args.max_rank, seed=args.seed, verbose=args.verbose, return_info=True
        )
    if rank is None:
        raise CLIError(f"--method {method} needs --rank")
    if method == "als":
        return trkit.tr_als(x, rank, max_iter=args.max_iter, seed=args.seed, verbose=args.verbose, return_info=True)
    return trkit.tr_als_sampled(
        x, rank, n_samples=args.samples, max_iter=args.max_iter, seed=args.seed, verbose=args.verbose, return_info=True
    )


def _plot(x, args, rank, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt

    from trkit.files import atomic_write

    points = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.method in ("svd", "adaptive") and rank is None:
            for t in np.geomspace(0.5, max(args.tol / 4, 1e-8), 8):
                ring, info = _decompose(x, args.method, float(t), None, args)
                points.append((ring.n_params, info.rel_error))
        else:
            top = max(rank) if isinstance(rank, list) else int(rank)
            for r in sorted({max(1, round(top * f)) for f in (0.25, 0.5, 0.75, 1.0, 1.25)}):
                ring, info = _decompose(x, args.method, None, r, args)
                points.append((ring.n_params, info.rel_error))
    points.sort()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog([p for p, _ in points], [e for _, e in points], "o-")
    ax.set_xlabel("parameters")
    ax.set_ylabel("relative error")
    ax.set_title(f"trkit {args.method}: {Path(args.input).name}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    _write(out, lambda: atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120)))
    plt.close(fig)
    print(f"plot: {out} ({len(points)} points)")


def _compute_dtype(arr: np.ndarray, args):
    """``--dtype``; ``auto``: float32 when the input is exactly float32 and the target allows it."""
    import torch

    if args.dtype != "auto":
        return getattr(torch, args.dtype)
    if exact_in_float32(arr.dtype) and (args.tol is None or args.tol >= FLOAT32_MIN_TOL):
        return torch.float32
    return torch.float64


def _as_tensor(arr: np.ndarray, dtype, args):
    """The input as the tensor the method gets, refusing up front what cannot fit in memory."""
    import torch

    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    if args.method == "sampled":
        return arr  # reads only the sampled entries (of a memory-mapped file: only those pages)
    nbytes = arr.size * np_dtype.itemsize
    # besides the data (a copy only if the dtype changes), the dense methods hold at least one more
    # array of its size: a working copy, or the reconstruction that measures the error
    need = nbytes * (1 if arr.dtype == np_dtype else 2)
    free = available_memory()
    if free is not None and need > free:
        raise CLIError(
            f"{args.input}: decomposing {arr.shape} as {np_dtype} needs at least {format_bytes(need)} of memory, "
            f"{format_bytes(free)} is available; try --method sampled (reads only sampled entries)"
            + (" or --dtype float32" if np_dtype == np.float64 else "")
        )
    return torch.from_numpy(np.asarray(arr).astype(np_dtype, copy=False))


def cmd_decompose(args) -> int:
    import torch

    import trkit

    if args.tol is None and args.rank is None:
        raise CLIError("give --tol or --rank")
    # every output is checked before the input is read: a wrong --out must not cost a decomposition
    out = plot = None
    if args.out:
        out = check_output_path(args.out, suffixes=(".safetensors",), inputs=[args.input], what="--out")
    if args.plot:
        plot = check_output_path(args.plot, suffixes=(".png",), inputs=[args.input], what="--plot")
    arr = load_array(args.input, args.key)
    if args.reshape:
        shape = _ints(args.reshape, "--reshape")
        if math.prod(shape) != arr.size:
            raise CLIError(
                f"--reshape {args.reshape} has {math.prod(shape)} entries but the input {arr.shape} has {arr.size}"
            )
        arr = arr.reshape(shape)
    if arr.ndim < 2:
        raise CLIError(f"input has shape {arr.shape}; need >= 2 modes (use --reshape)")
    dtype = _compute_dtype(arr, args)
    check_values(arr, args.input, float32=dtype == torch.float32)
    x = _as_tensor(arr, dtype, args)
    rank: int | list[int] | None = None
    if args.rank is not None:
        ranks = _ints(args.rank, "--rank")
        rank = ranks[0] if len(ranks) == 1 else ranks
    t0 = time.perf_counter()
    with _out_of_memory_is_an_error(args, x):
        ring, info = _decompose(x, args.method, args.tol, rank, args)
    ring = ring.to(dtype)
    elapsed = time.perf_counter() - t0
    print(f"input: {args.input} shape {tuple(x.shape)} ({math.prod(x.shape)} entries, {str(dtype)[6:]})")
    print(f"method: {args.method}  ranks: {list(ring.ranks)}")
    print(f"parameters: {ring.n_params}  compression: {math.prod(x.shape) / ring.n_params:.2f}x")
    label = "relative error" + (" (held-out estimate)" if args.method == "sampled" else "")
    print(f"{label}: {info.rel_error:.4e}  time: {elapsed:.3f} s")
    if out is not None:
        _write(out, lambda: trkit.save(ring, out))
        print(f"saved: {out}")
    if plot is not None:
        with _out_of_memory_is_an_error(args, x):
            _plot(x, args, rank, plot)
    return 0


def _load_ring(path: str):
    import trkit

    if Path(path).is_dir():
        raise CLIError(f"{path}: is a directory, not a ring file")
    try:
        return trkit.load(path)
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except ValueError as exc:
        raise CLIError(str(exc).splitlines()[0]) from None
    except OSError as exc:
        raise CLIError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _norm_text(ring) -> str:
    """The Frobenius norm, exact in magnitude however large: cores are scaled to max 1 first.

    ``norm(ring) = norm(ring with cores G_k / s_k) * prod(s_k)``; the product is summed in log10.
    """
    import torch

    import trkit

    wide = torch.complex128 if ring.dtype.is_complex else torch.float64
    cores = [c.detach().to(wide) for c in ring.cores]
    if not all(bool(torch.isfinite(c).all()) for c in cores):
        return "nan (the cores hold NaN or infinite values)"
    scales = [float(c.abs().max()) for c in cores]
    if min(scales) == 0.0:
        return f"{0.0:.6e}"
    inner = float(trkit.norm(trkit.TensorRing([c / s for c, s in zip(cores, scales)], validate=False)))
    if inner == 0.0:
        return f"{0.0:.6e}"
    log10 = math.log10(inner) + sum(math.log10(s) for s in scales)
    exponent = math.floor(log10)
    mantissa = 10 ** (log10 - exponent)
    if mantissa >= 9.9999995:  # rounds up to 10.000000
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:.6f}e{exponent:+03d}"


def cmd_info(args) -> int:
    ring = _load_ring(args.file)
    numel = math.prod(ring.shape)
    print(f"file: {args.file}")
    print(f"shape: {list(ring.shape)}  ranks: {list(ring.ranks)}  dtype: {str(ring.dtype).replace('torch.', '')}")
    print(f"parameters: {ring.n_params}  entries: {numel}  compression: {numel / ring.n_params:.2f}x")
    print(f"norm: {_norm_text(ring)}")
    return 0


def cmd_reconstruct(args) -> int:
    from trkit.io import dense_nbytes, save_dense

    out = check_output_path(args.out, suffixes=(".npy",), inputs=[args.file], what="--out")
    ring = _load_ring(args.file)
    size = dense_nbytes(ring)
    try:
        check_output_path(out, size=size + 4096, what="--out")  # 4096: room for the .npy header
    except ValueError as exc:
        raise CLIError(
            f"{exc}; the dense tensor {list(ring.shape)} is {format_bytes(size)}: read parts of it with the Python "
            f"API instead (trkit.load({args.file!r})[i] or .entries(index))"
        ) from None
    _write(out, lambda: save_dense(ring, out))
    print(f"wrote {out}: shape {tuple(ring.shape)} {str(ring.dtype).replace('torch.', '')} ({format_bytes(size)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trkit", description="Tensor-ring toolkit: decompose tensors, inspect and reconstruct ring files."
    )
    parser.add_argument("--version", action="version", version=f"trkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("decompose", help="decompose an array/image/weight file into a tensor ring")
    p.add_argument("input", help=".npy, .npz, .pt/.pth, .safetensors or an image")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tol", type=float, help="relative error target (svd, adaptive)")
    g.add_argument("--rank", help="rank, or one rank per mode comma-separated (svd, als, sampled)")
    p.add_argument("--method", choices=["svd", "als", "adaptive", "sampled"], default="svd")
    p.add_argument("--reshape", help="new shape before decomposing, e.g. 8,8,8,8,8,8")
    p.add_argument("--key", help="array name inside .npz/.pt/.safetensors files")
    p.add_argument("--out", help="where to save the ring (.safetensors)")
    p.add_argument("--plot", help="PNG of relative error vs parameters over a sweep of tol/ranks")
    p.add_argument("--max-rank", type=int, default=None, dest="max_rank")
    p.add_argument("--max-iter", type=int, default=100, dest="max_iter")
    p.add_argument("--samples", type=int, default=2000, help="fibres per update (sampled)")
    p.add_argument(
        "--dtype",
        choices=["auto", "float64", "float32"],
        default="auto",
        help="precision of the computation; auto: float32 for float32/float16/8- and 16-bit integer inputs "
        f"(unless --tol < {FLOAT32_MIN_TOL:g}), float64 otherwise",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="progress bars")
    p.set_defaults(func=cmd_decompose)
    p = sub.add_parser("info", help="print shape, ranks, parameters of a ring file")
    p.add_argument("file")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("reconstruct", help="write the dense tensor of a ring file to .npy")
    p.add_argument("file")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_reconstruct)
    return parser


# Optional packages a command may need, with the line that says how to get them.
OPTIONAL_PACKAGES = {
    "PIL": "this needs the optional package 'pillow': pip install pillow",
    "matplotlib": "this needs the optional package 'matplotlib': pip install matplotlib",
}


def main(argv: list[str] | None = None) -> int:
    """The ``trkit`` command; errors follow ``trkit.cli_runner`` (one line and exit 2 for bad input)."""
    return run_cli(build_parser(), argv, OPTIONAL_PACKAGES)


if __name__ == "__main__":
    sys.exit(main())
