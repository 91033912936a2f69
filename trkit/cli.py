"""The ``trkit`` command line: decompose tensors, inspect and reconstruct ring files.

    trkit decompose INPUT [--tol 1e-2 | --rank 8] [--method svd|als|adaptive|sampled]
                          [--reshape 8,8,8,8,8,8] [--key NAME] --out ring.safetensors [--plot curve.png]
    trkit info FILE
    trkit reconstruct FILE --out x.npy

Inputs: ``.npy``, ``.npz`` (``--key``), ``.pt``/``.pth`` (``torch.load(weights_only=True)``),
``.safetensors`` and images (grey or RGB, via PIL). Problems with the input give one line on
stderr and exit code 2; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from trkit._version import __version__
from trkit.cli_runner import run_cli
from trkit.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class CLIError(InputError):
    """A user-facing problem: printed as one line, exit code 2."""


def _pick(mapping: dict, key: str | None, path: Path):
    if key is not None:
        if key not in mapping:
            raise CLIError(f"{path}: no array named {key!r} (has: {', '.join(sorted(mapping)) or 'none'})")
        return mapping[key]
    if len(mapping) != 1:
        raise CLIError(f"{path} holds {len(mapping)} arrays ({', '.join(sorted(mapping))}); choose one with --key")
    return next(iter(mapping.values()))


def load_array(path: str, key: str | None = None) -> np.ndarray:
    """Read an array from ``.npy/.npz/.pt/.pth/.safetensors`` or an image file (float64)."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{p}: no such file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                arr = _pick({k: z[k] for k in z.files}, key, p)
        elif suffix in (".pt", ".pth"):
            import torch

            obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = _pick({str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}, key, p)
            if not isinstance(obj, torch.Tensor):
                raise CLIError(f"{p}: expected a tensor or a dict of tensors, got {type(obj).__name__}")
            arr = obj.detach().to(dtype=torch.float64).numpy()
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            arr = _pick(load_file(str(p)), key, p)
        elif suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(p) as img:
                img = img.convert("L") if img.mode in ("L", "I", "I;16", "F", "1", "LA") else img.convert("RGB")
                arr = np.asarray(img)
        else:
            raise CLIError(f"{p}: unsupported file type {suffix!r} (use .npy, .npz, .pt, .safetensors or an image)")
    except (CLIError, ModuleNotFoundError):
        raise
    except Exception as exc:  # corrupt/truncated files raise many different types
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise CLIError(f"{p}: cannot read file ({type(exc).__name__}: {detail})") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiub":
        raise CLIError(f"{p}: array has dtype {arr.dtype}; need numbers")
    return arr.astype(np.float64, copy=False)


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise CLIError(f"{what} must be positive integers, got {text!r}")
    return vals


def _atomic_write(path: Path, write) -> None:
    if not path.parent.is_dir():
        raise CLIError(f"{path}: directory {path.parent} does not exist")
    from trkit.io import atomic_write

    atomic_write(path, write)


def _decompose(x, method: str, tol, rank, args):
    import trkit

    common = dict(return_info=True)
    if method == "svd":
        return trkit.tr_svd(x, rank=rank, tol=tol, max_rank=args.max_rank, **common)
    if method == "adaptive":
        if tol is None:
            raise CLIError("--method adaptive needs --tol")
        return trkit.tr_als_adaptive(x, tol=tol, max_rank=args.max_rank, seed=args.seed, verbose=args.verbose, **common)
    if rank is None:
        raise CLIError(f"--method {method} needs --rank")
    if method == "als":
        return trkit.tr_als(x, rank, max_iter=args.max_iter, seed=args.seed, verbose=args.verbose, **common)
    return trkit.tr_als_sampled(
        x, rank, n_samples=args.samples, max_iter=args.max_iter, seed=args.seed, verbose=args.verbose, **common
    )


def _plot(x, args, rank, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt

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
    _atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    print(f"plot: {out} ({len(points)} points)")


def cmd_decompose(args) -> int:
    import torch

    import trkit

    if args.tol is None and args.rank is None:
        raise CLIError("give --tol or --rank")
    arr = load_array(args.input, args.key)
    if args.reshape:
        shape = _ints(args.reshape, "--reshape")
        if int(np.prod(shape)) != arr.size:
            raise CLIError(
                f"--reshape {args.reshape} has {int(np.prod(shape))} entries but the input {arr.shape} has {arr.size}"
            )
        arr = arr.reshape(shape)
    if arr.ndim < 2:
        raise CLIError(f"input has shape {arr.shape}; need >= 2 modes (use --reshape)")
    if not np.isfinite(arr).all():
        raise CLIError(f"{args.input}: contains NaN or Inf values")
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(getattr(torch, args.dtype))
    rank = None
    if args.rank is not None:
        rank = _ints(args.rank, "--rank")
        rank = rank[0] if len(rank) == 1 else rank
    t0 = time.perf_counter()
    ring, info = _decompose(x, args.method, args.tol, rank, args)
    elapsed = time.perf_counter() - t0
    print(f"input: {args.input} shape {tuple(x.shape)} ({x.numel()} entries)")
    print(f"method: {args.method}  ranks: {list(ring.ranks)}")
    print(f"parameters: {ring.n_params}  compression: {x.numel() / ring.n_params:.2f}x")
    label = "relative error" + (" (held-out estimate)" if args.method == "sampled" else "")
    print(f"{label}: {info.rel_error:.4e}  time: {elapsed:.3f} s")
    if args.out:
        out = Path(args.out)
        if not out.parent.is_dir():
            raise CLIError(f"{out}: directory {out.parent} does not exist")
        trkit.save(ring, out)
        print(f"saved: {out}")
    if args.plot:
        _plot(x, args, rank, Path(args.plot))
    return 0


def _load_ring(path: str):
    import trkit

    try:
        return trkit.load(path)
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except ValueError as exc:
        raise CLIError(str(exc).splitlines()[0]) from None


def cmd_info(args) -> int:
    import trkit

    ring = _load_ring(args.file)
    numel = int(np.prod(ring.shape, dtype=np.float64))
    print(f"file: {args.file}")
    print(f"shape: {list(ring.shape)}  ranks: {list(ring.ranks)}  dtype: {str(ring.dtype).replace('torch.', '')}")
    print(f"parameters: {ring.n_params}  entries: {numel}  compression: {numel / ring.n_params:.2f}x")
    print(f"norm: {float(trkit.norm(ring)):.6e}")
    return 0


def cmd_reconstruct(args) -> int:
    ring = _load_ring(args.file)
    out = Path(args.out)
    if out.suffix.lower() != ".npy":
        raise CLIError(f"{out}: reconstruct writes .npy files")
    dense = ring.to_numpy()

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, dense)

    _atomic_write(out, write)
    print(f"wrote {out}: shape {dense.shape} {dense.dtype}")
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
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
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
