"""Render docs/benchmarks.md from the JSON files the benchmark scripts write.

Every ``benchmarks/results/<name>.json`` becomes a section. Any top-level value that is a list of
flat dicts is rendered as a table (columns in first-seen order); ``env`` is printed as the setting
the numbers were measured under; ``notes``/``targets`` (strings or lists of strings) as bullets.

    python benchmarks/render_docs.py            # writes docs/benchmarks.md
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "benchmarks.md"

INTRO = """# Benchmarks

Each table is generated from the JSON that a script in `benchmarks/` writes
(`python benchmarks/<name>.py`, then `python benchmarks/render_docs.py`). Timings are medians of
repeated runs on the machine named under each table, all sides of a comparison in the same run
with the same thread settings; read them as ratios, not absolute speeds. CPU numbers come from a
shared 2-core machine.
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if v is None:
        return "–"
    text = " ".join(str(v).split())
    return (text[:77] + "...").replace("|", "\\|") if len(text) > 80 else text.replace("|", "\\|")


def _flatten(row: dict, prefix: str = "") -> dict:
    """Nested dicts become ``outer.inner`` columns; a timing dict (median/min/max seconds) one cell."""
    flat = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "median_s" in v:
            spread = f" ({v['min_s'] * 1e3:.3g}–{v['max_s'] * 1e3:.3g})" if "min_s" in v and "max_s" in v else ""
            flat[key + " ms"] = f"{v['median_s'] * 1e3:.4g}{spread}"
        elif isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)) and (len(v) > 8 or any(isinstance(x, (list, dict)) for x in v)):
            continue  # histories and traces stay in the JSON; the table keeps one line a case
        else:
            flat[key] = v
    return flat


def table(rows: list[dict]) -> str:
    rows = [_flatten(r) for r in rows]
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _is_table(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(r, dict) for r in v)


def section(name: str, data: dict) -> str:
    script = ROOT / "benchmarks" / f"{name}.py"
    source = f"`benchmarks/{name}.py` → " if script.exists() else ""
    out = [f"## {data.get('title', name)}", "", f"Source: {source}`benchmarks/results/{name}.json`", ""]
    if data.get("command"):
        out += [f"Command: `{data['command']}`", ""]
    for key, value in data.items():
        if _is_table(value):
            if key not in ("rows", "results", "table"):
                out += [f"### {key.replace('_', ' ')}", ""]
            out += [table(value), ""]
        elif isinstance(value, dict) and key not in ("env", "targets", "details"):  # details: JSON only
            out += [f"### {key.replace('_', ' ')}", "", table([value]), ""]
    for key in ("targets", "notes"):
        v = data.get(key)
        if v:
            out += [f"**{key.capitalize()}**", ""]
            items = v if isinstance(v, list) else [v]
            if isinstance(v, dict):
                items = [f"{k}: {_fmt(x) if not isinstance(x, dict) else x}" for k, x in v.items()]
            out += [f"- {_fmt(x) if not isinstance(x, str) else x}" for x in items] + [""]
    env = data.get("env")
    if isinstance(env, dict):
        out += ["Measured under: " + ", ".join(f"{k}={_fmt(v)}" for k, v in env.items()), ""]
    return "\n".join(out)


# results with a docs page of their own (every run of the suite would swamp this page)
OWN_PAGE = {
    "adapters_suite": "benchmarks/adapters-suite.md",
    "suite_recipes": "benchmarks/adapters-suite.md",
    "adaring_placement": "benchmarks/adapters-suite.md",  # its variant grid is a table there
    "adaring_placement_paired": "benchmarks/adapters-suite.md",  # its twelve-draw comparison too
    "adaring_init_variance": "benchmarks/adapters-suite.md",  # and its split of the spread
    "adaring_validation": "concepts/adaring.md",  # its studies are tables there
}


def main() -> int:
    parts = [INTRO]
    files = sorted(RESULTS.glob("*.json"))
    for stem, page in OWN_PAGE.items():
        if (RESULTS / f"{stem}.json").exists():
            parts.append(f"## {stem}\n\nSee [its own page]({page}).\n")
    files = [f for f in files if f.stem not in OWN_PAGE]
    if not files:
        parts.append("_No benchmark results yet: run the scripts in `benchmarks/`._\n")
    for f in files:
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as err:
            print(f"skipping {f}: not valid JSON ({err})", file=sys.stderr)
            continue
        parts.append(section(f.stem, data))
    tmp = OUT.with_suffix(".md.tmp")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, OUT)
    print(f"wrote {OUT} from {len(files)} result file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
