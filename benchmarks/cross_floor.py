"""inv_sum at the float64 floor: how much of trkit vs teneva there is rounding noise.

``benchmarks/cross.py`` compares at held-out errors down to ``1e-14``. On ``inv_sum`` (rank 14, one
teneva sweep = two trkit passes, ~44k evaluations) both crosses end there, and the last pivots of
every bond sit in directions whose singular values are at rounding level. Three runs over the
benchmark's 9 seeds and held-out entries, with no random test columns (``oversample=0``), so that
both methods read the same fibres:

- ``teneva``: ``teneva.cross`` at rank 14, one sweep, with its cache (the benchmark's point);
- ``teneva, reversed sum``: the same on ``1 / (1 + x_10 + ... + x_1)``, values that differ from
  the benchmark's in the last bit;
- ``trkit, teneva's first pivots``: ``tr_cross`` (rank 14, 2 passes) from the right index sets of
  teneva's maxvol pre-iteration on the same random train;
- ``trkit, teneva's first pivots, QR basis``: the same with each fibre's column basis from QR
  instead of the SVD (the same column space, so the same pivots and cores in exact arithmetic).

    python benchmarks/cross_floor.py      # about a minute on one core
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import importlib  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trkit  # noqa: E402
from trkit.decompose import _tt_cross  # noqa: E402

torch.set_num_threads(1)

from _common import Counted, cpu_model, write_json  # noqa: E402
from cross import N_HELDOUT, rel_err  # noqa: E402

D, N, RANK, SEEDS = 10, 16, 14, 9
X = np.linspace(0, 1, N)


def inv_sum(i):
    return 1.0 / (1.0 + X[i].sum(1))


def inv_sum_reversed(i):
    return 1.0 / (1.0 + X[i][:, ::-1].sum(1))


def teneva_right_sets(y0) -> list:
    """The right index sets of teneva.cross's maxvol pre-iteration on the train ``y0`` (its own code path)."""
    import teneva

    tc = importlib.import_module("teneva.cross")
    y, grid = teneva.copy(y0), [np.arange(N).reshape(-1, 1)] * D
    left, right = [None] * (D + 1), [None] * (D + 1)
    r = np.ones((1, 1))
    for i in range(D):
        y[i], r, left[i + 1] = tc._iter(np.tensordot(r, y[i], 1), grid[i], left[i], tau0=1.05, k0=100, ltr=True)
    y[D - 1] = np.tensordot(y[D - 1], r, 1)
    r = np.ones((1, 1))
    for i in range(D - 1, -1, -1):
        y[i], r, right[i] = tc._iter(np.tensordot(y[i], r, 1), grid[i], right[i + 1], tau0=1.05, k0=100, ltr=False)
    return right


def qr_basis(mat):
    """singular_tail with the QR factor as the basis of a tall fibre (the tail as before)."""
    u, tail = _ORIGINAL_TAIL(mat)
    if mat.shape[1] <= mat.shape[0]:
        u = np.linalg.qr(mat)[0]
    return u, tail


_ORIGINAL_TAIL = _tt_cross.singular_tail
_ORIGINAL_RANDOM_RIGHT = _tt_cross.TTCross.random_right


def main() -> int:
    import teneva

    rng = np.random.default_rng(12345)  # cross.py's held-out entries
    idx = np.stack([rng.integers(0, N, N_HELDOUT) for _ in range(D)], 1)
    ref = inv_sum(idx)
    runs: dict[str, list] = {}
    for seed in range(SEEDS):
        y0 = teneva.rand([N] * D, RANK, seed=seed)
        for label, f in (("teneva", inv_sum), ("teneva, reversed sum", inv_sum_reversed)):
            counted = Counted(f)
            y = teneva.cross(counted, y0, nswp=1, dr_min=0, dr_max=0, cache={}, info={})
            runs.setdefault(label, []).append((counted.count, rel_err(teneva.get_many(y, idx), ref)))
        right = teneva_right_sets(y0)

        def from_teneva(self, size, right=right):
            for k in range(1, D):
                self.right[k] = np.asarray(right[k], dtype=np.int64)
            self.right_chosen = False  # as random_right: maxvol starts afresh in the second pass

        variants = (
            ("trkit, teneva's first pivots", _ORIGINAL_TAIL),
            ("trkit, teneva's first pivots, QR basis", qr_basis),
        )
        for label, tail in variants:
            _tt_cross.TTCross.random_right, _tt_cross.singular_tail = from_teneva, tail
            try:
                ring, info = trkit.tr_cross(inv_sum, shape=(N,) * D, rank=RANK, max_iter=2, stop_tol=0,
                                            oversample=0, seed=seed, return_info=True)  # fmt: skip
            finally:
                _tt_cross.TTCross.random_right, _tt_cross.singular_tail = _ORIGINAL_RANDOM_RIGHT, _ORIGINAL_TAIL
            runs.setdefault(label, []).append((info.n_evals, rel_err(ring.entries(torch.from_numpy(idx)).numpy(), ref)))
    rows = []
    print(f"{'run':40s} {'evals':>7s} {'median':>9s}  per seed")
    for label, points in runs.items():
        evals, errors = [p[0] for p in points], [p[1] for p in points]
        rows.append({"run": label, "evals_median": int(np.median(evals)), "error_median": float(np.median(errors)),
                     "errors": errors, "evals": evals})  # fmt: skip
        per_seed = " ".join(f"{e:.1e}" for e in errors)
        print(f"{label:40s} {int(np.median(evals)):7d} {np.median(errors):9.2e}  {per_seed}")
    out = Path(__file__).parent / "results" / "cross_floor.json"
    write_json(out, {"title": "inv_sum at the float64 floor (rounding noise in both crosses)",
                     "command": "python benchmarks/cross_floor.py",
                     "env": {"cpu": cpu_model(), "threads": 1, "teneva": teneva.__version__, "seeds": SEEDS},
                     "rows": rows})  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
