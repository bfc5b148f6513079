"""The CPUs fox-edge runs on: how many threads the runners and converters use by default."""

from __future__ import annotations

import os

from fox_edge.errors import InvalidOption


def default_threads() -> int:
    """The CPUs this process may run on (both runners' default thread count; see benchmarks/README.md)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def check_threads(n_threads: int | None) -> int:
    """A thread count to run with: the default for None, else between 1 and 4x this machine's cores (more only
    thrashes; a huge number crashes llama.cpp and makes ONNX Runtime allocate per-thread buffers without end)."""
    if n_threads is None:
        return default_threads()
    cores = os.cpu_count() or 1
    if not 1 <= n_threads <= 4 * cores:
        raise InvalidOption(
            f"{{n_threads}} {n_threads} is outside 1..{4 * cores} (this machine has {cores} cores); omit it to use them all", ["n_threads"]
        )
    return n_threads
