"""``trkit-vlm table``: mean ± std tables (markdown + CSV) and a PNG over all runs in a results folder."""

from __future__ import annotations

import argparse

NAME = "table"
HELP = "aggregate runs into base-to-novel tables (mean ± std over seeds)"
DESCRIPTION = (
    "Collect every metrics.json under RESULTS_DIR and write base / novel / "
    "HM tables laid out like the papers' (markdown, CSV) and a PNG plot."
)
EXAMPLES = """examples:
  trkit-vlm table output                 # writes output/results.{md,csv,png}
  trkit-vlm table output --out reports --no-plot
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results_dir", help="folder holding run folders (searched recursively for metrics.json)")
    p.add_argument("--out", help="where to write results.md/.csv/.png (default: RESULTS_DIR)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")


def run(args: argparse.Namespace) -> int:
    from trkit_vlm.evaluation.report import write_report

    paths = write_report(args.results_dir, args.out, plot=not args.no_plot)
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0
