"""Peak memory of the ``trkit`` command line on a large input.

Each command runs in its own child process; its peak resident set size (``ru_maxrss``) minus the
peak of the same command on a tiny input (the imports: torch alone is ~0.7 GB resident) is the
memory the command needs for the data, reported as a multiple of the input file's size.
Target: ``decompose`` (svd with ``--rank``) peaks below 3.5x the input, ``reconstruct`` and
``decompose --method sampled`` stay near the size of one block, not the tensor. Writes a table to
stdout and JSON to benchmarks/results/cli_memory.json.

    .venv/bin/python benchmarks/cli_memory.py              # 256 MiB input
    .venv/bin/python benchmarks/cli_memory.py --mib 2048   # the 2 GB case
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import cpu_model, write_json  # noqa: E402

import trkit  # noqa: E402
import trkit.io  # noqa: E402  (not among trkit's lazy exports)

# Runs one command; reports ru_maxrss (all resident pages, file-backed ones of a memory-mapped
# input included) and the largest RssAnon seen by a 5 ms poller (memory the process allocated).
CHILD = """
import resource, sys, threading, time
peak = [0]
def poll():
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.005)
threading.Thread(target=poll, daemon=True).start()
from trkit.cli import main
rc = main(sys.argv[1:])
print("maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, peak[0], file=sys.stderr)
sys.exit(rc)
"""

COMMANDS = {
    "decompose svd --rank 3": ["decompose", "{x}", "--rank", "3", "--out", "{d}/r.safetensors"],
    "decompose svd --tol 1e-3": ["decompose", "{x}", "--tol", "1e-3", "--out", "{d}/r.safetensors"],
    "decompose als --rank 3": ["decompose", "{x}", "--method", "als", "--rank", "3", "--max-iter", "2"],
    "decompose sampled --rank 3": ["decompose", "{x}", "--method", "sampled", "--rank", "3", "--max-iter", "2"],
    "reconstruct": ["reconstruct", "{ring}", "--out", "{d}/y.npy"],
}


def peak_rss(argv: list[str]) -> tuple[int, int, float, str]:
    """Peak RSS and peak anonymous RSS in bytes, wall seconds and the error line of ``trkit ARGV``."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = res.stderr.strip().splitlines()
    rss = [[int(v) * 1024 for v in s.split()[1:]] for s in lines if s.startswith("maxrss")]
    problem = "" if res.returncode == 0 else ([s for s in lines if not s.startswith("maxrss")] or ["?"])[-1]
    total, anon = rss[-1] if rss else (-1, -1)
    return total, anon, wall, problem


def write_inputs(folder: Path, mib: int, dtype: torch.dtype) -> tuple[Path, Path]:
    """A tensor of ``mib`` MiB (an exact rank-3 ring) as .npy, and its ring."""
    n = int(round(mib * (1 << 20) / dtype.itemsize / 64 / 64 / 64))
    shape = (64, 64, 64, max(1, n))
    ring = trkit.TensorRing.random(shape, 3, seed=0, dtype=dtype)
    x = folder / "x.npy"
    trkit.io.save_dense(ring, x)
    trkit.save(ring, folder / "ring.safetensors")
    return x, folder / "ring.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="input size in MiB")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="input dtype")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cli_memory.json"))
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--only", nargs="*", default=None, help="command names to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        (d / "big").mkdir()
        (d / "tiny").mkdir()
        dtype = getattr(torch, args.dtype)
        big = write_inputs(d / "big", args.mib, dtype)
        tiny = write_inputs(d / "tiny", 1, dtype)
        size = big[0].stat().st_size
        rows = []
        for name, template in COMMANDS.items():
            if args.only and name not in args.only:
                continue
            base, base_anon, _, _ = peak_rss([a.format(x=tiny[0], ring=tiny[1], d=d / "tiny") for a in template])
            peak, anon, wall, problem = peak_rss([a.format(x=big[0], ring=big[1], d=d / "big") for a in template])
            rows.append(
                {
                    "command": name,
                    "input": args.dtype,
                    "input_mib": round(size / 2**20, 1),
                    "peak_rss_mib": round(peak / 2**20, 1),
                    "imports_rss_mib": round(base / 2**20, 1),
                    "data_peak_x_input": round((peak - base) / size, 2),
                    "data_peak_anon_x_input": round((anon - base_anon) / size, 2),
                    "wall_s": round(wall, 1),
                    "error": problem or None,
                }
            )
            r = rows[-1]
            print(
                f"{name:30s} peak {r['peak_rss_mib']:8.1f} MiB  imports {r['imports_rss_mib']:7.1f} MiB  "
                f"data {r['data_peak_x_input']:5.2f}x input (allocated {r['data_peak_anon_x_input']:5.2f}x)  "
                f"{r['wall_s']:6.1f} s  {problem}",
                flush=True,
            )
    svd = next((r for r in rows if r["command"] == "decompose svd --rank 3"), None)
    targets = []
    if svd is not None:
        met = "met" if svd["data_peak_x_input"] < 3.5 else "NOT met"
        targets.append(f"decompose svd --rank 3 below 3.5x the input: {svd['data_peak_x_input']}x -> {met}")
    write_json(
        args.out,
        {
            "memory": rows,
            "targets": targets,
            "notes": [
                "peak RSS (ru_maxrss) of one child process per command, minus the same command on a 1 MiB input",
                "data_peak_x_input counts the pages of the memory-mapped input that were read (page cache, "
                "reclaimable); data_peak_anon_x_input only memory the process allocated (peak RssAnon, 5 ms polling)",
                "input: .npy of shape (64, 64, 64, n), an exact rank-3 ring",
            ],
            "env": {
                "torch": torch.__version__,
                "numpy": np.__version__,
                "cpu": cpu_model(),
                "python": platform.python_version(),
                "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
            },
        },
    )


if __name__ == "__main__":
    main()
