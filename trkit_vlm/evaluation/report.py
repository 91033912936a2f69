"""Aggregate run folders into the base-to-novel tables of the papers: mean ± std over seeds.

Every ``metrics.json`` under a results folder is one run (dataset, method, shots, seed). Seeds of the
same (dataset, method, shots, class subset) are averaged: Base and Novel as mean ± sample std (ddof=1;
0 for one seed); HM as in CoOp/CoCoOp/MMA tables, the harmonic mean of the mean Base and mean Novel,
with the std of per-seed HMs beside it. The "Average" block averages the per-dataset means of the
datasets a method has results on (its count is shown). A run whose metrics hold NaN or infinite values
(a diverged run written before training checked its loss) is left out and named under the tables.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from trkit.errors import InputError
from trkit_vlm.evaluation.evaluate import harmonic_mean
from trkit_vlm.files import atomic_write_bytes, atomic_write_text

METRICS = ("base", "novel", "hm", "all")
# Values a run's metrics.json must hold as finite numbers (when present) to count in a table.
FINITE_KEYS = (*METRICS, "final_train_loss", "final_train_acc")


def _nonfinite_keys(m: dict[str, Any]) -> list[str]:
    return [k for k in FINITE_KEYS if isinstance(m.get(k), (int, float)) and not math.isfinite(m[k])]


def collect_results(results_dir: str | os.PathLike, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Every run's ``metrics.json`` under ``results_dir`` (sorted by path).

    A run with NaN or infinite values among :data:`FINITE_KEYS` is left out: described in ``skipped``
    when a list is given, with a warning otherwise.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder not found: {root}")
    rows = []
    for path in sorted(root.rglob("metrics.json")):
        try:
            m = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise InputError(f"{path}: not valid JSON") from None
        if not isinstance(m, dict) or not all(k in m for k in ("dataset", "method", "seed")):
            continue
        bad = _nonfinite_keys(m)
        if bad:
            note = f"{path}: non-finite {', '.join(f'{k}={m[k]}' for k in bad)} (the run diverged)"
            if skipped is None:
                warnings.warn(f"left out {note}", stacklevel=2)
            else:
                skipped.append(note)
            continue
        m["_path"] = str(path)
        rows.append(m)
    if not rows:
        left_out = f" ({len(skipped)} left out for non-finite values)" if skipped else ""
        raise InputError(f"no usable metrics.json files under {root}{left_out}")
    return rows


def _std(v: list[float]) -> float:
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


RUN_KEY = ("dataset", "method", "shots", "subsample")


def aggregate(rows: list[dict[str, Any]], by: tuple[str, ...] = RUN_KEY, sort: bool = True) -> list[dict[str, Any]]:
    """One row per group of runs (``by``: the keys that name a group; seeds are what varies inside one).

    Each row has the ``by`` keys, ``n_seeds``, ``seeds``, ``n_trainable``, ``<metric>_mean`` and
    ``<metric>_std`` (sample std over seeds) for base / novel / hm / all, ``hm_mean`` = HM of the mean
    Base and Novel, and ``train_time_s`` (mean per run) when the runs record it. Groups are sorted by
    their key, or kept in order of first appearance with ``sort=False``. A run without ``subsample``
    counts as "base".
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k, "base") if k == "subsample" else r.get(k) for k in by)].append(r)
    items = sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))) if sort else groups.items()
    out = []
    for key, rs in items:
        row: dict[str, Any] = {
            **dict(zip(by, key)),
            "n_seeds": len(rs),
            "seeds": sorted(r["seed"] for r in rs),
            "n_trainable": rs[0].get("n_trainable"),
        }
        for k in METRICS:
            vals = [float(r[k]) for r in rs if r.get(k) is not None]
            if vals:
                row[f"{k}_mean"], row[f"{k}_std"] = float(np.mean(vals)), _std(vals)
        if "base_mean" in row and "novel_mean" in row:
            row["hm_mean"] = harmonic_mean(row["base_mean"], row["novel_mean"])
        if all(r.get("train_time_s") is not None for r in rs):
            row["train_time_s"] = float(np.mean([r["train_time_s"] for r in rs]))
        out.append(row)
    return out


def average_over_datasets(agg: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, shots, subsample): mean of the per-dataset means (HM from the averaged B and N)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in agg:
        groups[(r["method"], r["shots"], r["subsample"])].append(r)
    out = []
    for (method, shots, subsample), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        row: dict[str, Any] = {
            "dataset": f"Average ({len(rs)})",
            "method": method,
            "shots": shots,
            "subsample": subsample,
            "n_seeds": min(r["n_seeds"] for r in rs),
            "n_trainable": rs[0].get("n_trainable"),
        }
        for k in ("base", "novel", "all"):
            vals = [r[f"{k}_mean"] for r in rs if f"{k}_mean" in r]
            if len(vals) == len(rs):
                row[f"{k}_mean"] = float(np.mean(vals))
        if "base_mean" in row and "novel_mean" in row:
            row["hm_mean"] = harmonic_mean(row["base_mean"], row["novel_mean"])
        out.append(row)
    return out


def _cell(row: dict, k: str, with_std: bool = True) -> str:
    if f"{k}_mean" not in row:
        return "–"
    if with_std and f"{k}_std" in row:
        return f"{row[f'{k}_mean']:.2f} ± {row[f'{k}_std']:.2f}"
    return f"{row[f'{k}_mean']:.2f}"


def markdown_tables(agg: list[dict[str, Any]]) -> str:
    """One Base / Novel / HM table per dataset (methods as rows), the average block first."""
    blocks = []
    avg = average_over_datasets(agg)
    by_ds: dict[str, list[dict]] = defaultdict(list)
    for r in avg + agg:
        by_ds[r["dataset"]].append(r)
    for ds, rs in by_ds.items():
        lines = [
            f"### {ds}",
            "",
            "| method | shots | seeds | Base | Novel | HM | All | trainable params |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rs:
            n_tr = f"{r['n_trainable']:,}" if isinstance(r.get("n_trainable"), int) else "–"
            lines.append(
                f"| {r['method']} | {r['shots']} | {r['n_seeds']} | {_cell(r, 'base')} | "
                f"{_cell(r, 'novel')} | {_cell(r, 'hm')} | {_cell(r, 'all')} | {n_tr} |"
            )
        blocks.append("\n".join(lines))
    note = (
        "Mean ± sample std over seeds. HM = 2·B·N/(B+N) of the mean Base and Novel (± std of per-seed HM). "
        "Average = mean of per-dataset means."
    )
    return "\n\n".join(blocks) + "\n\n" + note + "\n"


def csv_text(agg: list[dict[str, Any]]) -> str:
    """The aggregated rows (and the averages) as CSV."""
    rows = average_over_datasets(agg) + agg
    cols = ["dataset", "method", "shots", "subsample", "n_seeds", "n_trainable"]
    cols += [f"{k}_{s}" for k in METRICS for s in ("mean", "std")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: (f"{r[c]:.4f}" if isinstance(r.get(c), float) else r.get(c, "")) for c in cols})
    return buf.getvalue()


def plot_png(agg: list[dict[str, Any]]) -> bytes:
    """Grouped bars of Base, Novel and HM per dataset, one colour per method (error bars: seed std)."""
    import matplotlib  # imported when a chart is drawn: slow to import, and Agg must be chosen first

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = average_over_datasets(agg) + agg
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(f"{r['method']} ({r['shots']}-shot)" for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(max(8, 1.6 * len(datasets) * 3), 3.6), sharey=True)
    width = 0.8 / max(1, len(methods))
    for ax, k in zip(axes, ("base", "novel", "hm")):
        for j, meth in enumerate(methods):
            xs, ys, es = [], [], []
            for i, ds in enumerate(datasets):
                r = next((r for r in rows if r["dataset"] == ds and f"{r['method']} ({r['shots']}-shot)" == meth), None)
                if r is not None and f"{k}_mean" in r:
                    xs.append(i + (j - (len(methods) - 1) / 2) * width)
                    ys.append(r[f"{k}_mean"])
                    es.append(r.get(f"{k}_std", 0.0))
            ax.bar(xs, ys, width, yerr=es, label=meth, capsize=2)
        ax.set_title({"base": "Base", "novel": "Novel", "hm": "HM"}[k])
        ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("accuracy (%)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return figure_png(fig)


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (110 dpi), the figure closed: written atomically by the caller."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_report(
    results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, plot: bool = True
) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv`` (and ``results.png``) for ``results_dir``; returns the paths.

    Runs left out for non-finite values are listed at the end of ``results.md``."""
    skipped: list[str] = []
    agg = aggregate(collect_results(results_dir, skipped))
    out = Path(out_dir) if out_dir is not None else Path(results_dir)
    paths = {"markdown": out / "results.md", "csv": out / "results.csv"}
    text = markdown_tables(agg)
    if skipped:
        text += "\nLeft out (non-finite values):\n\n" + "".join(f"- {s}\n" for s in skipped)
    atomic_write_text(paths["markdown"], text)
    atomic_write_text(paths["csv"], csv_text(agg))
    if plot:
        paths["png"] = out / "results.png"
        atomic_write_bytes(paths["png"], plot_png(agg))
    return paths
