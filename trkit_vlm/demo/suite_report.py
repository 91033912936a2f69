"""The statistics, tables and forest plot of a benchmark suite's runs.

Per protocol, task and method: means over seeds, and the paired difference to the reference method
(seed by seed, on the same draws and images) with its t confidence interval. "Overall" averages a
method's score over the protocol's tasks seed by seed (transfer protocols: over the target tasks), so it
is paired too. Base-to-novel compares HM; transfer protocols compare all-class accuracy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trkit.errors import InputError
from trkit_vlm.demo.suite import BASE_TO_NOVEL
from trkit_vlm.evaluation.paired import paired_difference, per_seed_mean
from trkit_vlm.evaluation.report import figure_png

__all__ = ["summarize", "markdown_tables", "forest_plot_png", "OVERALL"]

OVERALL = "overall"


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def _check_paired(rows: list[dict[str, Any]]) -> None:
    """Every method of a (protocol, task, seed) was scored on the same images and trained on the same draws."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["protocol"], r["task"], r["seed"]), []).append(r)
    for key, rs in groups.items():
        if len({r["test_digest"] for r in rs}) > 1:
            raise InputError(f"runs of {key} were scored on different images: not paired")
        shots = {(r.get("source"), r["shots_digest"]) for r in rs if r.get("shots_digest")}
        if len(shots) > 1:
            raise InputError(f"runs of {key} trained on different few-shot draws: not paired")


def summarize(runs: list[dict[str, Any]], reference: str, confidence: float = 0.95) -> dict[str, Any]:
    """``{protocol: {"metric", "tasks", "methods", "cells": {task: {method: stats}}}}``.

    ``stats``: ``n`` seeds, means of base / novel / hm / all, the metric's sample std, trainable parameters,
    steps, mean train time, and ``diff``: the paired difference to ``reference`` (see ``paired_difference``).
    """
    _check_paired(runs)
    out: dict[str, Any] = {}
    for protocol in _ordered(r["protocol"] for r in runs):
        rows = [r for r in runs if r["protocol"] == protocol]
        metric = "hm" if protocol == BASE_TO_NOVEL else "all"
        tasks = _ordered(r["task"] for r in rows)
        methods = _ordered(r["method"] for r in rows)
        sources = {r["source"] for r in rows}
        value = {(r["method"], r["task"], r["seed"]): r for r in rows}
        cells: dict[str, dict[str, Any]] = {}
        overall_tasks = tasks if protocol == BASE_TO_NOVEL else [t for t in tasks if t not in sources]
        for task in [*tasks, OVERALL]:
            cells[task] = {}
            for m in methods:
                if task == OVERALL:
                    per = {(t, s): value[(m, t, s)][metric] for (mm, t, s) in value if mm == m and t in overall_tasks}
                    if not per:
                        continue
                    scores = per_seed_mean(per)
                    ref = per_seed_mean(
                        {(t, s): value[(reference, t, s)][metric] for (t, s) in per if (reference, t, s) in value}
                    ) if reference in methods else {}  # fmt: skip
                    rs = [value[(m, overall_tasks[0], s)] for s in scores]
                else:
                    rs = [r for (mm, t, _), r in value.items() if mm == m and t == task]
                    if not rs:
                        continue
                    scores = {r["seed"]: r[metric] for r in rs}
                    ref = {s: value[(reference, task, s)][metric] for s in scores if (reference, task, s) in value}
                st: dict[str, Any] = {"n": len(scores), metric: float(np.mean(list(scores.values())))}
                st[f"{metric}_std"] = float(np.std(list(scores.values()), ddof=1)) if len(scores) > 1 else 0.0
                if task != OVERALL:
                    for k in ("base", "novel", "all", "hm"):
                        vals = [r[k] for r in rs if r.get(k) is not None]
                        if vals:
                            st[k] = float(np.mean(vals))
                st["params"] = rs[0]["n_trainable"]
                st["steps"] = rs[0]["steps"]
                st["train_time_s"] = float(np.mean([r["train_time_s"] for r in rs]))
                if m != reference and ref and set(ref) == set(scores):
                    seeds = sorted(scores)
                    st["diff"] = paired_difference(
                        [scores[s] for s in seeds], [ref[s] for s in seeds], confidence=confidence
                    )
                cells[task][m] = st
        out[protocol] = {"metric": metric, "tasks": tasks, "overall_over": overall_tasks, "methods": methods,
                         "cells": cells, "reference": reference, "confidence": confidence}  # fmt: skip
    return out


def _ci(d: dict[str, float] | None) -> str:
    if not d or not np.isfinite(d["half_width"]):
        return "–"
    return f"{d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"


def markdown_tables(summary: dict[str, Any]) -> str:
    """Per protocol: one table of means and paired differences (95% CI) per task and overall."""
    parts = []
    for protocol, p in summary.items():
        metric, ref = p["metric"].upper() if p["metric"] == "hm" else "all-class acc.", p["reference"]
        tasks = [*p["tasks"], OVERALL]
        head = (
            ["method", "params", "steps"]
            + [f"{t}: {metric}" for t in tasks]
            + [f"{t}: Δ vs {ref} [95% CI]" for t in tasks]
        )
        lines = [f"### {protocol}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in p["methods"]:
            c = p["cells"]
            first = next(c[t][m] for t in tasks if m in c[t])
            row = [m, f"{first['params']:,}", str(first["steps"])]
            row += [f"{c[t][m][p['metric']]:.2f}" if m in c[t] else "–" for t in tasks]
            row += ["(reference)" if m == ref else _ci(c[t].get(m, {}).get("diff")) for t in tasks]
            lines.append("| " + " | ".join(row) + " |")
        n = max((c["n"] for t in tasks for c in p["cells"][t].values()), default=0)
        where = "over the target tasks" if protocol != BASE_TO_NOVEL else "over the tasks"
        lines.append("")
        lines.append(
            f"Means over {n} paired seeds; Δ = seed-by-seed difference to {ref} on the same few-shot draws and "
            f"scored images, mean with its {round(100 * p['confidence'])}% t interval. Overall: per seed, the "
            f"mean {where} ({', '.join(p['overall_over'])})."
        )
        if protocol == BASE_TO_NOVEL:
            lines += ["", "Base / novel accuracy (%), mean over seeds:", ""]
            lines.append("| method | " + " | ".join(f"{t}: base / novel" for t in p["tasks"]) + " |")
            lines.append("|---|" + "---|" * len(p["tasks"]))
            for m in p["methods"]:
                cells = [p["cells"][t].get(m) for t in p["tasks"]]
                lines.append(
                    f"| {m} | " + " | ".join(f"{c['base']:.1f} / {c['novel']:.1f}" if c else "–" for c in cells) + " |"
                )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def forest_plot_png(summary: dict[str, Any], title: str = "") -> bytes:
    """Paired difference to the reference with its CI, per method (rows) and task (markers), one panel per protocol."""
    import matplotlib  # a plotting dependency, loaded only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(summary)
    methods = _ordered(m for p in summary.values() for m in p["methods"] if m != p["reference"])
    fig, axes = plt.subplots(
        1, len(protocols), figsize=(5.2 * len(protocols), 0.55 * len(methods) + 1.6), squeeze=False
    )
    for ax, protocol in zip(axes[0], protocols):
        p = summary[protocol]
        tasks = [*p["tasks"], OVERALL]
        width = 0.8 / len(tasks)
        for j, t in enumerate(tasks):
            ys, xs, lo, hi = [], [], [], []
            for i, m in enumerate(methods):
                d = p["cells"][t].get(m, {}).get("diff")
                if d is None or not np.isfinite(d["half_width"]):
                    continue
                ys.append(i + (j - (len(tasks) - 1) / 2) * width)
                xs.append(d["mean"])
                lo.append(d["mean"] - d["ci_low"])
                hi.append(d["ci_high"] - d["mean"])
            style = {"color": "black", "marker": "D", "ms": 6} if t == OVERALL else {"marker": "o", "ms": 4}
            ax.errorbar(xs, ys, xerr=[lo, hi], ls="none", capsize=2, label=t, **style)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        ax.invert_yaxis()
        metric = "HM" if p["metric"] == "hm" else "all-class accuracy"
        ax.set_xlabel(f"{metric} − {p['reference']} (points), {round(100 * p['confidence'])}% CI", fontsize=8)
        ax.set_title(protocol, fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return figure_png(fig)
