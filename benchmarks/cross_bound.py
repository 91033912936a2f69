"""How accurate can any tensor train of a given rank be on the cross benchmark's hard functions?

Every unfolding ``X_k`` (modes ``< k`` against modes ``>= k``) of a train of ranks ``<= r`` has
rank ``<= r``, so by Eckart-Young the train's relative error is at least
``max_k tail_k(r)``, with ``tail_k(r)`` the norm of the singular values of ``X_k`` past the
``r``-th over ``||X||``; TT-SVD reaches ``sqrt(sum_k tail_k(r)^2)``. These are bounds on the
method, not on an implementation: no cross (trkit's, teneva's) beats the lower one at rank ``r``.

The unfoldings are far too large to store (``33^7``, ``16^8``, ``8^50`` entries), but each of these
functions depends on its left and right halves through a few numbers only (partial sums, or the
last index), so ``X_k = P_L F P_R^T`` with indicator matrices ``P`` of those *states* and ``F`` the
function of two states: the singular values of ``X_k`` are those of ``D_L^{1/2} F D_R^{1/2}``,
``D`` the number of index tuples per state. This is exact, and small (at most 969 x 4845).

    python benchmarks/cross_bound.py     # a few seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # trkit, for _common's atomic write
from _common import write_json  # noqa: E402


def states(values: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct per-coordinate feature sums of ``k`` coordinates, and how many index tuples give each.

    ``values``: one array per feature, ``n`` values each (the feature of every index of a mode).
    Returns ``sums`` (``S x features``) and ``counts`` (``S``).
    """
    table = {(0.0,) * len(values): (np.zeros(len(values)), 1.0)}
    per_index = np.stack(values, 1)
    for _ in range(k):
        nxt: dict = {}
        for s, c in table.values():
            for v in per_index:
                t = s + v
                key = tuple(np.round(t, 9))
                old = nxt.get(key)
                nxt[key] = (t, c + (old[1] if old else 0.0))
        table = nxt
    sums = np.array([s for s, _ in table.values()])
    counts = np.array([c for _, c in table.values()])
    return sums, counts


def bond_tails(values: list[np.ndarray], d: int, f_of_sums, ranks: list[int]) -> dict:
    """``tail_k(r)`` for every bond ``k`` and rank ``r`` of a function of the feature sums."""
    tails = {r: [] for r in ranks}
    for k in range(1, d):
        left, cl = states(values, k)
        right, cr = states(values, d - k)
        f = f_of_sums(left[:, None, :] + right[None, :, :])
        m = np.sqrt(cl)[:, None] * f * np.sqrt(cr)[None, :]
        s = np.linalg.svd(m, compute_uv=False)
        total = np.sqrt((s**2).sum())
        for r in ranks:
            tails[r].append(float(np.sqrt((s[r:] ** 2).sum()) / total))
    return tails


def gauss_chain_sigmas(d: int = 50, n: int = 8) -> np.ndarray:
    """Singular values (relative) of the middle unfolding of ``exp(-2 sum (x_k - x_(k+1))^2)``.

    ``X_k = A diag K B^T`` with ``A``, ``B`` of orthogonal columns (one per value of ``x_k``,
    ``x_(k+1)``): its singular values are those of ``diag(sqrt g_L) K diag(sqrt g_R)``.
    """
    x = np.linspace(0, 1, n)
    kern = np.exp(-2.0 * (x[:, None] - x[None, :]) ** 2)
    g = np.ones(n)
    for _ in range(d // 2 - 1):
        g = (g[:, None] * kern**2).sum(0)
    s = np.linalg.svd(np.sqrt(g)[:, None] * kern * np.sqrt(g)[None, :], compute_uv=False)
    return s / s[0]


def main() -> int:
    rows = []
    # Ackley on 33 points of [-32.768, 32.768]: a function of sum x^2 and sum cos(2 pi x)
    xa = np.linspace(-32.768, 32.768, 33)

    def ackley(s):
        return -20 * np.exp(-0.2 * np.sqrt(s[..., 0] / 7)) - np.exp(s[..., 1] / 7) + 20 + np.e

    # abs_sin on 16 points of [0, 1], d = 8: a function of sum x
    x16 = np.linspace(0, 1, 16)

    def abs_sin(s):
        return np.abs(np.sin(2 * s[..., 0])) + 0.1

    cases = [
        ("ackley", [xa**2, np.cos(2 * np.pi * xa)], 7, ackley, [12, 16, 20]),
        ("abs_sin", [x16], 8, abs_sin, [16, 25, 36]),
    ]
    for name, values, d, f, ranks in cases:
        tails = bond_tails(values, d, f, ranks)
        for r in ranks:
            t = np.array(tails[r])
            rows.append({"function": name, "rank": r, "lower_bound": float(t.max()),
                         "tt_svd": float(np.sqrt((t**2).sum())), "worst_bond": int(t.argmax()) + 1})  # fmt: skip
            print(f"{name:8s} rank {r:3d}: best train error >= {t.max():.2e}, TT-SVD {np.sqrt((t**2).sum()):.2e}")
    sig = gauss_chain_sigmas()
    print("gauss_chain middle unfolding, singular values / largest:", " ".join(f"{v:.1e}" for v in sig))
    data = {
        "title": "Cross benchmark: best error of any tensor train of a given rank",
        "command": "python benchmarks/cross_bound.py",
        "bounds": rows,
        "gauss_chain_middle_singular_values": [float(v) for v in sig],
        "notes": [
            "lower_bound: max over bonds of the unfolding's relative tail past the rank (Eckart-Young); "
            "no train of that rank, from any method, has a smaller relative error.",
            "tt_svd: the error TT-SVD reaches (sqrt of the sum of the squared tails).",
            "gauss_chain has train rank 8 exactly; its middle unfolding's singular values fall to the "
            "listed relative sizes, which is what a cross must resolve to reach float64 rounding.",
        ],
    }
    write_json(Path(__file__).parent / "results" / "cross_bound.json", data, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
