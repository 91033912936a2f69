"""Which tasks the adapter benchmark suite uses, chosen on VALIDATION images (held out from pre-training).

Every candidate is a task spec (``trkit_vlm.data.tasks.TaskSpec``): an image shift at some strength, or
prompts that name the classes differently. For each, ``trkit_vlm.demo.task_selection.task_sweep`` measures
zero-shot and a 16-shot linear probe on base and novel classes; per kind, the candidate whose zero-shot
sits furthest from both chance and the few-shot ceiling is chosen (the rule is in the JSON).

Writes benchmarks/results/small_clip_tasks.json. The test set is never touched here.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _common import write_json  # noqa: E402

from trkit.env import env_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]

# kind -> {candidate label: task spec}
IMAGE_KINDS = {
    "contrast": ("strength", [0.4, 0.5, 0.55, 0.6, 0.65, 0.7]),
    "noise": ("sigma", [0.1, 0.15, 0.2, 0.25, 0.3, 0.4]),
    "blur": ("sigma", [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0]),
    "lowres": ("size", [14, 10, 8, 7, 6, 5, 4]),
    "edges": ("mix", [0.6, 0.7, 0.8, 0.9, 1.0]),
}
NAME_SETS = {
    "plural": ["t-shirts", "trousers", "pullovers", "dresses", "coats", "sandals", "shirts", "sneakers", "bags",
               "ankle boots"],
    "synonyms": ["tee", "pants", "sweater", "gown", "jacket", "flip-flop", "blouse", "trainer", "handbag", "boot"],
    "descriptions": ["short-sleeved top", "long pants", "knitted jumper", "one-piece garment", "outer garment",
                     "open shoe", "collared top", "sports shoe", "carrying case", "short boot"],
}  # fmt: skip


def candidates(quick: bool) -> dict[str, dict[str, dict]]:
    kinds: dict[str, dict[str, dict]] = {}
    for kind, (param, values) in IMAGE_KINDS.items():
        values = values[::2] if quick else values
        kinds[kind] = {f"{kind} {param}={v}": {"shift": kind, "params": {param: v}} for v in values}
    # Prompts that name a second object: the text tower reads two class words.
    words = CLASSES[::3] if quick else CLASSES + ["photo", "picture"]
    kinds["distractor"] = {f"distractor 'a {{}} and a {w}.'": {"template": f"a {{}} and a {w}."} for w in words}
    # Class names the text tower never saw (only ~60 sentences were in its pre-training).
    kinds["class names"] = {f"class names: {k}": {"classnames": v} for k, v in NAME_SETS.items()}
    # Templates it never saw, with the usual class names (listed to show the text tower ignores them).
    kinds["templates"] = {
        f"template '{t}'": {"template": t}
        for t in ("itap of a {}.", "a drawing of a {}.", "a {} for sale, size medium, free shipping.")
    }
    return kinds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer candidates, seeds and images (a smoke run)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    from trkit_vlm.demo.small_clip import load_small_clip
    from trkit_vlm.demo.task_selection import task_sweep

    bundle = load_small_clip()
    t0 = time.perf_counter()
    out = {"kinds": {}, "chosen": {}}
    for kind, cands in candidates(a.quick).items():
        print(f"{kind}:", flush=True)
        res = task_sweep(bundle, cands, seeds=(1,) if a.quick else (1, 2, 3), eval_per_class=50 if a.quick else 200)
        best = max(res["rows"], key=lambda r: r["margin"])
        out["kinds"][kind] = res
        out["chosen"][kind] = {"label": best["label"], "task": best["task"], "margin": best["margin"]}
        print(f"  -> {best['label']} (margin {best['margin']:.1f})", flush=True)
    out["time_s"] = time.perf_counter() - t0
    out["env"] = env_info()
    name = "small_clip_tasks" + ("_quick" if a.quick else "")
    write_json(RESULTS / f"{name}.json", out, indent=1)


if __name__ == "__main__":
    main()
