"""The test suite's long preparations (native builds, the ARM64 root, the trained tiny Fox-1, side environments): each
one cached under FOX_EDGE_CACHE, built by one process at a time, and timed.

tests/conftest.py starts the ones the selected tests need in one background process at the beginning of the run
(fox_edge/testing/prepare.py; niced, so the tests keep their cores) and runs the tests that wait on one this cache
never prepared last; a test that gets there first waits on the same lock instead of building a second time. Every
stage appends its duration to the file named by FOX_EDGE_STAGE_LOG, which the suite's summary prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from fox_edge.downloads import cache_dir

STAGE_LOG = "FOX_EDGE_STAGE_LOG"
BACKGROUND = "FOX_EDGE_PREPARING_IN_BACKGROUND"  # set in the background process tests/conftest.py starts


@contextlib.contextmanager
def exclusive(name: str) -> Iterator[None]:
    """Holds FOX_EDGE_CACHE/locks/NAME.lock: one process at a time prepares NAME, the others wait for it."""
    folder = cache_dir() / "locks"
    folder.mkdir(exist_ok=True)
    with (folder / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """A preparation, as a decorator or a `with` block: run under `exclusive(name)`, its duration (and the time spent
    waiting for another process preparing it) written to the stage log, its done marker left when it succeeded."""
    asked = time.monotonic()
    with exclusive(name):
        started = time.monotonic()
        try:
            yield
        finally:
            record(name, time.monotonic() - started, started - asked)
        done_marker(name).touch()


def done_marker(name: str) -> Path:
    """Exists once NAME was prepared in this cache: the suite then runs the tests that wait on it first, among the
    long ones, instead of last (a preparation whose inputs changed since prepares again, only later than hoped)."""
    return cache_dir() / "locks" / f"{name}.done"


def record(name: str, seconds: float, waited: float) -> None:
    path = os.environ.get(STAGE_LOG)
    if path:
        entry = {"stage": name, "seconds": round(seconds, 1), "waited": round(waited, 1), "background": BACKGROUND in os.environ}
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def whole_machine() -> None:
    """Let this thread, and the processes it starts, run on every CPU again (a test worker pins itself to a share)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
