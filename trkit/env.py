"""Where a result was measured: versions, CPU, threads. Recorded in benchmark and quickstart results,
and printed with a bug report by the command lines."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "versions", "env_info"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(packages: tuple[str, ...] = ("trkit", "torch", "open_clip_torch", "numpy")) -> dict[str, str]:
    """Python, the platform and the installed ``packages`` (read from package metadata: nothing is imported)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def env_info() -> dict[str, Any]:
    """Versions, CPU, core count, torch's thread count and the OpenMP settings that change timings."""
    import torch  # the caller is timing torch code, so it is loaded already

    return {
        **versions(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
