"""What several ``trkit-vlm`` verbs share: thread set-up and parsing seed lists."""

from __future__ import annotations

import os

from trkit.errors import InputError


def setup_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default ``min(cores, 4)``) and say whether waiting is passive.

    ``OMP_WAIT_POLICY=PASSIVE`` keeps CPU runs 5-30x steadier when the cores are shared
    (docs/benchmarks.md), but OpenMP reads it once, when torch loads - before any command code runs.
    ``make quickstart`` exports it; when calling ``trkit-vlm`` directly, export it in the shell.
    Returns the number of threads set.
    """
    import torch  # the CLI imports torch only once a command runs (--help stays fast)

    n = threads or min(os.cpu_count() or 1, 4)
    torch.set_num_threads(n)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print(
            "note: OMP_WAIT_POLICY is not PASSIVE; on a machine whose cores are shared, "
            "'export OMP_WAIT_POLICY=PASSIVE' before running can make this several times faster"
        )
    return n


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> ``(1, 2, 3)``; InputError naming the option otherwise."""
    try:
        seeds = tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise InputError("--seeds is empty")
    return seeds
