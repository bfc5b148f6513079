"""The CPUs fox-edge runs on: how many threads the runners and converters use by default."""

from __future__ import annotations

import os


def default_threads() -> int:
    """The CPUs this process may run on (both runners' default thread count; see benchmarks/README.md)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
