"""Helpers shared by the benchmark scripts (run as scripts, so this sits beside them on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

from trkit.env import cpu_model, env_info  # noqa: F401  (the scripts' environment block)


def write_json(path: str | Path, data, indent: int = 1, default=None) -> Path:
    """``data`` as JSON at ``path``, written atomically (``trkit.io.atomic_write``); creates the folder."""
    from trkit.io import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=indent, default=default)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def peak_alloc_bytes(fn) -> int:
    """Peak of the running sum of CPU allocations while ``fn`` runs (torch profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = best = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        best = max(best, cur)
    return best


class Counted:
    """A black-box function ``f(idx)`` counting the entries it is asked for (repeats included)."""

    def __init__(self, f):
        self.f, self.count = f, 0

    def __call__(self, idx):
        self.count += len(idx)
        return self.f(idx)
