"""What machine a benchmark ran on, for the reports in BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("model name")), platform.processor() or "unknown")


def cpus() -> int:
    """CPUs this process may run on (what a container or affinity mask allows)."""
    return len(os.sched_getaffinity(0))


def summary() -> str:
    return f"{cpus()} CPU ({cpu_model()}), Python {platform.python_version()}"
